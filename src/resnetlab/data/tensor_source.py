"""The in-memory data source for small data sets (digits, synthetic, CIFAR, image folders): uint8 tensors
copied once to each device; a train batch is gathered, normalised and augmented (the CIFAR papers' pad, crop
and flip) on its device as a whole, from random numbers drawn on the CPU from ``(seed, epoch, step)``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from resnetlab.data.base import ArrayDataset, DataOptions, DataSource, Share, cpu_generator, hold_out
from resnetlab.errors import DataError

_CHUNK = 4096


def normalisation_stats(images: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (in [0, 1] pixel units) of uint8 ``images`` (N, C, H, W) for ``mode``.

    ``pixel_mean``: mean image (C, H, W) and unit std; ``channel``: per-channel (C, 1, 1) mean and std;
    ``none``: zero mean, unit std. The pixel sums are exact (float32 sums of at most 4096 bytes, added
    in float64); the channel moments come from exact per-channel histograms of the 256 pixel values.
    """
    _, c, h, w = images.shape
    ones = torch.ones(c, 1, 1)
    if mode == "none":
        return torch.zeros(c, 1, 1), ones
    if mode == "pixel_mean":
        total = torch.zeros(c, h, w, dtype=torch.float64)
        for start in range(0, len(images), _CHUNK):
            total += images[start:start + _CHUNK].to(torch.float32).sum(0)
        return (total / (len(images) * 255.0)).float(), ones
    values = torch.arange(256, dtype=torch.float64) / 255.0
    hist = torch.stack([torch.bincount(images[:, ch].reshape(-1), minlength=256) for ch in range(c)])
    hist = hist.double() / (len(images) * h * w)
    mean = (hist * values).sum(1)
    var = ((hist * values.square()).sum(1) - mean.square()).clamp_min(0.0)
    std = var.sqrt().clamp_min(1e-6)
    return mean.float().view(c, 1, 1), std.float().view(c, 1, 1)


@dataclass(frozen=True)
class AugParams:
    """Per-sample crop offsets (row ``oy``, column ``ox``, in padded coordinates) and flip flags."""

    oy: torch.Tensor
    ox: torch.Tensor
    flip: torch.Tensor

    def __getitem__(self, sl: slice) -> AugParams:
        return AugParams(self.oy[sl], self.ox[sl], self.flip[sl])


def draw_params(n: int, pad: int, flip: bool, generator: torch.Generator) -> AugParams:
    """Draw the augmentation of ``n`` samples: offsets uniform in ``[0, 2*pad]``, flips with p = 1/2."""
    if pad > 0:
        offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, dtype=torch.int64)
    else:
        offsets = torch.zeros((2, n), dtype=torch.int64)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return AugParams(offsets[0], offsets[1], flips)


def pad_crop_flip(x: torch.Tensor, pad: int, params: AugParams) -> torch.Tensor:
    """Zero-pad ``x`` (N, C, H, W) by ``pad``; sample ``i`` becomes ``padded[i, :, oy:oy+H, ox:ox+W]``, mirrored
    left-right where ``flip[i]``."""
    n, c, h, w = x.shape
    if pad == 0 and not bool(params.flip.any()):
        return x
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad))
    device = x.device
    rows = params.oy.to(device)[:, None] + torch.arange(h, device=device)[None, :]
    cols = params.ox.to(device)[:, None] + torch.arange(w, device=device)[None, :]
    cols = torch.where(params.flip.to(device)[:, None], cols.flip(1), cols)
    padded_w = x.shape[3]
    x = x.gather(2, rows[:, None, :, None].expand(n, c, h, padded_w))
    return x.gather(3, cols[:, None, None, :].expand(n, c, h, w))


class TensorSource(DataSource):
    """A data set held in memory as uint8 tensors."""

    def __init__(self, name: str, train: ArrayDataset, test: ArrayDataset,
                 options: DataOptions | None = None) -> None:
        options = options if options is not None else DataOptions()
        if options.ten_crop:
            raise DataError(f"{name}: DataOptions.ten_crop applies only to imagenet: data")
        if len(train) == 0:
            raise DataError(f"{name}: the training split is empty")
        if train.images.shape[1:] != test.images.shape[1:]:
            raise DataError(f"{name}: test images have shape {tuple(test.images.shape[1:])} but training images "
                            f"{tuple(train.images.shape[1:])}")
        if test.classes != train.classes:
            raise DataError(f"{name}: the test split's class names differ from the training split's")
        if train.images.shape[2] != train.images.shape[3]:
            raise DataError(f"{name}: images must be square, got {tuple(train.images.shape[2:])}")
        splits = {"test": test}
        if options.val_split:
            keep, held = hold_out(name, train.labels.numpy(), options)
            splits["val"] = train.subset(held)
            train = train.subset(keep)
        self.name = name
        self.options = options
        self.classes = list(train.classes)
        self.num_classes = len(self.classes)
        self.channels = int(train.images.shape[1])
        self.image_size = int(train.images.shape[2])
        self.train_size = len(train)
        self.has_val = "val" in splits
        self._splits = {"train": train, **splits}
        self._mean, self._std = normalisation_stats(train.images, options.normalize)
        self._norm_shapes = [(self.channels, 1, 1), (self.channels, self.image_size, self.image_size)]
        self._on_device: dict[tuple[str, str], torch.Tensor] = {}

    def split(self, split: str) -> ArrayDataset:
        """The raw uint8 images of ``split`` ("train", "test" or "val")."""
        if split != "train":
            self.eval_size(split)  # a DataError for an unknown split or a missing val
        return self._splits[split]

    def _on(self, device: torch.device, key: str, value: torch.Tensor) -> torch.Tensor:
        """``value`` on ``device``, copied there once (kept under ``key``)."""
        slot = (key, str(device))
        if slot not in self._on_device:
            self._on_device[slot] = value.to(device)
        return self._on_device[slot]

    def _normalised(self, split: str, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        images = self._on(device, f"{split}.images", self._splits[split].images)
        x = images.index_select(0, idx.to(device)).to(torch.float32).div_(255.0)
        return x.sub_(self._on(device, "mean", self._mean)).div_(self._on(device, "std", self._std))

    def _train(self, shares: Iterator[Share], seed: int, epoch: int,
               device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        labels = self._on(device, "train.labels", self._splits["train"].labels)
        pad, flip = self.options.pad, self.options.flip
        for share in shares:
            params = draw_params(share.n, pad, flip, cpu_generator("augment", seed, epoch, share.step))
            idx = share.indices.to(device)
            x = pad_crop_flip(self._normalised("train", idx, device), pad, params[share.lo:share.hi])
            yield x, labels.index_select(0, idx)

    def _eval(self, split: str, bounds: list[tuple[int, int]],
              device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        labels = self._on(device, f"{split}.labels", self._splits[split].labels)
        for lo, hi in bounds:
            idx = torch.arange(lo, hi, device=device)
            yield self._normalised(split, idx, device), labels.index_select(0, idx)

    def load_norm_state(self, state: dict[str, torch.Tensor]) -> None:
        super().load_norm_state(state)
        self._on_device = {k: v for k, v in self._on_device.items() if k[0] not in ("mean", "std")}

