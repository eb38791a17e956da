"""Loading torchvision-style ResNet state_dicts (the user's files) into resnetlab models."""

from __future__ import annotations

import pytest
import torch

from resnetlab import create_model
from resnetlab.errors import CheckpointError
from resnetlab.weights.peers import load_torchvision, to_torchvision


def torchvision_keys(layers: list[int], bottleneck: bool) -> dict[str, tuple[int, ...]]:
    """torchvision's ResNet key layout and weight shapes, written out from its documented structure."""
    keys: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.{leaf}"] = (c,)
        keys[f"{prefix}.num_batches_tracked"] = ()

    keys["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    inplanes, exp = 64, 4 if bottleneck else 1
    for i, (planes, n) in enumerate(zip([64, 128, 256, 512], layers, strict=True)):
        for b in range(n):
            p, cin = f"layer{i + 1}.{b}", inplanes if b == 0 else planes * exp
            if bottleneck:
                shapes = [(planes, cin, 1, 1), (planes, planes, 3, 3), (planes * exp, planes, 1, 1)]
            else:
                shapes = [(planes, cin, 3, 3), (planes, planes, 3, 3)]
            for j, shape in enumerate(shapes, start=1):
                keys[f"{p}.conv{j}.weight"] = shape
                bn(f"{p}.bn{j}", shape[0])
            if b == 0 and (i > 0 or inplanes != planes * exp):
                keys[f"{p}.downsample.0.weight"] = (planes * exp, cin, 1, 1)
                bn(f"{p}.downsample.1", planes * exp)
        inplanes = planes * exp
    keys["fc.weight"], keys["fc.bias"] = (1000, 512 * exp), (1000,)
    return keys


@pytest.mark.parametrize(("name", "layers", "bottleneck"),
                         [("resnet18", [2, 2, 2, 2], False), ("resnet50", [3, 4, 6, 3], True)])
def test_torchvision_round_trip(name: str, layers: list[int], bottleneck: bool, tmp_path) -> None:
    torch.manual_seed(0)
    source = create_model(name, stride_on="3x3").eval()
    with torch.no_grad():  # non-trivial BN statistics, so a misplaced buffer would show
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    tv = to_torchvision(source)
    expected = torchvision_keys(layers, bottleneck)
    assert {k: tuple(v.shape) for k, v in tv.items()} == expected
    path = tmp_path / "user_weights.pth"
    torch.save({f"module.{k}": v for k, v in tv.items()}, path)  # as saved from a DataParallel model
    target = load_torchvision(create_model(name, stride_on="3x3"), path).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_bottleneck_weights_need_the_v15_stride() -> None:
    tv = to_torchvision(create_model("resnet50", stride_on="3x3"))
    with pytest.raises(CheckpointError, match="stride_on"):
        load_torchvision(create_model("resnet50"), tv)


def test_mismatched_state_dicts_are_refused() -> None:
    tv = to_torchvision(create_model("resnet18"))
    with pytest.raises(CheckpointError, match="shape"):
        load_torchvision(create_model("resnet34"), {**tv, "layer1.0.conv1.weight": torch.zeros(1, 1, 1, 1)})
    with pytest.raises(CheckpointError, match="lacks"):
        load_torchvision(create_model("resnet34"), tv)
    with pytest.raises(CheckpointError, match="not a key"):
        load_torchvision(create_model("resnet18"), {**tv, "layer9.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="ImageNet"):
        load_torchvision(create_model("resnet20"), tv)


def test_untrusted_file_is_not_unpickled(tmp_path) -> None:
    import pickle

    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv1.weight": Exploit()}))
    with pytest.raises(CheckpointError, match="not a loadable"):
        load_torchvision(create_model("resnet18"), path)
    assert not marker.exists()
