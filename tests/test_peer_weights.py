"""Weights files from elsewhere: pytorch_resnet_cifar10's CIFAR ResNets load with identical logits.

The peer net is written here from that project's documented structure (no downloaded file): BasicBlocks whose
option-A shortcut pads planes//4 zero channels before and after the old ones, keys `conv1`, `bn1`,
`layer{1,2,3}.{i}.conv{1,2}` / `bn{1,2}`, `linear`, saved as {"state_dict": module.-prefixed, "best_prec1"}.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab import convert, create_model
from resnetlab.convert import cifar_peer_orders, load_pytorch_resnet_cifar10

BEST_PREC1 = 91.73


class PeerBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, ReLU; option A: x[:, :, ::2, ::2], zeros on both sides."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if stride != 1 or in_planes != planes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        short = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + short)


class PeerResNet(nn.Module):
    def __init__(self, n: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes, stages = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(PeerBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.avg_pool2d(out, out.size(3)).flatten(1))


def peer_net(depth: int, seed: int = 0) -> PeerResNet:
    """Random weights and random BN statistics, in eval mode: every channel distinguishable."""
    torch.manual_seed(seed)
    net = PeerResNet((depth - 2) // 6)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
            elif isinstance(m, nn.Linear):
                m.bias.normal_(0, 0.2)
    return net.eval()


def save_peer(net: nn.Module, path: Path, legacy: bool = True) -> Path:
    state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state, "best_prec1": BEST_PREC1}, path, _use_new_zipfile_serialization=not legacy)
    return path


# ---- the load ---------------------------------------------------------------------------------------------
def test_channel_orders_of_resnet20_by_hand() -> None:
    orders = cifar_peer_orders(create_model("resnet20").spec)
    assert orders[0].tolist() == orders[1].tolist() == list(range(16))
    # stage 2: the peer's [8 zeros, 16 old, 8 zeros]; ours [16 old, 16 new]
    assert orders[2].tolist() == [*range(8, 24), *range(8), *range(24, 32)]
    # stage 3: the peer's [16 zeros, 32 of stage 2, 16 zeros]
    assert orders[3].tolist() == [16 + k for k in orders[2].tolist()] + [*range(16), *range(48, 64)]


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-format", "zip-format"])
@pytest.mark.parametrize("depth", [20, 32])
def test_peer_file_gives_identical_logits(depth: int, legacy: bool, tmp_path: Path) -> None:
    peer = peer_net(depth)
    path = save_peer(peer, tmp_path / f"resnet{depth}-peer.th", legacy)
    ours = load_pytorch_resnet_cifar10(create_model(f"resnet{depth}"), path).eval()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected, got = peer(x), ours(x)
    assert expected.std() > 0.1  # logits that tell the images apart, so a wrong channel would show
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_the_permutation_is_what_makes_them_equal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    peer = peer_net(20)
    path = save_peer(peer, tmp_path / "resnet20.th")
    identity = [torch.arange(len(o)) for o in cifar_peer_orders(create_model("resnet20").spec)]
    monkeypatch.setattr(convert, "cifar_peer_orders", lambda spec: identity)
    unpermuted = load_pytorch_resnet_cifar10(create_model("resnet20"), path).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (unpermuted(x) - peer(x)).abs().max() > 0.1
