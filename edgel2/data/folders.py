"""Image folders: the class folders and their files, decoded in parallel into arrays, split
when the folder has no test split of its own, and cached as ``.npz`` (keyed by every
file's path and bytes and the size decoded to)."""
from __future__ import annotations

import collections
import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgel2.data.dataset import (
    CIFAR10_CLASSES,
    TEST_SPLIT_NAMES,
    VALIDATION_SPLIT_NAME,
    Dataset,
    split_stratified,
)
from edgel2.errors import DataError, ImageError
from edgel2.runtime.preprocess import (
    IMAGE_SUFFIXES,
    load_image_and_size,
    open_regular_file,
    upright_size,
)
from edgel2.utils import cache_folder


def _class_dirs(split_dir: Path) -> list[Path]:
    dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    for d in dirs:
        _check_class_name(d)
    return dirs


def _check_class_name(class_dir: Path) -> None:
    """A class is named by its folder, and the name goes into the model's metadata, labels.txt
    and every table: it must be text (UTF-8) and hold no control character (a newline would
    forge rows)."""
    from edgel2.runtime.io import printable

    name = class_dir.name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"class folder name is not UTF-8 text: {printable(str(class_dir))}; "
                        "rename it") from None
    if not name.isprintable():
        raise DataError(f"class folder name holds a control character: "
                        f"{printable(str(class_dir))!r}; rename it")


def _image_files(class_dir: Path) -> list[Path]:
    files = sorted(Path(top, name) for top, _, names in os.walk(class_dir) for name in names
                   if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"class folder has no images: {class_dir}")
    return files


def _list_split(split_dir: Path) -> tuple[list[Path], list[str]]:
    """Files and their class names for one split folder (``<split>/<class>/*``)."""
    dirs = _class_dirs(split_dir)
    if not dirs:
        raise DataError(f"no class folders in {split_dir}")
    files, labels = [], []
    for d in dirs:
        found = _image_files(d)
        files += found
        labels += [d.name] * len(found)
    return files, labels


def _load_image_folder(root: Path, *, test_split: float, image_size: int | None, seed: int,
                       cache_dir: str | os.PathLike | None, mixed_size: int | None) -> Dataset:
    names = {n: root / n for n in ("train", *TEST_SPLIT_NAMES) if (root / n).is_dir()}
    test_name = next((n for n in TEST_SPLIT_NAMES if n in names), None)
    if "train" in names and test_name is not None:
        splits = {"train": _list_split(names["train"]), "test": _list_split(names[test_name])}
        if test_name == "test" and VALIDATION_SPLIT_NAME in names:
            splits["val"] = _list_split(names[VALIDATION_SPLIT_NAME])
    elif names:
        raise DataError(f"{root} has a train/ or test/ folder but not both")
    else:
        if not 0.0 < test_split < 1.0:
            raise DataError(f"`test_split` must be between 0 and 1, got {test_split}")
        splits = {"all": _list_split(root)}
    class_names = sorted({c for _, labels in splits.values() for c in labels})
    if "train" in splits:
        unseen = sorted({c for name in ("test", "val") for c in splits.get(name, ([], []))[1]}
                        - set(splits["train"][1]))
        if unseen:
            raise DataError(f"{root}: class {unseen[0]!r} has held-out images but no training "
                            f"images (no {root / 'train' / unseen[0]} folder)")

    all_files = [f for files, _ in splits.values() for f in files]
    blobs = _read_all(all_files)
    digest = hashlib.sha256()
    for f, b in zip(all_files, blobs):
        digest.update(str(f.relative_to(root)).encode() + b"\0" + hashlib.sha256(b).digest())
    fingerprint = digest.hexdigest()[:16]

    keys = ["seen", *(f"{a}_{name}" for name in splits for a in "xy")]
    arrays = _read_cache(_cache_path(cache_dir, fingerprint, image_size), keys)
    if arrays is None and image_size is None:
        seen = _header_sizes(all_files, blobs)
        if len(set(seen)) > 1:  # a folder of photos: one size for all of them
            if mixed_size is None:
                raise _sizes_differ(all_files, seen)
            image_size = mixed_size
            arrays = _read_cache(_cache_path(cache_dir, fingerprint, image_size), keys)
    if arrays is None:
        pixels, seen_sizes = _decode_all(all_files, blobs, image_size)
        arrays, start = {"seen": seen_sizes}, 0
        for name, (files, labels) in splits.items():
            arrays[f"x_{name}"] = pixels[start:start + len(files)]
            arrays[f"y_{name}"] = np.array([class_names.index(c) for c in labels], np.int32)
            start += len(files)
        _atomic_savez(_cache_path(cache_dir, fingerprint, image_size), arrays)

    if "x_all" in arrays:
        arrays = {**arrays, **split_stratified(arrays["x_all"], arrays["y_all"], test_split, seed)}
    extra: dict[str, object] = {"test_split": test_split} if "all" in splits else {}
    extra["images_seen"] = _describe_sizes(arrays["seen"], arrays["x_train"].shape[1:3],
                                           _format_counts(all_files))
    return Dataset(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                   class_names, source=str(root.resolve()),
                   name=_folder_name(root, class_names, all_files), fingerprint=fingerprint,
                   extra=extra, x_val=arrays.get("x_val"), y_val=arrays.get("y_val"))


