"""Data sets for training and evaluating residual networks.

``load_data(spec, options)`` turns a spec such as ``cifar10:PATH``, ``folder:PATH``, ``imagenet:PATH``,
``digits`` or ``synthetic:N`` into a :class:`DataSource`: deterministic, normalised and augmented train
batches (a pure function of seed, epoch and step, sliced per DDP rank) and plain eval batches. Small data
sets are decoded once (and cached on disk) into uint8 tensors (:class:`TensorSource`); ImageNet is
streamed through a DataLoader (:class:`ImageNetSource`). Every data problem raises a one-line
:class:`~resnetlab.errors.DataError`.

May import: errors, version, files.
"""

from __future__ import annotations

from resnetlab.data.augment import AugParams, draw_params, pad_crop_flip
from resnetlab.data.base import (
    ArrayDataset,
    DataOptions,
    DataSource,
    derive_seed,
    epoch_permutation,
    stratified_holdout,
)
from resnetlab.data.cache import cache_dir
from resnetlab.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetSource
from resnetlab.data.loading import SCHEMES, DataSpec, load_data, parse_data_spec
from resnetlab.data.safe_pickle import RestrictedUnpickler, safe_loads
from resnetlab.data.tensor_source import TensorSource, normalisation_stats

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SCHEMES",
    "ArrayDataset",
    "AugParams",
    "DataOptions",
    "DataSource",
    "DataSpec",
    "ImageNetSource",
    "RestrictedUnpickler",
    "TensorSource",
    "cache_dir",
    "derive_seed",
    "draw_params",
    "epoch_permutation",
    "load_data",
    "normalisation_stats",
    "pad_crop_flip",
    "parse_data_spec",
    "safe_loads",
    "stratified_holdout",
]
