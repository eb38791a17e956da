"""Weights files from elsewhere: pytorch_resnet_cifar10's CIFAR ResNets load exactly; `eval --weights`,
`train --init` and their bad input.

The peer net is written here from that project's documented structure (no downloaded file): BasicBlocks whose
option-A shortcut pads planes//4 zero channels before and after the old ones, keys `conv1`, `bn1`,
`layer{1,2,3}.{i}.conv{1,2}` / `bn{1,2}`, `linear`, saved as {"state_dict": module.-prefixed, "best_prec1"}.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.data import IMAGENET_MEAN, IMAGENET_STD, DataOptions, load_data
from resnetlab.errors import CheckpointError
from resnetlab.weights import peers as convert
from resnetlab.weights.checkpoint import load_checkpoint
from resnetlab.weights.formats import model_for, read_weights
from resnetlab.weights.peers import cifar_peer_orders, load_pytorch_resnet_cifar10, to_torchvision

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


def peer_normalise(images: torch.Tensor) -> torch.Tensor:
    """The peer's input: ToTensor (uint8 / 255) then Normalize with ImageNet's channel mean and std."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return images.float().div(255).sub(mean).div(std)


def peer_result(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, float]:
    with torch.no_grad():
        logits = net(peer_normalise(images))
    top5 = logits.topk(5, 1).indices
    return ((logits.argmax(1) != labels).float().mean().item(), (~(top5 == labels[:, None]).any(1)).float().mean()
            .item(), F.cross_entropy(logits, labels).item())


def printed(text: str) -> tuple[float, float, float]:
    m = re.search(r"top-1 error ([\d.]+)%, top-5 error ([\d.]+)%, loss ([\d.]+)", text)
    assert m, text
    return float(m.group(1)) / 100, float(m.group(2)) / 100, float(m.group(3))


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))


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


# ---- eval --weights -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cifar10", "folder"])
def test_eval_weights_gives_the_peers_own_error(kind: str, make_cifar, make_folder, tmp_path: Path,
                                                capsys) -> None:
    peer = peer_net(20, seed=1)
    path = save_peer(peer, tmp_path / "resnet20-12fca82f.th")
    if kind == "cifar10":
        data, _ = make_cifar("cifar10", tar=True, per_batch=24)
    else:
        data = make_folder(classes=tuple(f"c{i}" for i in range(10)), counts=(1, 3), size=(32, 32), tar=True)
    test = load_data(f"{kind}:{data}", DataOptions(normalize="none")).split("test")
    expected = peer_result(peer, test.images, test.labels)
    assert main(["eval", "--weights", str(path), "--model", "resnet20", "--data", f"{kind}:{data}"]) == 0
    out = capsys.readouterr().out
    error, top5, loss = printed(out)
    assert (error, top5) == (round(expected[0], 4), round(expected[1], 4))
    assert loss == pytest.approx(expected[2], abs=2e-4)
    assert f"top-1 error {1 - BEST_PREC1 / 100:.2%}" in out  # the file's own record, printed beside
    assert main(["eval", "--weights", str(path), "--data", f"{kind}:{data}"]) == 0  # the depth from the file
    assert printed(capsys.readouterr().out) == (error, top5, loss)


def test_eval_weights_of_a_torchvision_file(make_folder, tmp_path: Path, capsys) -> None:
    data = make_folder(classes=("a", "b", "c"), counts=(1, 2), size=(32, 32))
    path = tmp_path / "resnet18.pth"  # fine-tuned on the 3 classes of the data: the classes come from the file
    torch.save(to_torchvision(create_model("resnet18", num_classes=3)), path)
    assert main(["eval", "--weights", str(path), "--model", "resnet18", "--data", f"folder:{data}"]) == 0
    assert "resnet18 on pets (test, 6 images)" in capsys.readouterr().out


# ---- train --init ---------------------------------------------------------------------------------------------
def init_args(data: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "resnet20", "--data", f"cifar10:{data}", "--init", str(weights), "--iters", "2",
            "--out", str(out), "--set", "optim.batch_size=16", "--set", "run.threads=1", *extra]


def test_train_init_starts_from_the_file_and_records_it(make_cifar, tmp_path: Path, capsys) -> None:
    data, _ = make_cifar("cifar10", tar=True, per_batch=8)
    path = save_peer(peer_net(20, seed=2), tmp_path / "resnet20.th")
    out = tmp_path / "run"
    # a learning rate so small that two steps leave every weight where it started (BN statistics do move)
    assert main(init_args(data, path, out, "--set", "optim.lr=1e-9")) == 0
    config = json.loads((out / "config.json").read_text())
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert config["run"]["init"] == str(path.resolve())
    assert config["resolved"]["init"]["sha256"] == sha
    assert config["resolved"]["init"]["format"] == "pytorch_resnet_cifar10"
    assert sha in (out / "log.txt").read_text()
    payload = load_checkpoint(out / "checkpoints" / "step-00000002.pt")
    loaded = load_pytorch_resnet_cifar10(create_model("resnet20"), path).state_dict()
    fresh = create_model("resnet20").state_dict()
    for key, value in payload["model"].items():
        if key.endswith(("weight", "bias")):
            torch.testing.assert_close(value, loaded[key], rtol=0, atol=1e-6)
            assert not torch.allclose(value, fresh[key], atol=1e-3) or value.dim() == 1  # not a fresh init
    torch.testing.assert_close(payload["norm"]["mean"], torch.tensor(IMAGENET_MEAN).view(3, 1, 1))
    torch.testing.assert_close(payload["norm"]["std"], torch.tensor(IMAGENET_STD).view(3, 1, 1))
    capsys.readouterr()
    # the run's own checkpoint is a weights file too, and evaluates as the run directory does
    assert main(["eval", str(out), "--best"]) == 0
    by_run = capsys.readouterr().out.split(": ", 1)[1]
    assert main(["eval", "--weights", str(out / "checkpoints" / "best.pt")]) == 0
    assert capsys.readouterr().out.split(": ", 1)[1] == by_run


