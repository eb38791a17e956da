"""Core data types: the options a run loads data with, in-memory image arrays, and :class:`DataSource`, which
checks and slices batches alike for the in-memory and the streaming sources, so that both replay an epoch
identically for a given ``(seed, epoch, step)``."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from resnetlab.errors import DataError

NORMALIZE_MODES = ("pixel_mean", "channel", "none")
EVAL_SPLITS = ("test", "val")


@dataclass(frozen=True)
class DataOptions:
    """How a data set is normalised, augmented, split and cached.

    ``normalize``: ``"pixel_mean"`` subtracts the per-pixel mean image of the training split (v1 paper),
    ``"channel"`` uses the per-channel mean/std of the training split, ``"none"`` only scales to [0, 1].
    All modes first scale the uint8 pixels to [0, 1]. ``pad`` zero-pads (in normalised space) before a
    random crop back to the input size; 0 disables the crop. ``val_split`` holds out that many training
    images (stratified, fixed by ``split_seed``). The ``ten_crop``, ``workers``, ``crop_size``, ``scale``
    and ``test_resize`` fields apply to ``imagenet:`` only. ``cache_dir`` defaults to ``$RESNETLAB_CACHE``
    or ``~/.cache/resnetlab``.
    """

    normalize: str = "pixel_mean"
    pad: int = 4
    flip: bool = True
    val_split: int = 0
    split_seed: int = 0
    ten_crop: bool = False
    workers: int = 4
    crop_size: int = 224
    scale: tuple[int, int] = (256, 480)
    test_resize: int = 256
    cache_dir: str | None = None

    def __post_init__(self) -> None:  # the one check of the options: a config's data section comes here too
        if self.normalize not in NORMALIZE_MODES:
            raise DataError(f"DataOptions.normalize: {self.normalize!r} is not one of {', '.join(NORMALIZE_MODES)}")
        for field, minimum in (("pad", 0), ("val_split", 0), ("split_seed", 0), ("workers", 0),
                               ("crop_size", 1), ("test_resize", 1)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise DataError(f"DataOptions.{field} must be an integer, got {value!r}")
            if value < minimum:
                raise DataError(f"DataOptions.{field} must be >= {minimum}, got {value}")
        for field in ("flip", "ten_crop"):
            if not isinstance(getattr(self, field), bool):
                raise DataError(f"DataOptions.{field} must be true or false, got {getattr(self, field)!r}")
        scale = self.scale
        if (not isinstance(scale, (tuple, list)) or len(scale) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) for v in scale)
                or not 0 < scale[0] <= scale[1]):
            shown = list(scale) if isinstance(scale, (tuple, list)) else scale
            raise DataError(f"DataOptions.scale: expected [low, high] with 0 < low <= high, got {shown}")
        lo, hi = int(scale[0]), int(scale[1])
        if lo < self.crop_size:
            raise DataError(f"DataOptions.scale lower bound {lo} is smaller than crop_size {self.crop_size}")
        if self.test_resize < self.crop_size:
            raise DataError(f"DataOptions.test_resize {self.test_resize} is smaller than crop_size {self.crop_size}")
        object.__setattr__(self, "scale", (lo, hi))
        if self.cache_dir is not None and not isinstance(self.cache_dir, str):
            object.__setattr__(self, "cache_dir", str(self.cache_dir))


@dataclass
class ArrayDataset:
    """Decoded images of one split: uint8 ``images`` (N, C, H, W), int64 ``labels`` (N,), class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        self.images = torch.as_tensor(self.images)
        self.labels = torch.as_tensor(self.labels)
        self.classes = [str(c) for c in self.classes]
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"ArrayDataset: images must be uint8 (N, C, H, W), got {self.images.dtype} "
                            f"{tuple(self.images.shape)}")
        if self.labels.dim() != 1 or len(self.labels) != len(self.images):
            raise DataError(f"ArrayDataset: {len(self.images)} images but labels of shape {tuple(self.labels.shape)}")
        if self.labels.dtype.is_floating_point or self.labels.dtype == torch.bool:
            raise DataError(f"ArrayDataset: labels must be integers, got {self.labels.dtype}")
        self.labels = self.labels.to(torch.int64)
        if not self.classes:
            raise DataError("ArrayDataset: no class names")
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise DataError(f"ArrayDataset: labels must lie in [0, {len(self.classes) - 1}], got "
                            f"[{int(self.labels.min())}, {int(self.labels.max())}]")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray | torch.Tensor) -> ArrayDataset:
        """The images at ``indices`` (in that order), sharing the class names."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        return ArrayDataset(self.images[idx], self.labels[idx], list(self.classes))


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (tag strings and integers)."""
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def cpu_generator(*parts: int | str) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(derive_seed(*parts))


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` of run ``seed`` visits the ``n`` training images."""
    return torch.randperm(n, generator=cpu_generator("perm", seed, epoch))


def check_count(caller: str, field: str, value: Any, minimum: int = 1) -> None:
    """A DataError naming ``caller`` unless ``value`` is an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"{caller}: {field} must be an integer >= {minimum}, got {value!r}")


class Share(NamedTuple):
    """One rank's part of global batch ``step`` (``n`` samples): positions ``[lo, hi)`` of the batch, which are
    the training images ``indices``."""

    step: int
    n: int
    lo: int
    hi: int
    indices: torch.Tensor


def batch_share(perm: torch.Tensor, step: int, batch_size: int, rank: int, world_size: int) -> Share:
    """Rank ``rank``'s contiguous share of global batch ``step`` of the epoch permutation ``perm``; the first
    ``n % world_size`` ranks get one sample more."""
    start = step * batch_size
    n = min(start + batch_size, len(perm)) - start
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    hi = lo + base + (1 if rank < extra else 0)
    return Share(step, n, lo, hi, perm[start + lo:start + hi])


def device_slot(device: torch.device | str) -> torch.device:
    """`device` with the current CUDA index filled in: data caches keep one slot per GPU, so "cuda" and
    "cuda:0" must name the same one."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def hold_out(where: str, labels: np.ndarray, options: DataOptions) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out) of the training images for ``options.val_split`` (:func:`stratified_holdout`
    with ``options.split_seed``); a DataError naming ``where`` unless some training images are kept."""
    if options.val_split >= len(labels):
        raise DataError(f"{where}: DataOptions.val_split={options.val_split} must be smaller than the "
                        f"{len(labels)} training images")
    return stratified_holdout(labels, options.val_split, options.split_seed)


def stratified_holdout(labels: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices (kept, held_out) with ``count`` held out, each class in proportion (largest-remainder
    quotas), drawn within a class by a generator fixed by ``seed``."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * (count / len(labels))
    take = np.floor(quota).astype(np.int64)
    short = count - int(take.sum())
    order = np.lexsort((np.arange(len(classes)), -(quota - take)))
    take[order[:short]] += 1
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for cls, k in zip(classes, take, strict=True):
        members = np.flatnonzero(labels == cls)
        held.append(rng.permutation(members)[:k])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


class DataSource(ABC):
    """A data set ready for training: deterministic augmented train batches and plain eval batches."""

    name: str
    num_classes: int
    channels: int
    image_size: int
    train_size: int
    classes: list[str]
    has_val: bool
    _splits: dict[str, Sized]
    _mean: torch.Tensor
    _std: torch.Tensor
    _norm_shapes: list[tuple[int, ...]]  # what load_norm_state accepts

    def steps_per_epoch(self, batch_size: int) -> int:
        """Number of (drop-last) steps in an epoch of global batch ``batch_size``; at least 1."""
        check_count("steps_per_epoch", "batch_size", batch_size)
        return max(1, self.train_size // batch_size)

    def train_batches(self, epoch: int, batch_size: int, *, seed: int, device: torch.device | str = "cpu",
                      start_step: int = 0, rank: int = 0,
                      world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Augmented, normalised batches ``start_step, start_step+1, ...`` of epoch ``epoch``."""
        for field, value, minimum in (("batch_size", batch_size, 1), ("world_size", world_size, 1),
                                      ("rank", rank, 0), ("start_step", start_step, 0)):
            check_count("train_batches", field, value, minimum)
        if rank >= world_size:
            raise DataError(f"train_batches: rank {rank} is not below world_size {world_size}")
        if batch_size % world_size:
            raise DataError(f"train_batches: batch_size {batch_size} is not divisible by world_size {world_size}")
        steps = self.steps_per_epoch(batch_size)
        if start_step > steps:
            raise DataError(f"train_batches: start_step {start_step} is past the {steps} steps of an epoch")
        perm = epoch_permutation(self.train_size, seed, epoch)
        shares = (batch_share(perm, step, batch_size, rank, world_size) for step in range(start_step, steps))
        return self._train(shares, seed, epoch, device_slot(device))

    @abstractmethod
    def _train(self, shares: Iterator[Share], seed: int, epoch: int,
               device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of :meth:`train_batches`, one per share."""

    def eval_batches(self, split: str, batch_size: int, *,
                     device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised, unaugmented batches of ``split`` ("test" or "val"), in a fixed order."""
        size = self.eval_size(split)
        check_count("eval_batches", "batch_size", batch_size)
        bounds = [(lo, min(lo + batch_size, size)) for lo in range(0, size, batch_size)]
        return self._eval(split, bounds, device_slot(device))

    @abstractmethod
    def _eval(self, split: str, bounds: list[tuple[int, int]],
              device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of :meth:`eval_batches`, images ``[lo, hi)`` of ``split`` for each of ``bounds``."""

    def eval_size(self, split: str) -> int:
        """Number of images in ``split``."""
        if split not in EVAL_SPLITS:
            raise DataError(f"{self.name}: unknown split {split!r}; valid: {', '.join(EVAL_SPLITS)}")
        if split == "val" and not self.has_val:
            raise DataError(f"{self.name}: no 'val' split (set DataOptions.val_split > 0 to hold one out)")
        return len(self._splits[split])

    def norm_state(self) -> dict[str, torch.Tensor]:
        """Normalisation statistics, to be stored with a checkpoint."""
        return {"mean": self._mean.clone(), "std": self._std.clone()}

    def load_norm_state(self, state: dict[str, torch.Tensor]) -> None:
        """Use the normalisation statistics of a training run (from ``norm_state``)."""
        if not isinstance(state, dict) or "mean" not in state or "std" not in state:
            raise DataError(f"{self.name}: normalisation state must be a dict with 'mean' and 'std'")
        loaded = []
        for key in ("mean", "std"):
            value = state[key]
            if not isinstance(value, torch.Tensor) or tuple(value.shape) not in self._norm_shapes:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise DataError(f"{self.name}: normalisation '{key}' has shape {got}, expected one of "
                                f"{self._norm_shapes}")
            value = value.detach().to("cpu", torch.float32).clone()
            if not torch.isfinite(value).all() or (key == "std" and not (value > 0).all()):
                raise DataError(f"{self.name}: normalisation '{key}' has non-finite or non-positive values")
            loaded.append(value)
        self._mean, self._std = loaded
