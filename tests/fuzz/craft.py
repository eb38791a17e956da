"""Hostile files as bytes, for several families: hand-written PNGs, image files of odd kinds, CIFAR-10 members
and state_dicts in the peers' layouts."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

IMAGE_KINDS = ["rgb", "rgb_1x1", "rgb_tall", "grey", "grey_alpha", "bilevel", "palette", "palette_transparent",
               "rgba", "cmyk_jpeg", "grey16", "int32", "float_tiff_as_png", "truncated_png", "truncated_jpeg",
               "garbage", "empty", "text", "gif_animated", "webp_as_png", "bmp_as_jpg", "bomb_png",
               "huge_header_png", "zero_width_png", "png_bad_crc", "jpeg_header_only"]


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    """One PNG chunk: length, kind, data and CRC (or the `crc` given)."""
    import struct
    import zlib

    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) if crc is None else crc))


def crafted_png(width: int, height: int, rows: bytes, bad_crc: bool = False) -> bytes:
    """A PNG written by hand: its header may claim any size (a decompression bomb, a zero width)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows),
                                                                        1 if bad_crc else None)
            + png_chunk(b"IEND", b""))


def image_bytes(kind: str, seed: int) -> bytes:
    """The bytes of one hostile (or merely unusual) image file of `kind`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)

    def save(img: Image.Image, fmt: str, **kw: Any) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    png = save(Image.fromarray(rgb), "PNG")
    jpeg = save(Image.fromarray(rgb), "JPEG")
    makers: dict[str, Callable[[], bytes]] = {
        "rgb": lambda: png,
        "rgb_1x1": lambda: save(Image.fromarray(rgb[:1, :1]), "PNG"),
        "rgb_tall": lambda: save(Image.fromarray(rng.integers(0, 256, (300, 1, 3), dtype=np.uint8)), "PNG"),
        "grey": lambda: save(Image.fromarray(rgb[..., 0], "L"), "PNG"),
        "grey_alpha": lambda: save(Image.fromarray(rgb[..., :2].copy(), "LA"), "PNG"),
        "bilevel": lambda: save(Image.fromarray(rgb[..., 0]).convert("1"), "PNG"),
        "palette": lambda: save(Image.fromarray(rgb).convert("P"), "PNG"),
        "palette_transparent": lambda: save(Image.fromarray(rgb).convert("P"), "PNG", transparency=0),
        "rgba": lambda: save(Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA"), "PNG"),
        "cmyk_jpeg": lambda: save(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "grey16": lambda: save(Image.fromarray(rng.integers(0, 65536, (8, 8), dtype=np.uint16)), "PNG"),
        "int32": lambda: save(Image.fromarray(rng.integers(-2**31, 2**31 - 1, (8, 8), dtype=np.int32), "I"),
                              "TIFF"),
        "float_tiff_as_png": lambda: save(Image.fromarray(rng.random((8, 8), dtype=np.float32), "F"), "TIFF"),
        "truncated_png": lambda: png[: int(rng.integers(1, len(png)))],
        "truncated_jpeg": lambda: jpeg[: int(rng.integers(1, len(jpeg)))],
        "garbage": lambda: rng.integers(0, 256, int(rng.integers(1, 600)), dtype=np.uint8).tobytes(),
        "empty": lambda: b"",
        "text": lambda: b"this is not an image\n",
        "gif_animated": lambda: save(Image.fromarray(rgb), "GIF", save_all=True,
                                     append_images=[Image.fromarray(255 - rgb)]),
        "webp_as_png": lambda: save(Image.fromarray(rgb), "WEBP"),
        "bmp_as_jpg": lambda: save(Image.fromarray(rgb), "BMP"),
        # 200,000 x 200,000 pixels claimed by a 100-byte file: PIL's bomb check must stop it before decoding
        "bomb_png": lambda: crafted_png(200_000, 200_000, b"\x00" * 64),
        # 10,000 x 10,000 (below PIL's error threshold): a 300 MB decode from a file of a few hundred bytes
        "huge_header_png": lambda: crafted_png(10_000, 10_000, b"\x00" * 64),
        "zero_width_png": lambda: crafted_png(0, 8, b""),
        "png_bad_crc": lambda: crafted_png(8, 8, b"\x00" * (8 * 25), bad_crc=True),
        "jpeg_header_only": lambda: jpeg[:20],
    }
    return makers[kind]()


def image_tree(kinds: list[str], seed: int, where: str) -> dict[str, bytes]:
    """An image-folder data set (train/ and test/, two classes) of good 8x8 images, with the hostile
    `kinds` placed at `where` ("train", "test" or "both") under their (sometimes misleading) names."""
    files: dict[str, bytes] = {}
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            for j in range(2):
                files[f"data/{split}/{cls}/{j}.png"] = image_bytes("rgb", seed + j + (cls == "dog") * 7)
    for i, kind in enumerate(kinds):
        split = where if where != "both" else ("train", "test")[i % 2]
        suffix = ".jpg" if "jpeg" in kind or kind == "bmp_as_jpg" else ".png"
        files[f"data/{split}/{('cat', 'dog')[i % 2]}/bad{i}{suffix}"] = image_bytes(kind, seed + i)
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


def damaged_state(edit: tuple[str, str, int]) -> tuple[Any, bool]:
    """A state_dict file in the CIFAR peer's or torchvision's key layout, changed by `edit`; (object, legacy)."""
    import torch

    layout, change = edit[:2]
    if layout == "torchvision":
        state = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64),
                 "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    else:  # the peer's option-A ResNet-20 layout
        state = {"module.conv1.weight": torch.zeros(16, 3, 3, 3), "module.bn1.weight": torch.ones(16),
                 "module.bn1.bias": torch.zeros(16), "module.bn1.running_mean": torch.zeros(16),
                 "module.bn1.running_var": torch.ones(16)}
        for stage, width in enumerate((16, 32, 64), start=1):
            for i in range(3):
                cin = width // 2 if stage > 1 and i == 0 else width
                for conv, c in (("conv1", cin), ("conv2", width)):
                    state[f"module.layer{stage}.{i}.{conv}.weight"] = torch.zeros(width, c, 3, 3)
                    bn = conv.replace("conv", "bn")
                    state[f"module.layer{stage}.{i}.{bn}.weight"] = torch.ones(width)
                    state[f"module.layer{stage}.{i}.{bn}.bias"] = torch.zeros(width)
                    state[f"module.layer{stage}.{i}.{bn}.running_mean"] = torch.zeros(width)
                    state[f"module.layer{stage}.{i}.{bn}.running_var"] = torch.ones(width)
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
