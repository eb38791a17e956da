"""The benchmark's baseline: CIFAR ResNets written the plain way, as most users and public CIFAR code write them.

One eager module per block kind, `F.relu` calls, default memory format and settings, nothing fused. It is the
same mathematics as resnetlab's models (same layers in the same order, option A zero-padding appended after
the input channels, option B projections with BN), so the same weights give the same outputs
(`tests/test_bench.py` checks it) and the benchmark's ratio compares speed, not different networks.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU (v1 fig. 2, option A shortcuts)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1:
            shortcut = shortcut[:, :, ::self.stride, ::self.stride]
        if self.extra:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
        return F.relu(out + shortcut)


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1, add the shortcut (v2 fig. 4e, bottleneck).

    The first block of the net takes its activation from the stem; a projection shortcut (1x1 conv, BN)
    reads the pre-activated input, the identity reads the raw input. The stride is on the first 1x1.
    """

    def __init__(self, cin: int, width: int, stride: int, first: bool) -> None:
        super().__init__()
        cout = 4 * width
        self.first = first
        if not first:
            self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, width, 1, stride, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.project = cin != cout or stride != 1
        if self.project:
            self.shortcut_conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.shortcut_bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        a = x if self.first else F.relu(self.bn1(x))
        out = self.conv1(a)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        shortcut = self.shortcut_bn(self.shortcut_conv(a)) if self.project else x
        return out + shortcut


class PlainCifarResNet(nn.Module):
    """v1 CIFAR ResNet (depth 6n+2, basic blocks) or v2 pre-activation bottleneck ResNet (depth 9n+2)."""

    def __init__(self, depth: int, preact_bottleneck: bool = False, num_classes: int = 10) -> None:
        super().__init__()
        self.preact = preact_bottleneck
        n = (depth - 2) // 9 if preact_bottleneck else (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        cin = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                if preact_bottleneck:
                    blocks.append(PreActBottleneck(cin, width, stride, first=stage == 0 and i == 0))
                    cin = 4 * width
                else:
                    blocks.append(BasicBlock(cin, width, stride))
                    cin = width
        self.blocks = nn.Sequential(*blocks)
        if preact_bottleneck:
            self.bn_final = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        if self.preact:
            x = F.relu(self.bn_final(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def plain_model(name: str) -> PlainCifarResNet:
    """The baseline of a registry model: a CIFAR ResNet with original basic units and option A (resnetN), or
    with full pre-activation bottleneck units and option B (preact_resnet164, preact_resnet1001)."""
    from resnetlab.networks.registry import get_spec

    spec = get_spec(name)
    common = spec.stem == "cifar" and spec.residual and spec.shortcut == "identity" and spec.units is not None \
        and len(spec.units) == 3 and spec.widths == (16, 32, 64) and spec.in_channels == 3
    if common and spec.block == "basic" and spec.unit == "original" and spec.option == "A":
        return PlainCifarResNet(spec.depth, num_classes=spec.num_classes)
    if common and spec.block == "bottleneck" and spec.unit == "preact" and spec.option == "B" \
            and spec.stride_on == "1x1" and spec.expansion == 4:
        return PlainCifarResNet(spec.depth, preact_bottleneck=True, num_classes=spec.num_classes)
    raise ValueError(f"{name}: no plain baseline (CIFAR nets with original basic units and option A, or "
                     "pre-activation bottleneck units and option B)")