def test_restart_before_the_first_checkpoint_reloads_the_same_file(make_cifar, tmp_path: Path) -> None:
    data, _ = make_cifar("cifar10", tar=True, per_batch=8)
    path = save_peer(peer_net(20, seed=3), tmp_path / "resnet20.th")
    out = tmp_path / "run"
    assert main(init_args(data, path, out, "--set", "run.deterministic=true")) == 0
    final = out / "checkpoints" / "step-00000002.pt"
    reference = load_checkpoint(final)["model"]
    for ckpt in (out / "checkpoints").iterdir():  # as if killed before its first checkpoint (and its summary)
        ckpt.unlink()
    (out / "summary.json").unlink()
    assert main(["train", "--resume", str(out)]) == 0
    for key, value in load_checkpoint(final)["model"].items():
        assert torch.equal(value, reference[key]), key
    for ckpt in (out / "checkpoints").iterdir():
        ckpt.unlink()
    save_peer(peer_net(20, seed=4), path)  # another file under the recorded name
    assert main(["train", "--resume", str(out)]) == 2


# ---- bad input ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of files that are not what `--model resnet20` can use."""
    root = tmp_path_factory.mktemp("bad")
    save_peer(peer_net(56), root / "resnet56.th")
    raw = save_peer(peer_net(20), root / "resnet20.th").read_bytes()
    (root / "truncated.th").write_bytes(raw[: len(raw) // 2])
    torch.save(to_torchvision(create_model("resnet18")), root / "torchvision.pth")
    torch.save({"weights": torch.zeros(3), "step": torch.tensor(1)}, root / "random.pt")
    (root / "notes.txt").write_text("not a torch file\n")
    return root


@pytest.mark.parametrize(("args", "needle"), [
    (["--weights", "resnet56.th", "--model", "resnet20"], "holds a pytorch_resnet_cifar10 resnet56 (9 units"),
    (["--weights", "resnet20.th", "--model", "preact_resnet20"], "need an option-A CIFAR ResNet"),
    (["--weights", "torchvision.pth", "--model", "resnet20"], "need an ImageNet ResNet"),
    (["--weights", "torchvision.pth"], "names no model"),
    (["--weights", "random.pt", "--model", "resnet20"], "not a weights layout resnetlab knows"),
    (["--weights", "notes.txt", "--model", "resnet20"], "a text file, not a weights file"),
    (["--weights", "truncated.th", "--model", "resnet20"], "not a loadable weights file"),
    (["--weights", "missing.th", "--model", "resnet20"], "no such weights file"),
    (["--weights", "resnet20.th"], "names no data set; give --data"),
    (["resnet20.th", "--weights", "resnet20.th"], "one of the two"),
    (["--weights", "resnet20.th", "--best", "--data", "synthetic"], "--best"),
])
def test_eval_bad_weights_one_line_exit_2(args: list[str], needle: str, bad_files: Path, capsys) -> None:
    args = [str(bad_files / a) if a.endswith((".th", ".pt", ".pth", ".txt")) else a for a in args]
    assert main(["eval", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("resnetlab: error:") and needle in err, err


@pytest.mark.parametrize(("name", "needle"), [("resnet56.th", "resnet56"), ("notes.txt", "not a weights file"),
                                              ("missing.th", "no such weights file")])
def test_train_bad_init_one_line_exit_2_and_no_run(name: str, needle: str, bad_files: Path, make_cifar,
                                                   tmp_path: Path, capsys) -> None:
    data, _ = make_cifar("cifar10", tar=True, per_batch=2)
    out = tmp_path / "run"
    assert main(init_args(data, bad_files / name, out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert not out.exists() and not any(p.name.startswith(".run") for p in tmp_path.iterdir())


def test_untrusted_weights_file_is_not_unpickled(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.th"
    path.write_bytes(pickle.dumps({"state_dict": {"module.conv1.weight": Exploit()}, "best_prec1": 90.0}, protocol=2))
    assert main(["eval", "--weights", str(path), "--model", "resnet20", "--data", "synthetic"]) == 2
    assert "not a loadable weights file" in capsys.readouterr().err
    assert not marker.exists()


@pytest.fixture(scope="module")
def peer_bytes(bad_files: Path) -> dict[bool, bytes]:
    return {legacy: save_peer(peer_net(20), bad_files / f"whole-{legacy}.th", legacy).read_bytes()
            for legacy in (True, False)}


@settings(max_examples=40, deadline=None)
@given(legacy=st.booleans(), data=st.data())
def test_peer_file_truncated_anywhere_is_one_error(legacy: bool, data: st.DataObject, bad_files: Path,
                                                   peer_bytes: dict[bool, bytes]) -> None:
    raw = peer_bytes[legacy]
    path = bad_files / "cut.th"
    path.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
    with pytest.raises(CheckpointError) as info:
        model_for(read_weights(path), "resnet20")
    assert "\n" not in str(info.value) and str(path) in str(info.value)
