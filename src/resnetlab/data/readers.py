"""Readers of the data sets that need no files: scikit-learn's 8x8 digits and a synthetic image set.

Both are deterministic and independent of the run seed, so every run sees the same train/test split.
"""

from __future__ import annotations

import math

import numpy as np

from resnetlab.data.base import ArrayDataset
from resnetlab.data.cache import Splits
from resnetlab.errors import DataError, one_line

SYNTHETIC_CLASSES = 10
SYNTHETIC_SIZE = 32
SYNTHETIC_DEFAULT = 512
SYNTHETIC_SEED = 20160


def read_digits() -> Splits:
    """scikit-learn's 1,797 8x8 digits as one-channel uint8 images (0..16 scaled to 0..255), classes "0".."9",
    with a fixed stratified 80/20 split."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
    except Exception as exc:  # a broken scikit-learn install
        raise DataError(f"digits: cannot load scikit-learn's digits data ({one_line(exc)})") from None
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0)
    classes = [str(i) for i in range(10)]
    return (ArrayDataset(images[train_idx], labels[train_idx], classes),
            ArrayDataset(images[test_idx], labels[test_idx], classes))


def _synthetic_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images whose class sets a mean colour and a stripe angle/frequency; random phase and noise."""
    n, s = len(labels), SYNTHETIC_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) / s
    angle = labels * (math.pi / SYNTHETIC_CLASSES)
    freq = 2.0 + (labels % 3)
    phase = rng.uniform(0, 2 * math.pi, size=n)
    coord = xx[None] * np.cos(angle)[:, None, None] + yy[None] * np.sin(angle)[:, None, None]
    wave = np.sin(2 * math.pi * freq[:, None, None] * coord + phase[:, None, None])
    hues = np.arange(SYNTHETIC_CLASSES) / SYNTHETIC_CLASSES  # ten colours evenly spaced around the hue circle
    palette = np.stack([np.clip(np.abs(((hues * 6 + shift) % 6) - 3) - 1, 0, 1) for shift in (0, 4, 2)], axis=1)
    colour = palette[labels]
    images = 60.0 + 120.0 * colour[:, :, None, None] + 45.0 * wave[:, None, :, :]
    images += rng.normal(0.0, 20.0, size=images.shape)
    return np.clip(np.round(images), 0, 255).astype(np.uint8)


def read_synthetic(train_size: int = SYNTHETIC_DEFAULT) -> Splits:
    """A learnable 10-class, 3x32x32 data set: ``train_size`` train and ``train_size // 4`` test images."""
    if isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 4:
        raise DataError(f"synthetic:{train_size}: needs an integer number of training images >= 4")
    classes = [f"class{i}" for i in range(SYNTHETIC_CLASSES)]
    out = []
    for part, size in enumerate((train_size, train_size // 4)):
        rng = np.random.default_rng([SYNTHETIC_SEED, part])
        labels = rng.permutation(np.arange(size) % SYNTHETIC_CLASSES).astype(np.int64)
        out.append(ArrayDataset(_synthetic_images(labels, rng), labels, classes))
    return out[0], out[1]
