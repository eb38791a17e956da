"""The one network class: a stem, stages of residual units, and a pooled classifier, built from a spec (v1 sec. 3.4 /
table 1 (ImageNet) and sec. 4.2 (CIFAR); v2 sec. 4: pre-activation nets end with BN-ReLU)."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from resnetlab.networks.shortcuts import Shortcut, conv
from resnetlab.networks.spec import ResNetSpec
from resnetlab.networks.units import PLACEMENTS, Unit, layer


class ResNet(nn.Module):
    """Residual (or plain) network described by a `ResNetSpec`."""

    def __init__(self, spec: ResNetSpec) -> None:
        super().__init__()
        self.spec = spec
        cifar = spec.stem == "cifar"  # v1 sec. 4.2: a 3x3 conv; v1 table 1: a 7x7/2 conv and a 3x3/2 max pool
        stem = OrderedDict(conv=conv(spec.in_channels, spec.stem_width, 3 if cifar else 7, 1 if cifar else 2),
                           bn=nn.BatchNorm2d(spec.stem_width), relu=nn.ReLU(inplace=True))
        if not cifar:
            stem["pool"] = nn.MaxPool2d(3, stride=2, padding=1)
        self.stem = nn.Sequential(stem)

        cin, stages = spec.stem_width, []
        for s, (n, width, stride) in enumerate(zip(spec.units, spec.widths, spec.strides, strict=True)):
            units = []
            for i in range(n):
                units.append(Unit(spec, cin, width, stride if i == 0 else 1, first=(s == 0 and i == 0)))
                cin = units[-1].out_channels
            stages.append(nn.Sequential(*units))
        self.stages = nn.ModuleList(stages)

        # After the last addition, the pre-activation a next unit would apply: v2's extra BN-ReLU before pooling.
        head = OrderedDict((kind, layer(kind, cin)) for kind in PLACEMENTS[spec.unit].before_conv)
        head["pool"] = nn.AdaptiveAvgPool2d(1)
        head["flatten"] = nn.Flatten()
        head["fc"] = nn.Linear(cin, spec.num_classes)
        self.head = nn.Sequential(head)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The papers' init: He (MSRA) normal convs, BN weight 1 and bias 0; then each shortcut kind's own
        (gate biases at b_g)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # fan_out as in the papers' Torch code: std = sqrt(2 / (k * k * out_channels))
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                m.reset_parameters()
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, Shortcut):
                m.reset_parameters()
        if self.spec.zero_init_residual:
            for unit in self.units():
                nn.init.zeros_(unit.residual_layer().weight)

    def units(self) -> Iterator[Unit]:
        for stage in self.stages:
            yield from stage  # type: ignore[misc]

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        units = list(self.units())
        step = self.spec.recompute
        if step and self.training and torch.is_grad_enabled():
            for i in range(0, len(units), step):
                segment = units[i : i + step]
                x = checkpoint(_run, segment, x, use_reentrant=False,
                               context_fn=lambda seg=segment: (contextlib.nullcontext(), _keep_bn_stats(seg)))
            return x
        return _run(units, x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def _run(units: list[Unit], x: Tensor) -> Tensor:
    for unit in units:
        x = unit(x)
    return x


@contextlib.contextmanager
def _keep_bn_stats(units: list[Unit]) -> Iterator[None]:
    """During recomputation, restore BN running statistics so they are updated once, not twice."""
    bns = [m for u in units for m in u.modules() if isinstance(m, nn.BatchNorm2d) and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(bns, saved, strict=True):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)

