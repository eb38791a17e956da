"""Data sets: ``load_data(spec, options)`` turns ``cifar10:PATH``, ``digits``, ... into a :class:`DataSource`
(in memory, :class:`TensorSource`, or streamed, :class:`ImageNetSource`); every problem is a one-line DataError.

May import: errors, version, files.
"""

from __future__ import annotations

from resnetlab.data.base import (
    ArrayDataset,
    DataOptions,
    DataSource,
    derive_seed,
    epoch_permutation,
    stratified_holdout,
)
from resnetlab.data.cache import cache_dir
from resnetlab.data.cifar import RestrictedUnpickler, safe_loads
from resnetlab.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetSource
from resnetlab.data.loading import SCHEMES, DataSpec, load_data, parse_data_spec
from resnetlab.data.tensor_source import AugParams, TensorSource, draw_params, normalisation_stats, pad_crop_flip

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
