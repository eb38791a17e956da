"""The streaming source of ImageNet-style folders (``train/<wnid>/*`` and ``val/`` or ``test/``), decoded per
batch by a DataLoader with the ResNet paper's transforms. A sample's random numbers come from ``(seed, epoch,
index)`` alone, never from worker state, so an epoch replays identically for any number of workers."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from resnetlab.data.base import DataOptions, DataSource, Share, derive_seed, hold_out
from resnetlab.data.folder import scan_dir
from resnetlab.data.images import eval_dir, open_rgb, shorter_side_to
from resnetlab.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize (bilinear) so that the shorter side is ``size``, keeping the aspect ratio."""
    w, h = img.size
    new = shorter_side_to(w, h, size)  # ValueError for an image too elongated to resize
    return img if new == (w, h) else img.resize(new, Image.Resampling.BILINEAR)


def ten_crops(img: Image.Image, size: int) -> list[Image.Image]:
    """The four corner crops and the centre crop of side ``size``, followed by their mirror images."""
    w, h = img.size
    corners = [(0, 0), (w - size, 0), (0, h - size), (w - size, h - size),
               ((w - size) // 2, (h - size) // 2)]
    crops = [img.crop((x, y, x + size, y + size)) for x, y in corners]
    return crops + [c.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for c in crops]


def to_tensor(img: Image.Image, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """An RGB image as a normalised float32 (3, H, W) tensor."""
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).to(torch.float32).div_(255.0)
    return x.sub_(mean).div_(std)


def _collate(items: list[object]) -> object:
    """Stack a batch; a decode failure (a message, see ``ImageFiles``) stands for the whole batch."""
    for item in items:
        if isinstance(item, str):
            return item
    xs = torch.stack([item[0] for item in items])  # type: ignore[index]
    ys = torch.tensor([item[1] for item in items], dtype=torch.int64)  # type: ignore[index]
    return xs, ys


class ImageFiles(Dataset):
    """Image files with labels; an item key is ``index`` (eval) or ``(index, seed, epoch)`` (train). A file
    that cannot be decoded gives its one-line message, not an exception: a worker's exception would come back
    with its traceback in the message."""

    def __init__(self, items: list[tuple[str, int]], options: DataOptions, mean: torch.Tensor,
                 std: torch.Tensor) -> None:
        self.items, self.options, self.mean, self.std = items, options, mean, std

    def _train_view(self, img: Image.Image, index: int, seed: int, epoch: int) -> torch.Tensor:
        opts = self.options
        rng = random.Random(derive_seed("imagenet", seed, epoch, index))
        img = resize_shorter(img, rng.randint(*opts.scale))
        w, h = img.size
        left, top = rng.randint(0, w - opts.crop_size), rng.randint(0, h - opts.crop_size)
        img = img.crop((left, top, left + opts.crop_size, top + opts.crop_size))
        if opts.flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(img, self.mean, self.std)

    def _eval_view(self, img: Image.Image) -> torch.Tensor:
        opts, size = self.options, self.options.crop_size
        img = resize_shorter(img, opts.test_resize)
        if opts.ten_crop:
            return torch.stack([to_tensor(c, self.mean, self.std) for c in ten_crops(img, size)])
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        return to_tensor(img.crop((left, top, left + size, top + size)), self.mean, self.std)

    def __getitem__(self, key: int | tuple[int, int, int]) -> object:
        file, label = self.items[key[0] if isinstance(key, tuple) else key]
        try:
            img = open_rgb(file)
            x = self._train_view(img, *key) if isinstance(key, tuple) else self._eval_view(img)
        except DataError as exc:
            return str(exc)
        except ValueError as exc:  # shorter_side_to: an image too elongated to resize
            return f"{file}: {exc}"
        return x, label


class ImageNetSource(DataSource):
    """ImageNet-style image folders streamed from disk.

    Train: the shorter side resized to a random size in ``options.scale``, a random ``crop_size`` crop,
    flipped with p = 1/2. Test: the shorter side resized to ``test_resize``, the centre crop (or ten crops:
    four corners and centre, and their mirror images). Pixels in [0, 1] normalised with the ImageNet channel
    mean and std.
    """

    def __init__(self, root: Path, options: DataOptions | None = None, name: str = "imagenet") -> None:
        self.options = options = options if options is not None else DataOptions()
        if not root.is_dir():
            raise DataError(f"{root}: not a directory (expected train/<wnid>/ and val/<wnid>/)")
        layout = scan_dir(root)
        train = layout.get("train")
        if not train:
            raise DataError(f"{root}: missing train/ with class folders")
        eval_split = eval_dir(layout, str(root))
        self.classes = sorted(train)
        label_of = {c: i for i, c in enumerate(self.classes)}
        self._splits: dict[str, list[tuple[str, int]]] = {}
        for split, class_map in (("train", train), ("test", layout[eval_split])):
            items = self._splits[split] = []
            for cls in sorted(class_map):
                if not class_map[cls]:
                    raise DataError(f"{root / (eval_split if split == 'test' else 'train') / cls}: no images")
                if cls not in label_of:
                    raise DataError(f"{root / eval_split / cls}: not a class of train/")
                items += [(where, label_of[cls]) for where, _ in class_map[cls]]
        if options.val_split:
            items = self._splits["train"]
            keep, held = hold_out(str(root), np.asarray([label for _, label in items]), options)
            self._splits["val"] = [items[i] for i in held]
            self._splits["train"] = [items[i] for i in keep]
        self.name = name
        self.num_classes, self.channels, self.image_size = len(self.classes), 3, options.crop_size
        self.train_size = len(self._splits["train"])
        self.has_val = "val" in self._splits
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        self._norm_shapes = [(3, 1, 1)]

    def _stream(self, split: str, batches: Iterable[list[object]],
                device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        dataset = ImageFiles(self._splits[split], self.options, self._mean, self._std)
        loader = DataLoader(dataset, batch_sampler=batches,  # type: ignore[arg-type]
                            num_workers=self.options.workers, collate_fn=_collate,
                            pin_memory=device.type == "cuda")
        for batch in loader:
            if isinstance(batch, str):
                raise DataError(batch)
            x, y = batch
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def _train(self, shares: Iterator[Share], seed: int, epoch: int,
               device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        keys = ([(int(i), seed, epoch) for i in share.indices] for share in shares)
        return self._stream("train", keys, device)

    def _eval(self, split: str, bounds: list[tuple[int, int]],
              device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._stream(split, [list(range(lo, hi)) for lo, hi in bounds], device)
