"""Hostile files as bytes, for several families: hand-written PNGs, image files of odd kinds, CIFAR-10 members
and state_dicts in the peers' layouts."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from typing import Any

MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "I;16", "I", "F", "CMYK"]
IMAGE_KINDS = ([f"mode {m}" for m in MODES]  # predict's kinds
               + ["1x1", "1x100000", "100000x1", "declared 100000x100000", "declared 8193x8192", "png missing rows",
                  "jpeg partial frame", "png cut in its data", "zero bytes", "png named .jpg", "jpeg named .png",
                  "text", "animated gif", "exif rotated jpeg"])
# the `images` family's kinds, in an 8x8 data set: every mode to 32-bit integer and float, the bombs (PIL's
# error threshold; below it, a 300 MB decode from a few hundred bytes), other formats under a misleading name
FOLDER_KINDS = ["mode RGB", "1x1", "1x300", "mode L", "mode LA", "mode 1", "mode P", "palette transparent",
                "mode RGBA", "cmyk jpeg", "mode I;16", "int32 tiff", "mode F", "png cut at random",
                "jpeg cut at random", "garbage", "zero bytes", "text", "animated gif", "webp named .png",
                "bmp named .jpg", "declared 200000x200000", "declared 10000x10000", "declared 0x8", "png bad crc",
                "jpeg header only"]
INVALID_IMAGES = {"png missing rows": "a PNG whose data covers half its rows",
                  "jpeg partial frame": "a JPEG whose scan covers a quarter of its declared frame",
                  "png cut in its data": "a PNG cut inside its image data", "zero bytes": "an empty image file",
                  "text": "a text file as an image"}
NAMES = ["img", "new\nline", "\x1b[31mred", "car\rriage", "tab\tname", "sp ace ", "ünïcödé", "bell\x07"]


def crafted_png(width: int, height: int, rows: bytes, bad_crc: bool = False) -> bytes:
    """A PNG written by hand: its header may claim any size (a decompression bomb, a zero width)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) if crc is None else crc))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows), 1 if bad_crc else None)
            + chunk(b"IEND", b""))


