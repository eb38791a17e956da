"""Reader of small image-folder data sets, ``train/<class>/*`` and ``val/<class>/*`` or ``test/<class>/*``, as
a directory or a ``.tar.gz`` read in place (one top-level directory around the layout allowed); decoded once
and cached (:mod:`resnetlab.data.cache`)."""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path

import numpy as np

from resnetlab.data.archives import member_name, members, read_member
from resnetlab.data.base import ArrayDataset, DataOptions
from resnetlab.data.cache import Splits, cached, file_stamp
from resnetlab.data.images import SPLIT_DIRS, decode_image, eval_dir, is_image_name
from resnetlab.errors import DataError, one_line, printable, unsafe_char

# decode_image is looked up here (tests replace it to prove a cache hit decodes nothing)

# split -> class -> [(where, source)], where names the file in messages; source is a path or the bytes
Layout = dict[str, dict[str, list[tuple[str, "str | bytes"]]]]


def scan_dir(root: Path) -> Layout:
    """The layout of an image-folder directory (JPEG and PNG files listed, not read); a symlinked split folder
    is an error, a symlinked class folder is skipped."""
    layout: Layout = {}
    for split in SPLIT_DIRS:
        split_dir = root / split
        if split_dir.is_symlink():
            raise DataError(f"{split_dir}: is a symbolic link; symlinked directories are not followed")
        if not split_dir.is_dir():
            continue
        classes = layout[split] = {}
        try:
            with os.scandir(split_dir) as entries:
                class_dirs = sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))  # no symlinks
            for class_dir in class_dirs:
                with os.scandir(class_dir) as entries:
                    names = sorted(e.name for e in entries if is_image_name(e.name) and e.is_file())
                paths = [os.path.join(class_dir, n) for n in names]
                classes[os.path.basename(class_dir)] = [(p, p) for p in paths]  # named by the path they are read from
        except OSError as exc:
            raise DataError(f"{split_dir}: cannot list ({one_line(exc.strerror or exc)})") from None
    return layout


def scan_tar(archive: Path) -> Layout:
    """The layout of an image-folder tarball, with every image member read into memory."""
    found: dict[str | None, Layout] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in members(tar, archive):
                parts = [p for p in member_name(member.name).split("/") if p]
                if parts and parts[0] in SPLIT_DIRS:
                    prefix, rest = None, parts
                elif len(parts) >= 2 and parts[1] in SPLIT_DIRS:
                    prefix, rest = parts[0], parts[1:]
                else:
                    continue
                if len(rest) == 2 and member.isdir():
                    found.setdefault(prefix, {}).setdefault(rest[0], {}).setdefault(rest[1], [])
                elif len(rest) == 3 and member.isfile() and is_image_name(rest[2]):
                    data = read_member(tar, member, archive)
                    files = found.setdefault(prefix, {}).setdefault(rest[0], {}).setdefault(rest[1], [])
                    files.append((f"{archive}:{'/'.join(parts)}", data))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive}: not a readable tar archive ({one_line(exc)})") from None
    if None in found:
        layout = found[None]
    elif len(found) == 1:
        layout = next(iter(found.values()))
    elif not found:
        raise DataError(f"{archive}: no train/<class>/<image> members (nor under one top-level directory)")
    else:
        tops = ", ".join(sorted(str(p) for p in found))
        raise DataError(f"{archive}: several top-level directories hold a layout ({tops}); expected one")
    for classes in layout.values():
        for files in classes.values():
            files.sort(key=lambda item: item[0])
    return layout


def _decode_all(items: list[tuple[str, str | bytes]], ref: tuple[str, tuple[int, ...]]) -> np.ndarray:
    ref_where, ref_shape = ref
    out = np.empty((len(items), *ref_shape), dtype=np.uint8)
    for i, (where, source) in enumerate(items):

        def same_size(size: tuple[int, int], where: str = where) -> None:  # from the header, before decoding
            if size != (ref_shape[1], ref_shape[0]):
                raise DataError(f"{where}: image is {size[0]}x{size[1]} but the first training image {ref_where} "
                                f"is {ref_shape[1]}x{ref_shape[0]}; all images must share one size")

        out[i] = decode_image(source, where, same_size)
    return out.transpose(0, 3, 1, 2).copy()


def build_splits(root: str, layout: Layout) -> Splits:
    """Check a scanned layout and decode it into train and test arrays; ``root`` prefixes messages. Classes are
    the sorted folders of ``train/``; every image must have the size of the first training image."""
    train = layout.get("train")
    if not train:
        raise DataError(f"{root[:-1]}: missing train/ with class folders (expected train/<class>/<image>)")
    test_split = eval_dir(layout, root[:-1])
    classes = sorted(train)
    odd = next((name for name in classes if any(unsafe_char(ch) for ch in name)), None)
    if odd is not None:  # it would be stored with the trained net and printed by predict
        raise DataError(f"{root}train: class folder {printable(odd)!r} holds control characters; rename it")
    if len(classes) < 2:
        raise DataError(f"{root}train: {len(classes)} class folder ({', '.join(classes)}); a classifier needs "
                        "at least two (train/<class>/<image>)")
    test = layout[test_split]
    for split, class_map in (("train", train), (test_split, test)):
        for name, files in class_map.items():
            if not files:
                raise DataError(f"{root}{split}/{name}: class folder has no JPEG or PNG images")
    unknown = sorted(set(test) - set(classes))
    if unknown:
        raise DataError(f"{root}{test_split}/{unknown[0]}: not a class of train/ ({len(unknown)} unknown)")
    if not test:
        raise DataError(f"{root}{test_split}: has no class folders")
    label_of = {name: i for i, name in enumerate(classes)}
    first_where, first_source = train[classes[0]][0]
    ref = (first_where, decode_image(first_source, first_where).shape)
    splits = []
    for class_map in (train, test):
        items = [item for name in sorted(class_map) for item in class_map[name]]
        labels = [label_of[name] for name in sorted(class_map) for _ in class_map[name]]
        splits.append(ArrayDataset(_decode_all(items, ref), np.asarray(labels, dtype=np.int64), classes))
    return splits[0], splits[1]


def read_folder(path: Path, options: DataOptions) -> Splits:
    """The train and test splits of the image folder (directory or tarball) at ``path``, cached."""
    if path.is_file():
        return cached("folder", path, [file_stamp(path)], options,
                      lambda: build_splits(f"{path}:", scan_tar(path)))
    if not path.is_dir():
        raise DataError(f"{path}: no such file or directory")
    layout = scan_dir(path)
    stamps = [file_stamp(Path(where), os.path.relpath(where, path))
              for classes in layout.values() for files in classes.values() for where, _ in files]
    return cached("folder", path, stamps, options, lambda: build_splits(f"{path}/", layout))