def _describe_sizes(seen: np.ndarray, stored: tuple[int, int], formats: dict[str, int]) -> dict:
    """What a data summary says about the images: the smallest and largest (width x height,
    by area), how many distinct sizes, how many were resized to the stored size, and the
    count of each file format (:func:`_format_counts`).

    Examples:
        >>> d = _describe_sizes(np.array([[64, 48], [200, 100], [32, 32]]), (32, 32),
        ...                     _format_counts([Path("a.jpg"), Path("b.PNG"), Path("c.png")]))
        >>> d["smallest"], d["largest"], d["distinct"], d["resized"], d["formats"]
        ([32, 32], [200, 100], 3, 2, {'JPEG': 1, 'PNG': 2})
    """
    seen = np.asarray(seen).reshape(-1, 2)
    area = seen[:, 0] * seen[:, 1]
    height, width = stored
    return {"smallest": seen[area.argmin()].tolist() if len(seen) else None,
            "largest": seen[area.argmax()].tolist() if len(seen) else None,
            "distinct": int(len({tuple(s) for s in seen.tolist()})),
            "resized": int(np.sum((seen[:, 0] != width) | (seen[:, 1] != height))),
            "size": [int(width), int(height)], "formats": dict(sorted(formats.items()))}


_FORMAT_NAMES = {".jpg": "JPEG", ".jpeg": "JPEG", ".jfif": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}


def _format_counts(files: list[Path]) -> dict[str, int]:
    """How many files of each image format, by suffix (JPEG for .jpg/.jpeg/.jfif)."""
    return dict(collections.Counter(_FORMAT_NAMES.get(f.suffix.lower(), f.suffix.lstrip(".").upper())
                                    for f in files))


def _folder_name(root: Path, class_names: list[str], files: list[Path]) -> str:
    """CIFAR-10-JPEG for CIFAR-10's classes in JPEG files (edgel2's shared pack, unpacked):
    accuracy on re-encoded images is not CIFAR-10 accuracy. Else the folder's name."""
    if class_names == CIFAR10_CLASSES and all(f.suffix.lower() in (".jpg", ".jpeg") for f in files):
        return "CIFAR-10-JPEG"
    return root.resolve().name


def _read_all(files: list[Path]) -> list[bytes]:
    def read(f: Path) -> bytes:
        try:
            with open_regular_file(f) as file:  # a FIFO named like an image must not block
                return file.read()
        except ImageError as e:
            raise DataError(f"cannot read {f}: {e}") from None
        except OSError as e:
            raise DataError(f"cannot read {f}: {e.strerror or e}") from None
    return [read(f) for f in files]  # a thread pool costs more than it saves on small files


def _header_sizes(files: list[Path], blobs: list[bytes]) -> list[tuple[int, int]]:
    """Each image's upright (width, height), from its header alone: whether a folder has one
    size is known before anything is decoded."""
    sizes = []
    for f, b in zip(files, blobs):
        try:
            sizes.append(upright_size(b))
        except ImageError as e:
            raise DataError(f"cannot decode image {f}: {e}") from None
    return sizes


def _decode_all(files: list[Path], blobs: list[bytes], image_size: int | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of every image (resized to ``image_size`` when given) and the upright
    (width, height) each had before."""
    size = None if image_size is None else (image_size, image_size)

    def decode(item: tuple[Path, bytes]) -> tuple[np.ndarray, tuple[int, int]]:
        # The runtime's policy (EXIF, alpha over white, bilinear): training sees images as inference will.
        f, b = item
        try:
            return load_image_and_size(b, size)
        except ImageError as e:
            raise DataError(f"cannot decode image {f}: {e}") from None

    items = list(zip(files, blobs))
    chunks = [items[i:i + 2048] for i in range(0, len(items), 2048)]  # Pillow frees the GIL
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        decoded = [d for chunk in pool.map(lambda c: [decode(i) for i in c], chunks) for d in chunk]
    images = [pixels for pixels, _ in decoded]
    stored = [(im.shape[1], im.shape[0]) for im in images]
    if len(set(stored)) > 1:  # the headers agreed but the pixels do not: a file that lies
        raise _sizes_differ(files, stored)
    return np.stack(images), np.array([seen for _, seen in decoded], np.int32).reshape(-1, 2)


def _sizes_differ(files: list[Path], sizes: list[tuple[int, int]]) -> DataError:
    """The one-line refusal of images of different (width, height), naming the first file and
    the first one whose size differs from it."""
    odd = next(i for i, size in enumerate(sizes) if size != sizes[0])
    return DataError(f"images differ in size ({files[0]} is {sizes[0][0]}x{sizes[0][1]}, "
                     f"{files[odd]} is {sizes[odd][0]}x{sizes[odd][1]}); "
                     "pass `image_size` N to resize them all")


def _cache_path(cache_dir: str | os.PathLike | None, fingerprint: str,
                image_size: int | None) -> Path:
    return cache_folder(cache_dir) / "datasets" / f"{fingerprint}-{image_size or 'native'}.npz"


def _read_cache(path: Path, keys: list[str]) -> dict | None:
    """The decoded arrays cached at ``path``, or None when there is none or it cannot be read
    whole (a truncated or corrupt file is removed, so the folder is decoded and cached again
    instead of failing every later run)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            return {k: z[k] for k in keys}
    except Exception:  # zipfile, pickle and numpy each raise their own types for bad bytes
        path.unlink(missing_ok=True)
        return None


def _atomic_savez(path: Path, arrays: dict) -> None:
    """Write an .npz through a temporary file so a crash never leaves a truncated cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:
        return  # an unwritable cache only costs speed
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


