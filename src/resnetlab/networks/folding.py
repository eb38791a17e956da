"""Batch norm folded into the convolution before it, for evaluation and export: the same function, fewer layers."""

from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def fold_bn(model: nn.Module) -> nn.Module:
    """An evaluation copy of `model` with each BN that directly follows a conv folded into that conv.

    For y = BN(W * x) with running statistics (mu, var), scale s = gamma / sqrt(var + eps):
    y = (s W) * x + (beta - s mu). The copy is in eval mode and has the original's memory format; the
    original is untouched. BNs that follow an addition or a ReLU (pre-activations, v2's final BN) stay."""
    folded = copy.deepcopy(model).eval()
    for seq in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, bn = seq._modules[first], seq._modules[second]
            if not (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats
                    and conv.groups == 1 and conv.padding_mode == "zeros"):
                continue
            assert bn.running_mean is not None and bn.running_var is not None
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.affine:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale + (bn.bias if bn.affine else 0.0)
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
            fmt = torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last) \
                and not conv.weight.is_contiguous() else torch.contiguous_format
            fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            fused.bias.copy_(shift)
            fused.weight.data = fused.weight.data.contiguous(memory_format=fmt)
            seq._modules[first] = fused
            seq._modules[second] = nn.Identity()
    return folded
