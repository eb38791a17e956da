"""A trained net ready to use, and what using it takes: its input normalisation, class names and image size
(`Pretrained`), loaded from anything `weights.resolve` reads (`load_pretrained`), and an image file as that net
was trained to see it (`load_image`). The hub, `predict`, `export` and the public API's `load` use these."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from resnetlab.data.images import opened, shorter_side_to, to_mode
from resnetlab.errors import ConfigError, DataError, one_line
from resnetlab.networks.net import ResNet
from resnetlab.version import __version__
from resnetlab.weights.formats import model_for
from resnetlab.weights.peers import CIFAR_PEER
from resnetlab.weights.resolve import resolve

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class Pretrained:
    """A trained net and what it takes to use it."""

    model: ResNet  # in eval mode, float32, on the CPU
    mean: Tensor  # (C, 1, 1) channel or (C, S, S) per-pixel; on pixels scaled to [0, 1]
    std: Tensor
    classes: list[str]
    image_size: int
    source: str  # the file it came from (a run directory's newest good checkpoint, see `weights.resolve`)
    skipped: tuple[str, ...] = ()  # newer checkpoints of that run directory that did not verify

    @property
    def channels(self) -> int:
        return self.model.spec.in_channels

    def metadata(self) -> dict[str, Any]:
        return {"spec": self.model.spec.to_dict(), "classes": self.classes, "image_size": self.image_size,
                "resnetlab": __version__}

    def normalise(self, x: Tensor) -> Tensor:
        """Pixels in [0, 1], (N, C, S, S), as the net was trained to see them."""
        return (x - self.mean) / self.std

    @torch.no_grad()
    def predict(self, x: Tensor, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (class name, probability) of each image of `x` (pixels in [0, 1]); a DataError if the net's
        outputs are not finite (overflowing logits), rather than NaN probabilities."""
        logits = self.model(self.normalise(x)).float()
        if not bool(torch.isfinite(logits).all()):
            raise DataError(f"{self.source}: the net's outputs are not finite (NaN or Inf) on these images")
        probs = torch.softmax(logits, dim=1)
        p, idx = probs.topk(min(top_k, probs.shape[1]), dim=1)
        return [[(self.classes[j], float(v)) for v, j in zip(pv.tolist(), iv.tolist(), strict=True)]
                for pv, iv in zip(p, idx, strict=True)]


def load_pretrained(path: str | Path, model: str | None = None, best: bool = False) -> Pretrained:
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
    size = data.get("image_size")
    if not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
        # a per-pixel mean has the training images' size; else the papers' size for the stem
        size = int(mean.shape[1]) if mean.dim() == 3 and mean.shape[1] > 1 else net.spec.input_size
    return Pretrained(net, mean.float(), weights.norm["std"].float(), list(classes), size, str(weights.path),
                      weights.skipped)


def load_image(path: Path, pre: Pretrained) -> Tensor:
    """One image file as the net was trained to see it (`image_tensor`); a DataError naming the file."""
    try:
        with opened(path) as img:
            return image_tensor(img, pre)
    except Exception as exc:  # PIL raises many kinds
        raise DataError(f"{path}: cannot read as an image ({type(exc).__name__}: {one_line(exc, 120)})"
                        ) from None


def image_tensor(img: Any, pre: Pretrained) -> Tensor:
    """A PIL image as the net was trained to see it: shorter side resized to the training size (ImageNet nets:
    to 256/224 of it, as the test resize), centre crop, the net's channels; pixels in [0, 1], (C, S, S)."""
    from PIL import Image

    s = pre.image_size
    img = to_mode(img, "L" if pre.channels == 1 else "RGB")  # 16-bit scaled by its range, not clipped
    w, h = img.size
    short = s if pre.model.spec.stem == "cifar" else round(s * 256 / 224)
    img = img.resize(shorter_side_to(w, h, short), Image.BILINEAR)
    w, h = img.size
    left, top = (w - s) // 2, (h - s) // 2
    arr = np.asarray(img.crop((left, top, left + s, top + s)), dtype=np.uint8)
    t = torch.from_numpy(arr.copy()).float().div_(255.0)
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1)
