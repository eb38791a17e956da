"""Image files for the folder and ImageNet readers: which files are images, how one is decoded (16-bit grey
scaled by its range, then RGB: grey replicated, alpha dropped, palettes expanded), which folder is the
evaluation split."""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
import zlib
from collections.abc import Callable, Container, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from resnetlab.errors import DataError, one_line

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
EVAL_DIRS = ("val", "test")
SPLIT_DIRS = ("train", "test", "val")


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def to_8bit(img: Image.Image) -> Image.Image:
    """16-bit grey scaled to 8 bits by its real range (65535 -> 255), where PIL's convert would clip it to
    white; float images and 32-bit integers beyond 16 bits refused (no known range); other modes as they are."""
    if img.mode in SIXTEEN_BIT or img.mode == "I":  # some Pillow versions open 16-bit PNGs as "I"
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError("32-bit integer pixels beyond 0..65535 have no known range: save as 8 or 16 bits")
        return Image.fromarray(np.clip(np.rint(arr * (255.0 / 65535.0)), 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        raise ValueError("floating-point images have no known range: save them as 8 or 16 bits")
    return img


def to_mode(img: Image.Image, mode: str = "RGB") -> Image.Image:
    """``img`` in 8 bits (:func:`to_8bit`) and PIL mode ``mode`` ("RGB" or "L"); a transparent palette
    colour goes through RGBA first, so the palette's colours are kept."""
    img = to_8bit(img)
    if img.mode == mode:
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert(mode)


# The most pixels resnetlab decodes from one image file: 64 Mi (8192 x 8192), above any photograph of the
# papers' data sets (ImageNet's largest are a few megapixels). A file that claims more is refused from its
# header, before decoding: a 400 KB PNG can claim 12,000 x 12,000 pixels and take 1.6 GB to decode.
MAX_PIXELS = 8192 * 8192
MAX_FILE_BYTES = 512 << 20  # one image file, as one archive member (archives.py)


def shorter_side_to(w: int, h: int, size: int) -> tuple[int, int]:
    """The size of a `w` x `h` image whose shorter side is resized to `size` (aspect ratio kept). An image so
    elongated that the result would hold more than MAX_PIXELS is refused (ValueError): a 1 x 100,000 image
    resized to a shorter side of 256 would take 25.6 Gi pixels."""
    if min(w, h) < 1:
        raise ValueError(f"an image of {w}x{h} pixels has nothing to resize")
    new = (size, max(size, round(h * size / w))) if w <= h else (max(size, round(w * size / h)), size)
    if new[0] * new[1] > MAX_PIXELS:
        raise ValueError(f"{w}x{h} pixels is too elongated: with its shorter side resized to {size} it would "
                         f"be {new[0]}x{new[1]}, beyond the {MAX_PIXELS:,} pixels resnetlab decodes")
    return new


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ARITHMETIC_SOF = tuple(bytes([0xFF, m]) for m in (0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def _png_short_by(raw: bytes) -> str | None:
    """Whether a PNG's pixel data (its IDAT stream, past the signature PIL checked) ends before every row its
    header claims: PIL fills the missing rows with zeros without a word. None when complete (or not measurable)."""
    pos, idat, header = 8, [], None
    while pos + 8 <= len(raw):
        length, kind = int.from_bytes(raw[pos:pos + 4], "big"), raw[pos + 4:pos + 8]
        body = raw[pos + 8:pos + 8 + length]
        if kind == b"IHDR" and len(body) >= 13:
            header = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        return None
    w, h = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour, interlace = header[8], header[9], header[12]
    bits = _PNG_CHANNELS.get(colour, 1) * depth
    passes = _ADAM7 if interlace == 1 else ((0, 0, 1, 1),)
    want = 0
    for x0, y0, dx, dy in passes:
        pw, ph = -(-(w - x0) // dx) if w > x0 else 0, -(-(h - y0) // dy) if h > y0 else 0
        if pw and ph:
            want += ph * (1 + -(-pw * bits // 8))
    inflate, have = zlib.decompressobj(), 0
    try:
        for part in idat:  # counted a megabyte at a time: never more than that in memory
            data = inflate.decompress(part, 1 << 20)
            have += len(data)
            while inflate.unconsumed_tail and have < want:
                have += len(inflate.decompress(inflate.unconsumed_tail, 1 << 20))
            if have >= want:
                return None
    except zlib.error:
        return None  # PIL reports a damaged stream itself
    return f"its pixel data ends early ({have:,} of the {want:,} bytes its {w}x{h} header needs): truncated"


def _jpeg_ends_early(raw: bytes, img: Image.Image) -> str | None:
    """Whether a JPEG's data ends before the last row of its frame, which libjpeg fills with grey, warning only
    to itself. A one-scan (baseline) file is decoded again at 1/8 scale (every coefficient still read) with its
    end marker replaced by zero bytes: one that ends early then runs out of data. A file of several scans
    (progressive) is measured instead: Huffman coding spends at least one bit on each 8x8 block of each
    component, so a file under that cannot hold its frame (arithmetic-coded files are not measured)."""
    if img.format != "JPEG":
        return None
    w, h = img.size
    if raw.count(b"\xff\xda") != 1:  # start-of-scan markers; 0xFF in scan data is always followed by 0x00
        layers = getattr(img, "layer", None)
        if not layers or any(m in raw[:65536] for m in _ARITHMETIC_SOF):
            return None
        hmax, vmax = max(lay[1] for lay in layers), max(lay[2] for lay in layers)
        blocks = sum(math.ceil(math.ceil(w * lay[1] / hmax) / 8) * math.ceil(math.ceil(h * lay[2] / vmax) / 8)
                     for lay in layers)
        if len(raw) * 8 < blocks:
            return (f"{len(raw):,} bytes cannot code the {blocks:,} blocks of its {w}x{h} frame (at least one bit "
                    "each): its data ends early")
        return None
    end = raw.rfind(b"\xff\xd9")
    try:
        probe = Image.open(io.BytesIO(raw[:end] + bytes(64)))
        probe.draft(probe.mode, (max(1, w // 8), max(1, h // 8)))
        probe.load()
    except OSError as exc:
        if "truncated" in str(exc):
            return f"its data ends before the last row of its {w}x{h} frame (a cut or damaged JPEG)"
    except Exception:  # noqa: BLE001 - the probe is a second opinion; the real decode already succeeded
        return None
    return None


@contextlib.contextmanager
def opened(source: str | bytes | os.PathLike[str], check: Callable[[tuple[int, int]], None] | None = None
           ) -> Iterator[Image.Image]:
    """An image file opened and fully decoded once its header's size is checked: at most MAX_PIXELS (never PIL's
    warning on stderr), then `check(size)`. A truncated PNG or JPEG, which PIL would fill in silently, is
    refused. Raises what PIL raises, or ValueError."""
    if not isinstance(source, bytes):
        if os.stat(source).st_size > MAX_FILE_BYTES:
            raise ValueError(f"the file is beyond the {MAX_FILE_BYTES >> 20} MiB resnetlab reads as one image")
        source = Path(source).read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(source))
        except Image.UnidentifiedImageError:
            raise ValueError("not an image of a format resnetlab reads (PNG, JPEG, ...)") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:  # PIL's own check
            raise ValueError(f"its header claims too many pixels, beyond the {MAX_PIXELS:,} resnetlab decodes "
                             f"from one image ({str(exc).split(',')[0]})") from None
        with img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ValueError(f"its header claims {w}x{h} pixels, beyond the {MAX_PIXELS:,} resnetlab "
                                 "decodes from one image (a decompression bomb?)")
            if check is not None:
                check(img.size)
            img.load()
            short = _png_short_by(source) if img.format == "PNG" else _jpeg_ends_early(source, img)
            if short:
                raise ValueError(short)
            yield img


def open_rgb(source: str | bytes, where: str | None = None,
             check: Callable[[tuple[int, int]], None] | None = None) -> Image.Image:
    """One image file (a path or its bytes) decoded as RGB (see :func:`opened`); a DataError naming ``where``
    (default: the path) if it cannot be."""
    try:
        with opened(source, check) as img:
            return to_mode(img, "RGB")
    except DataError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise DataError(f"{where or source}: cannot decode image ({one_line(exc)})") from None


def decode_image(source: str | bytes, where: str,
                 check: Callable[[tuple[int, int]], None] | None = None) -> np.ndarray:
    """Decode one image file (path or bytes) to an RGB uint8 array (H, W, 3); DataError naming ``where``."""
    return np.asarray(open_rgb(source, where, check), dtype=np.uint8)


def eval_dir(found: Container[str], root: str) -> str:
    """The evaluation split's folder among the split folders ``found``: ``val`` or ``test``, exactly one of
    them (which of both a user meant would be a guess); else a DataError naming ``root``."""
    present = [name for name in EVAL_DIRS if name in found]
    if len(present) == 2:
        raise DataError(f"{root}: has both val/ and test/; keep one of them as the evaluation split")
    if not present:
        raise DataError(f"{root}: missing val/ or test/ with class folders")
    return present[0]


def image_files(inputs: list[str]) -> list[Path]:
    """Image files named or found (recursively, sorted) in the folders named; errors name the input."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_image_name(f.name))
            if not found:
                raise DataError(f"{p}: no JPEG or PNG images in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        elif p.exists():
            raise DataError(f"{p}: not a regular file or folder")
        else:
            raise DataError(f"{p}: no such file or folder")
    return files