def _save(img: Any, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def image_file(kind: str, seed: int, shape: tuple[int, int] = (12, 10)) -> tuple[bytes, str]:
    """The bytes of an image file of `kind` (of `shape` pixels where it has none of its own; not square, the
    crop matters) and the suffix its name gets."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    if kind.startswith("mode "):
        return _mode_image(kind[5:], rgb, rng), ".png"
    if re.fullmatch(r"\d+x\d+", kind):
        w, h = (int(v) for v in kind.split("x"))
        return _save(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), "PNG"), ".png"
    if kind.startswith("declared "):
        w, h = (int(v) for v in kind.split()[1].split("x"))
        return crafted_png(w, h, b"\x00" * 64), ".png"
    png, jpeg = _save(Image.fromarray(rgb), "PNG"), _save(Image.fromarray(rgb), "JPEG")
    if kind == "png missing rows":  # IDAT holds half the rows; PIL fills the rest without an error
        rows = b"".join(b"\x00" + rgb[r].tobytes() for r in range(shape[0] // 2))
        return crafted_png(shape[1], shape[0], rows), ".png"
    if kind == "jpeg partial frame":  # the frame header claims 4x the rows its scan holds; PIL pads with grey
        sof = jpeg.find(b"\xff\xc0")
        return jpeg[:sof + 5] + (shape[0] * 4).to_bytes(2, "big") + jpeg[sof + 7:], ".jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    makers: dict[str, Callable[[], tuple[bytes, str]]] = {
        "png cut in its data": lambda: (png[: png.find(b"IDAT") + 20], ".png"),
        "png cut at random": lambda: (png[: int(rng.integers(1, len(png)))], ".png"),
        "jpeg cut at random": lambda: (jpeg[: int(rng.integers(1, len(jpeg)))], ".jpg"),
        "jpeg header only": lambda: (jpeg[:20], ".jpg"),
        "png bad crc": lambda: (crafted_png(8, 8, b"\x00" * (8 * 25), bad_crc=True), ".png"),
        "zero bytes": lambda: (b"", ".png"), "text": lambda: (b"not an image\n", ".png"),
        "garbage": lambda: (rng.integers(0, 256, int(rng.integers(1, 600)), dtype=np.uint8).tobytes(), ".png"),
        "png named .jpg": lambda: (png, ".jpg"), "jpeg named .png": lambda: (jpeg, ".png"),
        "webp named .png": lambda: (_save(Image.fromarray(rgb), "WEBP"), ".png"),
        "bmp named .jpg": lambda: (_save(Image.fromarray(rgb), "BMP"), ".jpg"),
        "cmyk jpeg": lambda: (_save(Image.fromarray(rgb).convert("CMYK"), "JPEG"), ".jpg"),
        "palette transparent": lambda: (_save(Image.fromarray(rgb).convert("P"), "PNG", transparency=0), ".png"),
        "int32 tiff": lambda: (_save(Image.fromarray(rng.integers(-2**31, 2**31 - 1, shape, dtype=np.int32), "I"),
                                     "TIFF"), ".png"),
        "animated gif": lambda: (_save(Image.fromarray(rgb), "GIF", save_all=True,
                                       append_images=[Image.fromarray(255 - rgb)]), ".png"),
        "exif rotated jpeg": lambda: (_save(Image.fromarray(rgb), "JPEG", exif=exif), ".jpg"),
    }
    return makers[kind]()


def _mode_image(mode: str, rgb: Any, rng: Any) -> bytes:
    """An image of PIL mode `mode` as PNG, or TIFF (under a .png name) where PNG cannot hold the mode."""
    import numpy as np
    from PIL import Image

    shape = rgb.shape[:2]
    arrays = {"1": rgb[..., 0] > 127, "L": rgb[..., 0], "LA": rgb[..., :2].copy(), "RGB": rgb,
              "RGBA": rng.integers(0, 256, (*shape, 4), dtype=np.uint8),
              "I;16": rng.integers(0, 65536, shape, dtype=np.uint16),
              "I": rng.integers(0, 65536, shape, dtype=np.int32),
              "F": rng.random(shape, dtype=np.float32)}
    if mode in ("P", "PA", "CMYK"):
        img = Image.fromarray(rgb).convert("P" if mode == "PA" else mode)
        img = img.convert("PA") if mode == "PA" else img
    else:
        img = Image.fromarray(arrays[mode], mode if mode in ("LA", "RGBA") else None)
    try:
        return _save(img, "PNG")
    except OSError:  # PA, I, F, CMYK: TIFF, under a .png name (content decides, not the suffix)
        return _save(img, "TIFF")


def image_tree(kinds: list[str], seed: int, where: str) -> dict[str, bytes]:
    """An image-folder data set (train/ and test/, two classes) of good 8x8 images, with the hostile
    `kinds` placed at `where` ("train", "test" or "both") under their (sometimes misleading) names."""
    files: dict[str, bytes] = {}
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            for j in range(2):
                files[f"data/{split}/{cls}/{j}.png"] = image_file("mode RGB", seed + j + (cls == "dog") * 7, (8, 8))[0]
    for i, kind in enumerate(kinds):
        split = where if where != "both" else ("train", "test")[i % 2]
        data, suffix = image_file(kind, seed + i, (8, 8))
        files[f"data/{split}/{('cat', 'dog')[i % 2]}/bad{i}{suffix}"] = data
    return files


CIFAR10_MEMBERS = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


def cifar_member(rep: tuple[Any, ...], name: str, rng: Any) -> bytes | None:
    """The bytes of CIFAR-10 member `name`: a good one (3 images), or the replacement `rep` describes."""
    import pickle

    import numpy as np

    good_batch = {b"batch_label": b"b", b"labels": [0, 1, 2], b"data": rng.integers(0, 256, (3, 3072),
                                                                                    dtype=np.uint8)}
    good_meta = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    if rep[0] == "missing" and rep[1] == name:
        return None
    if rep[0] == "junk" and rep[1] == name:
        return rep[2]
    if rep[0] == "batch" and rep[1] == name:
        _, _, spec, proto = rep
        arrays = {"uint8": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
                  "int64": np.zeros((3, 3072), dtype=np.int64), "float32": np.zeros((3, 3072), np.float32),
                  "rows_3071": np.zeros((3, 3071), np.uint8), "three_d": np.zeros((3, 3, 1024), np.uint8),
                  "empty": np.zeros((0, 3072), np.uint8), "list": [[0] * 3072] * 3, "none": None,
                  "bytes": b"\0" * 9216, "one_row": np.zeros((1, 3072), np.uint8)}
        blob: dict[Any, Any] = {b"batch_label": b"b"}
        if "data" in spec:
            blob[b"data"] = arrays[spec["data"]]
        if "labels" in spec:
            blob[spec.get("labels_key", b"labels")] = spec["labels"]
        return pickle.dumps(blob, protocol=proto)
    if rep[0] == "meta" and name == "batches.meta":
        _, kind, proto = rep
        names = {"ten": [f"c{i}".encode() for i in range(10)], "nine": [b"c"] * 9, "ints": list(range(10)),
                 "not_utf8": [b"\xff\xfe"] * 10, "list": None, "str_key": None}[kind]
        obj: Any = ({"label_names": [f"c{i}" for i in range(10)]} if kind == "str_key" else
                    [b"c"] * 10 if kind == "list" else {b"label_names": names})
        return pickle.dumps(obj, protocol=proto)
    return pickle.dumps(good_meta if name == "batches.meta" else good_batch, protocol=2)


def cifar_members(rep: tuple[Any, ...]) -> dict[str, bytes]:
    """The CIFAR-10 python layout's files (cifar-10-batches-py/NAME): good ones, but for what `rep` replaces."""
    import numpy as np

    rng = np.random.default_rng(0)
    members = {f"cifar-10-batches-py/{name}": cifar_member(rep, name, rng) for name in CIFAR10_MEMBERS}
    return {name: data for name, data in members.items() if data is not None}


def damaged_state(edit: tuple[str, str, int]) -> tuple[Any, bool]:
    """A state_dict file in the CIFAR peer's or torchvision's key layout, changed by `edit`; (object, legacy)."""
    import torch

    layout, change = edit[:2]
    if layout == "torchvision":
        state = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64),
                 "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    else:  # the peer's option-A ResNet-20 layout
        def bn(name: str, width: int) -> dict[str, Any]:
            return {f"{name}.weight": torch.ones(width), f"{name}.bias": torch.zeros(width),
                    f"{name}.running_mean": torch.zeros(width), f"{name}.running_var": torch.ones(width)}

        state = {"module.conv1.weight": torch.zeros(16, 3, 3, 3), **bn("module.bn1", 16)}
        for stage, width in enumerate((16, 32, 64), start=1):
            for i in range(3):
                cin = width // 2 if stage > 1 and i == 0 else width
                for conv, c in (("conv1", cin), ("conv2", width)):
                    state[f"module.layer{stage}.{i}.{conv}.weight"] = torch.zeros(width, c, 3, 3)
                    state |= bn(f"module.layer{stage}.{i}.{conv.replace('conv', 'bn')}", width)
        state["module.linear.weight"] = torch.zeros(10, 64)
        state["module.linear.bias"] = torch.zeros(10)
    first = next(iter(state))
    if change == "drop":
        state.pop(first)
    elif change == "extra":
        state["module.layer9.0.conv1.weight"] = torch.zeros(1)
    elif change == "reshape":
        state[first] = torch.zeros(3, 3)
    elif change in ("int8", "float16"):
        state[first] = state[first].to(getattr(torch, change))
    elif change == "empty":
        state = {}
    elif change == "deep" and layout != "torchvision":
        state["module.layer1.99999.conv1.weight"] = torch.zeros(16, 16, 3, 3)
    elif change == "wide_linear":
        key = "fc.weight" if layout == "torchvision" else "module.linear.weight"
        state[key] = torch.zeros(0, 64)
    elif change == "no_prefix":
        state = {k.removeprefix("module."): v for k, v in state.items()}
    obj: Any = {"state_dict": state, "best_prec1": 91.7}
    if change == "prec_str":
        obj["best_prec1"] = "high"
    elif change == "prec_tensor":
        obj["best_prec1"] = torch.tensor(91.7)
    if layout == "torchvision":
        obj = state
    return obj, layout == "peer_legacy"


