"""Image files on disk, for the folder and ImageNet readers: which files are images, how one is decoded, and
which folder holds the evaluation split.

Decoding: 16-bit grey is scaled to 8 bits by its range (65535 -> 255); floating-point images and 32-bit
integers beyond 16 bits are refused (no known range); then every image is converted to RGB: grey is
replicated into three channels, an alpha channel is dropped (colour kept, no compositing), palette images
are expanded through their palette (through RGBA when they have a transparent colour).

Layout: ``train/<class>/<image>`` and one evaluation split, ``val/<class>/<image>`` or
``test/<class>/<image>``. Both readers accept either name; a data set with both is refused rather than one
of them silently ignored, since which one a user meant is a guess (see :func:`eval_dir`).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable, Container, Iterator

import numpy as np
from PIL import Image

from resnetlab.data.base import one_line
from resnetlab.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
EVAL_DIRS = ("val", "test")
SPLIT_DIRS = ("train", "test", "val")


def is_image_name(name: str) -> bool:
    """Whether a file name has a JPEG or PNG extension (any case)."""
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


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as an 8-bit RGB image."""
    return to_mode(img, "RGB")


# The most pixels resnetlab decodes from one image file: 64 Mi (8192 x 8192), above any photograph of the
# papers' data sets (ImageNet's largest are a few megapixels). A file that claims more is refused from its
# header, before decoding: a 400 KB PNG can claim 12,000 x 12,000 pixels and take 1.6 GB to decode.
MAX_PIXELS = 8192 * 8192


@contextlib.contextmanager
def opened(source: str | bytes | os.PathLike[str], check: Callable[[tuple[int, int]], None] | None = None
           ) -> Iterator[Image.Image]:
    """An image file opened and fully decoded, once its header's size has been checked: at most MAX_PIXELS
    (PIL's own decompression-bomb warning becomes that error, never a warning on stderr), then `check(size)`
    (e.g. the size every image of a data set must share). Raises what PIL raises, or ValueError."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
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
            yield img


def open_rgb(source: str | bytes, where: str | None = None,
             check: Callable[[tuple[int, int]], None] | None = None) -> Image.Image:
    """Open and fully decode one image file (a path or its bytes) as RGB; a DataError naming ``where``
    (default: the path) if it cannot be decoded. `check(size)` runs before decoding (see :func:`opened`);
    a DataError it raises passes through as it is."""
    try:
        with opened(source, check) as img:
            return to_rgb(img)
    except DataError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise DataError(f"{where or source}: cannot decode image ({one_line(exc)})") from None


def decode_image(source: str | bytes, where: str,
                 check: Callable[[tuple[int, int]], None] | None = None) -> np.ndarray:
    """Decode one image file (path or bytes) to an RGB uint8 array (H, W, 3); DataError naming ``where``."""
    return np.asarray(open_rgb(source, where, check), dtype=np.uint8)


def eval_dir(found: Container[str], root: str) -> str:
    """The evaluation split's folder among the split folders ``found`` (names): ``val`` or ``test``.

    One rule for every reader: exactly one of them must be there; both, or neither, is a one-line DataError
    naming ``root``."""
    present = [name for name in EVAL_DIRS if name in found]
    if len(present) == 2:
        raise DataError(f"{root}: has both val/ and test/; keep one of them as the evaluation split")
    if not present:
        raise DataError(f"{root}: missing val/ or test/ with class folders")
    return present[0]
