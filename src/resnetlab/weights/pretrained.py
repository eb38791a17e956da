"""A trained net ready to use (`Trained`: the net, its input normalisation, class names and image size), loaded from
anything `weights.resolve` reads (`load_pretrained`), and an image file as that net was trained to see it
(`load_image`). The hub, `predict`, `export` and the public API's `load` use these."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from resnetlab.data.images import image_files, opened, shorter_side_to, to_mode
from resnetlab.errors import ConfigError, DataError, one_line
from resnetlab.networks.net import ResNet
from resnetlab.settings.device import resolve_device
from resnetlab.version import __version__
from resnetlab.weights.export import ATOL, RTOL, export
from resnetlab.weights.formats import model_for
from resnetlab.weights.peers import CIFAR_PEER
from resnetlab.weights.resolve import resolve

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

Image = Any  # a PIL image
ImageLike = str | Path | Image | Tensor


@dataclass
class Trained:
    """A trained net and what using it takes: `module` (eval mode, on the CPU unless moved with `to`),
    `classes`, `image_size`, `preprocess(image)` and `predict(images)`."""

    module: ResNet
    """The net, in eval mode, float32; on the CPU unless moved with `to`."""
    mean: Tensor
    """The input normalisation's mean on pixels scaled to [0, 1]: (C, 1, 1) a channel, or (C, S, S) per pixel."""
    std: Tensor
    """The input normalisation's standard deviation, shaped as `mean`."""
    classes: list[str]
    """The class names, in the order of the net's outputs."""
    image_size: int
    """The side of the square images the net was trained on."""
    source: str
    """The file the weights came from (a run directory's newest good checkpoint, see `weights.resolve`)."""
    skipped: tuple[str, ...] = ()
    """Newer checkpoints of the run directory it came from that did not verify, and why."""

    @property
    def channels(self) -> int:
        return self.module.spec.in_channels

    def metadata(self) -> dict[str, Any]:
        return {"spec": self.module.spec.to_dict(), "classes": self.classes, "image_size": self.image_size,
                "resnetlab": __version__}

    def normalise(self, x: Tensor) -> Tensor:
        """Pixels in [0, 1], (N, C, S, S), as the net was trained to see them."""
        return (x - self.mean) / self.std

    @property
    def device(self) -> torch.device:
        """Where the module runs."""
        return self.mean.device

    def to(self, device: str | torch.device) -> Trained:
        """This net moved to `device` (auto, cpu, cuda, cuda:N), in place, as `torch.nn.Module.to`: the module,
        its input normalisation and the batches `predict` gives it."""
        dev = resolve_device(device)
        self.module, self.mean, self.std = self.module.to(dev), self.mean.to(dev), self.std.to(dev)
        return self

    def export(self, format: str, out: str | Path) -> dict[str, Any]:  # noqa: A002 - the --format flag
        """The net as `safetensors`, `onnx` or `pt2` at `out`, as `resnetlab export` writes it: what was written
        (path, bytes and, for graphs, the largest difference from PyTorch's outputs and its bound). The file is
        written from a CPU float32 copy, so its bytes never depend on the device; on another device a graph's
        check also runs the net there (`device`, `device_max_abs_diff`: from the CPU's outputs)."""
        if self.device.type == "cpu":
            return export(self, format, out)
        cpu = replace(self, module=copy.deepcopy(self.module).float().cpu(), mean=self.mean.float().cpu(),
                      std=self.std.float().cpu())
        result = export(cpu, format, out)
        if "max_abs_diff" in result:
            result |= {"device": str(self.device), "device_max_abs_diff": _device_diff(self, cpu)}
        return result

    def preprocess(self, image: ImageLike) -> Tensor:
        """One image as the net sees it before normalisation: a (C, S, S) tensor of pixels in [0, 1], resized
        (shorter side) and centre-cropped to the training size, in the net's channels. A tensor is taken as
        such a tensor already."""
        if isinstance(image, Tensor):
            return self._checked(image)
        if isinstance(image, str | Path):
            return load_image(Path(image), self)
        return self._from_pil(image)

    @torch.no_grad()
    def predict(self, images: ImageLike | Sequence[ImageLike], top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (class name, probability) for each image: file paths (a folder: its JPEG/PNG files, sorted),
        PIL images, a (C, S, S) tensor or an (N, C, S, S) batch of pixels in [0, 1]. A DataError if the net's
        outputs are not finite (overflowing logits), rather than NaN probabilities."""
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        if isinstance(images, Tensor):
            batches = [images if images.dim() == 4 else self._checked(images).unsqueeze(0)]
        else:
            items = self._items(images)
            batches = [torch.stack([self.preprocess(i) for i in items[k:k + 256]]) for k in range(0, len(items), 256)]
        rows = []
        for batch in batches:
            logits = self(batch.to(self.device)).float()
            if not bool(torch.isfinite(logits).all()):
                raise DataError(f"{self.source}: the net's outputs are not finite (NaN or Inf) on these images")
            p, idx = torch.softmax(logits, dim=1).topk(min(top_k, logits.shape[1]), dim=1)
            rows += [[(self.classes[j], float(v)) for v, j in zip(pv.tolist(), iv.tolist(), strict=True)]
                     for pv, iv in zip(p, idx, strict=True)]
        return rows

    def __call__(self, x: Tensor) -> Tensor:
        """Logits of a batch of pixels in [0, 1], normalised as the net was trained."""
        return self.module(self.normalise(x))

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
        want = (self.channels, self.image_size, self.image_size)
        if tuple(x.shape) != want:
            raise DataError(f"predict: a tensor of shape {tuple(x.shape)}, not {want} (C, S, S) pixels in [0, 1]")
        return x.float()

    def _from_pil(self, image: Image) -> Tensor:
        from PIL import Image as PILImage

        if not isinstance(image, PILImage.Image):
            raise DataError(f"predict: {type(image).__name__} is not an image (a path, a PIL image or a tensor)")
        try:
            return image_tensor(image, self)  # what the command line makes of the file's pixels
        except Exception as exc:  # PIL raises many kinds
            raise DataError(f"predict: a PIL image it cannot take ({type(exc).__name__}: {one_line(exc, 120)})"
                            ) from None


@torch.no_grad()
def _device_diff(net: Trained, cpu: Trained) -> float:
    """The largest |logit| difference between the net on its device and its CPU copy on export's check batch
    (four images of seeded noise), within export's bound or a one-line ConfigError."""
    x = torch.rand(4, cpu.channels, cpu.image_size, cpu.image_size, generator=torch.Generator().manual_seed(0))
    want = cpu(x)
    got = net(x.to(net.device)).float().cpu()
    diff, bound = float((got - want).abs().max()), ATOL + RTOL * float(want.abs().max())
    if not diff <= bound:
        raise ConfigError(f"the net on {net.device} differs from its CPU copy by {diff:.3g} (bound {bound:.3g})")
    return diff


def load_pretrained(path: str | Path, model: str | None = None, best: bool = False) -> Trained:
    """A ready model from a run directory (its newest good checkpoint, or best.pt), a checkpoint or weights
    file: what `weights.resolve` says the path means, as `eval` sees it. An empty path is a one-line error: it
    would mean the current folder (`Path('')` is '.'), never what a caller who passed nothing meant."""
    if isinstance(path, str) and path == "":
        raise ConfigError(f"weights path {path!r} is empty: give a run directory or a weights file")
    weights = resolve(path, best)
    net = model_for(weights, model).eval()
    data, k, mean = weights.data or {}, net.spec.num_classes, weights.norm["mean"]
    classes = data.get("classes")  # checked when the file was read (`formats.check_class_names`)
    if classes is None:  # a file that names no classes: their indices, or CIFAR-10's for the CIFAR peer's nets
        classes = CIFAR10_CLASSES if weights.format == CIFAR_PEER and k == 10 else [str(i) for i in range(k)]
    size = data.get("image_size")  # checked when the file was read: a side in formats.MIN_SIDE..MAX_SIDE
    if size is None:
        # a per-pixel mean has the training images' size; else the papers' size for the stem
        size = int(mean.shape[1]) if mean.dim() == 3 and mean.shape[1] > 1 else net.spec.input_size
    return Trained(net, mean.float(), weights.norm["std"].float(), list(classes), size, str(weights.path),
                   weights.skipped)


def load_image(path: Path, pre: Trained) -> Tensor:
    """One image file as the net was trained to see it (`image_tensor`); a DataError naming the file."""
    try:
        with opened(path) as img:
            return image_tensor(img, pre)
    except Exception as exc:  # PIL raises many kinds
        raise DataError(f"{path}: cannot read as an image ({type(exc).__name__}: {one_line(exc, 120)})"
                        ) from None


def image_tensor(img: Any, pre: Trained) -> Tensor:
    """A PIL image as the net was trained to see it: shorter side resized to the training size (ImageNet nets:
    to 256/224 of it, as the test resize), centre crop, the net's channels; pixels in [0, 1], (C, S, S)."""
    from PIL import Image

    s = pre.image_size
    img = to_mode(img, "L" if pre.channels == 1 else "RGB")  # 16-bit scaled by its range, not clipped
    w, h = img.size
    short = s if pre.module.spec.stem == "cifar" else round(s * 256 / 224)
    img = img.resize(shorter_side_to(w, h, short), Image.BILINEAR)
    w, h = img.size
    left, top = (w - s) // 2, (h - s) // 2
    arr = np.asarray(img.crop((left, top, left + s, top + s)), dtype=np.uint8)
    t = torch.from_numpy(arr.copy()).float().div_(255.0)
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1)