def safetensors_parts(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """A safetensors file's header (its JSON) and the bytes after it."""
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def safetensors_join(header: dict[str, Any] | bytes, body: bytes) -> bytes:
    """A safetensors file of `header` (JSON, or its bytes as given) and `body`."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


def edited_frame(raw: bytes, edit: tuple[Any, ...]) -> bytes | None:
    """The safetensors file `raw` with its frame or header changed by `edit`: the header length or a cut (at a
    named place or a number), trailing bytes, a metadata field, a header entry dropped, a tensor entry's field,
    the header nested deep, two tensors' data overlapping. None: `edit` is none of those."""
    what, n = edit[0], int.from_bytes(raw[:8], "little")
    named = {"+1": n + 1, "-1": n - 1, "0": 0, "file": len(raw), "2**63": 2**63, "2**64-1": 2**64 - 1,
             "header/2": 8 + n // 2, "header end": 8 + n, "header end+1": 9 + n, "data/2": (8 + n + len(raw)) // 2,
             "last byte": len(raw) - 1}
    if what in ("length", "cut"):
        at = int(named.get(edit[1], edit[1]))
        return at.to_bytes(8, "little") + raw[8:] if what == "length" else raw[: min(at, len(raw) - 1)]
    if what == "trailing":
        return raw + edit[1]
    if what not in ("meta", "drop", "tensor", "header_nested", "offsets"):
        return None
    header, body = safetensors_parts(raw)
    names = [k for k in header if k != "__metadata__"]
    if what == "header_nested":
        nested = "[" * edit[1] + "]" * edit[1]
        return safetensors_join((json.dumps(header)[:-1] + ', "x": ' + nested + "}").encode(), body)
    if what == "meta":
        header.setdefault("__metadata__", {})[edit[1]] = edit[2]
    elif what == "drop":
        header.pop(edit[1], None)
    elif what == "tensor" and edit[1] == "whole":
        header[names[0]] = edit[2]
    elif what == "tensor":
        header[names[0]][edit[1]] = edit[2]
    else:  # offsets: the second tensor's data inside the first one's
        a, b = header[names[0]], header[names[1]]
        length = b["data_offsets"][1] - b["data_offsets"][0]
        b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + length]
    return safetensors_join(header, body)
