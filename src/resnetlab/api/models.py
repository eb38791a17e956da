"""Nets from Python: the registry's (`create_model`, with any weights `eval` reads), or a `Trained` net loaded with
what using it needs (`load`): class names, image size and a `preprocess`, as torchvision's weights carry their
`transforms()`."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from resnetlab.data.images import image_files
from resnetlab.errors import CheckpointError, ConfigError, DataError, one_line
from resnetlab.networks.net import ResNet
from resnetlab.networks.registry import create_model as registry_model
from resnetlab.networks.registry import get_spec
from resnetlab.training.setup import resolve_device
from resnetlab.weights.export import ATOL, RTOL
from resnetlab.weights.export import export as export_net
from resnetlab.weights.formats import model_for
from resnetlab.weights.pretrained import Pretrained, image_tensor, load_image, load_pretrained
from resnetlab.weights.resolve import resolve

__all__ = ["Trained", "create_model", "load"]

Image = Any  # a PIL image
ImageLike = str | Path | Image | Tensor


def create_model(name: str, weights: str | Path | None = None, **overrides: Any) -> ResNet:
    """The registry net `name` (`list_models()`), with spec fields changed by `overrides` (`depth=56`,
    `shortcut="conv1x1"`, ...). With `weights` (anything `resnetlab eval` reads: a run directory, a checkpoint,
    an exported `.safetensors`, torchvision's or the CIFAR reference's files) the net holds those weights; it
    must then be the net `name` with `overrides` builds, or a one-line CheckpointError says how it differs."""
    if weights is None:
        return registry_model(name, **overrides)
    found = resolve(weights)
    net = model_for(found, None if found.spec is not None else name).eval()  # a file that names its net: that net
    wanted = get_spec(name, **overrides).replace(num_classes=net.spec.num_classes, in_channels=net.spec.in_channels)
    held = net.spec.to_dict()
    differ = [k for k, v in wanted.to_dict().items() if k not in ("name", "recompute") and held.get(k) != v]
    if differ:
        asked = " ".join([name, *(f"{k}={v}" for k, v in overrides.items())])
        raise CheckpointError(f"{found.path}: holds a net with {differ[0]}={held.get(differ[0])!r}, not "
                              f"{getattr(wanted, differ[0])!r} as {asked} has")
    return net


def load(path: str | Path, best: bool = False, model: str | None = None, device: str | None = None) -> Trained:
    """A trained net from a run directory (its newest good checkpoint, or `best.pt` with `best`), a
    checkpoint or a weights file: the one net every command means by that path (`resnetlab eval`, `export`,
    `predict`). `model`: the registry name a file that names no net holds (torchvision's files). `device`
    (auto, cpu, cuda, cuda:N; default the CPU): where it runs (`Trained.to`)."""
    trained = Trained(load_pretrained(path, model=model, best=best))
    return trained.to(device) if device is not None else trained


@dataclass
class Trained:
    """A trained net and what using it takes: `module` (eval mode, on the CPU unless moved with `to`),
    `classes`, `image_size`, `preprocess(image)` and `predict(images)`."""

    pretrained: Pretrained

    @property
    def module(self) -> ResNet:
        return self.pretrained.model

    @property
    def classes(self) -> list[str]:
        return self.pretrained.classes

    @property
    def image_size(self) -> int:
        return self.pretrained.image_size

    @property
    def source(self) -> str:
        """The file the weights came from."""
        return self.pretrained.source

    @property
    def skipped(self) -> tuple[str, ...]:
        """Newer checkpoints of the run directory it came from that did not verify, and why."""
        return self.pretrained.skipped

    @property
    def device(self) -> torch.device:
        """Where the module runs."""
        return self.pretrained.mean.device

    def to(self, device: str | torch.device) -> Trained:
        """This net moved to `device` (auto, cpu, cuda, cuda:N), in place, as `torch.nn.Module.to`: the module,
        its input normalisation and the batches `predict` gives it."""
        dev = resolve_device(device)
        pre = self.pretrained
        self.pretrained = replace(pre, model=pre.model.to(dev), mean=pre.mean.to(dev), std=pre.std.to(dev))
        return self

    def export(self, format: str, out: str | Path) -> dict[str, Any]:  # noqa: A002 - the --format flag
        """The net as `safetensors`, `onnx` or `pt2` at `out`, as `resnetlab export` writes it: what was written
        (path, bytes and, for graphs, the largest difference from PyTorch's outputs and its bound). The file is
        written from a CPU float32 copy, so its bytes never depend on the device; on another device a graph's
        check also runs the net there (`device`, `device_max_abs_diff`: from the CPU's outputs)."""
        if self.device.type == "cpu":
            return export_net(self.pretrained, format, out)
        pre = self.pretrained
        cpu = replace(pre, model=copy.deepcopy(pre.model).float().cpu(), mean=pre.mean.float().cpu(),
                      std=pre.std.float().cpu())
        result = export_net(cpu, format, out)
        if "max_abs_diff" in result:
            result |= {"device": str(self.device), "device_max_abs_diff": _device_diff(pre, cpu)}
        return result

    def preprocess(self, image: ImageLike) -> Tensor:
        """One image as the net sees it before normalisation: a (C, S, S) tensor of pixels in [0, 1], resized
        (shorter side) and centre-cropped to the training size, in the net's channels. A tensor is taken as
        such a tensor already."""
        if isinstance(image, Tensor):
            return self._checked(image)
        if isinstance(image, str | Path):
            return load_image(Path(image), self.pretrained)
        return self._from_pil(image)

    def predict(self, images: ImageLike | Sequence[ImageLike], top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (class name, probability) for each image: file paths (a folder: its JPEG/PNG files, sorted),
        PIL images, a (C, S, S) tensor or an (N, C, S, S) batch of pixels in [0, 1]."""
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        if isinstance(images, Tensor):
            batches = [images if images.dim() == 4 else self._checked(images).unsqueeze(0)]
        else:
            items = self._items(images)
            batches = [torch.stack([self.preprocess(i) for i in items[k:k + 256]]) for k in range(0, len(items), 256)]
        return [row for batch in batches for row in self.pretrained.predict(batch.to(self.device), top_k)]

    def __call__(self, x: Tensor) -> Tensor:
        """Logits of a batch of pixels in [0, 1], normalised as the net was trained."""
        return self.module(self.pretrained.normalise(x))

    @staticmethod
    def _items(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
        """Each image once: a folder as its JPEG/PNG files, sorted."""
        items = [images] if isinstance(images, str | Path) or not isinstance(images, Sequence) else list(images)
        if not items:
            raise DataError("predict: no images given")
        expanded: list[ImageLike] = []
        for item in items:
            expanded += image_files([str(item)]) if isinstance(item, str | Path) else [item]
        return expanded

    def _checked(self, x: Tensor) -> Tensor:
        want = (self.pretrained.channels, self.image_size, self.image_size)
        if tuple(x.shape) != want:
            raise DataError(f"predict: a tensor of shape {tuple(x.shape)}, not {want} (C, S, S) pixels in [0, 1]")
        return x.float()

    def _from_pil(self, image: Image) -> Tensor:
        from PIL import Image as PILImage

        if not isinstance(image, PILImage.Image):
            raise DataError(f"predict: {type(image).__name__} is not an image (a path, a PIL image or a tensor)")
        try:
            return image_tensor(image, self.pretrained)  # what the command line makes of the file's pixels
        except Exception as exc:  # PIL raises many kinds
            raise DataError(f"predict: a PIL image it cannot take ({type(exc).__name__}: {one_line(exc, 120)})"
                            ) from None


@torch.no_grad()
def _device_diff(pre: Pretrained, cpu: Pretrained) -> float:
    """The largest |logit| difference between the net on its device and its CPU copy on export's check batch
    (four images of seeded noise), within export's bound or a one-line ConfigError."""
    x = torch.rand(4, cpu.channels, cpu.image_size, cpu.image_size, generator=torch.Generator().manual_seed(0))
    want = cpu.model(cpu.normalise(x))
    got = pre.model(pre.normalise(x.to(pre.mean.device))).float().cpu()
    diff, bound = float((got - want).abs().max()), ATOL + RTOL * float(want.abs().max())
    if not diff <= bound:
        raise ConfigError(f"the net on {pre.mean.device} differs from its CPU copy by {diff:.3g} (bound {bound:.3g})")
    return diff
