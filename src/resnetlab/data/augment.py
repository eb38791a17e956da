"""Batched, vectorised augmentation of the CIFAR papers: zero-pad, random crop and horizontal flip.

The random parameters are drawn on the CPU from a generator the caller seeds (so CPU and CUDA runs see
the same augmentation) and then applied to a whole batch on its device with index tensors, without a
Python loop over samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugParams:
    """Per-sample crop offsets (row ``oy``, column ``ox``, in padded coordinates) and flip flags."""

    oy: torch.Tensor
    ox: torch.Tensor
    flip: torch.Tensor

    def __getitem__(self, sl: slice) -> AugParams:
        return AugParams(self.oy[sl], self.ox[sl], self.flip[sl])

    def to(self, device: torch.device | str) -> AugParams:
        return AugParams(self.oy.to(device), self.ox.to(device), self.flip.to(device))


def draw_params(n: int, pad: int, flip: bool, generator: torch.Generator) -> AugParams:
    """Draw the augmentation of ``n`` samples: offsets uniform in ``[0, 2*pad]``, flips with p = 1/2."""
    if pad > 0:
        offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, dtype=torch.int64)
    else:
        offsets = torch.zeros((2, n), dtype=torch.int64)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return AugParams(offsets[0], offsets[1], flips)


def pad_crop_flip(x: torch.Tensor, pad: int, params: AugParams) -> torch.Tensor:
    """Zero-pad ``x`` (N, C, H, W) by ``pad``, crop H x W at the per-sample offsets, then flip.

    Sample ``i`` becomes ``padded[i, :, oy:oy+H, ox:ox+W]``, mirrored left-right where ``flip[i]``.
    """
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
