"""Data sources -> uint8 NHWC arrays, integer labels and class names.

A source is detected from what the path is:

1. an image folder, ``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` (``val`` is accepted
   for ``test``; with ``train``, ``val`` and ``test`` all there, ``val`` is a validation
   split); a folder holding only class subfolders is split with ``test_split``;
2. the original CIFAR-10 python batches (``cifar-10-batches-py/``);
3. nothing: CIFAR-10 (:func:`default_cifar10`): ``$EDGEL2_DATA`` if set, else the
   CIFAR-10-JPEG copy ``scripts/setup.sh`` unpacks into a source checkout's ``.data/``, else
   the original CIFAR-10, downloaded once into the cache.

A model remembers its data: :func:`data_record` reads what its run recorded (``config.json``
beside a ``.keras`` file, the ``data`` entry of an exported file's metadata, or the run an
``export_report.json`` beside it names), and :func:`load_model_data` loads it again, split
the way the run split it, for every later command on that model.

Decoded image folders are cached as ``.npz`` under ``$EDGEL2_CACHE`` (default
``~/.cache/edgel2``), keyed by a hash of every file's path and bytes and the size decoded to,
so a changed folder is decoded again and an unchanged one loads in a fraction of a second.

Numpy and pillow only (the standard library downloads CIFAR-10).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgel2.errors import DataError, ImageError, first_line
from edgel2.runtime.preprocess import (
    IMAGE_SUFFIXES,
    load_image_and_size,
    open_regular_file,
    upright_size,
)
from edgel2.utils import cache_folder, run_config

DATA_ENV = "EDGEL2_DATA"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
TEST_SPLIT_NAMES = ("test", "val")
VALIDATION_SPLIT_NAME = "val"   # a validation split of the folder's own, when test/ is there too
DEFAULT_TEST_SPLIT = 0.1        # test fraction of a folder of bare class subfolders
# The original CIFAR-10 (python batches), downloaded when no data is given and no local copy
# exists; its published MD5 is checked before the archive is unpacked.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
# The CIFAR-10-JPEG copy scripts/setup.sh unpacks into a source checkout (.complete marks it whole)
CHECKOUT_CIFAR10 = Path(__file__).resolve().parents[1] / ".data" / "cifar10-jpeg"
# A class with this many times fewer training images than the largest is worth a warning.
IMBALANCE_RATIO = 2.0


@dataclass
class Dataset:
    """A labelled train/test split held in memory.

    Example:
        >>> x = np.zeros((4, 32, 32, 3), np.uint8)
        >>> ds = Dataset(x, np.arange(4) % 2, x[:2], np.arange(2), ["cat", "dog"])
        >>> ds.image_shape, ds.num_classes, ds.name
        ((32, 32, 3), 2, 'unnamed')
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    source: str = ""
    name: str = ""      # what accuracy is "on" in reports: CIFAR-10, CIFAR-10-JPEG, a folder name
    fingerprint: str = ""
    extra: dict = field(default_factory=dict)
    # A validation split held out of the training images (edgel2 train --val-split), if any
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    def __post_init__(self):
        # Every report names the data its accuracy is on, also for a Dataset built by hand.
        self.name = self.name or "unnamed"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_dataset(path: str | os.PathLike | None = None, *, test_split: float = DEFAULT_TEST_SPLIT,
                 image_size: int | None = None, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None,
                 mixed_size: int | None = None) -> Dataset:
    """Load a data source (see the module docstring for what ``path`` may be).

    ``image_size`` resizes every image to a square of that side. Without it, images keep
    their size when they all have the same one; a folder of mixed sizes is resized to
    ``mixed_size`` (a photo folder always has mixed sizes), or refused when that is None.
    ``test_split`` and ``seed`` split a folder of bare class subfolders. Raises
    :class:`DataError` with a one-line reason for anything unusable.

    Example:
        >>> ds = load_dataset(os.environ["EDGEL2_DATA"])  # doctest: +SKIP
    """
    if path is None or str(path) == "":
        return default_cifar10(test_split=test_split, image_size=image_size, seed=seed,
                               cache_dir=cache_dir)
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"data path does not exist: {root}")
    if root.is_dir() and (root / "data_batch_1").is_file() and (root / "test_batch").is_file():
        return _load_cifar_batches(root)
    if root.is_dir() and (root / "cifar-10-batches-py").is_dir():
        return _load_cifar_batches(root / "cifar-10-batches-py")
    if root.is_dir():
        return _load_image_folder(root, test_split=test_split, image_size=image_size, seed=seed,
                                  cache_dir=cache_dir, mixed_size=mixed_size)
    raise DataError(f"unknown data layout at {root}: expected an image folder "
                    "(train/<class>/, test/<class>/ or <class>/) or cifar-10-batches-py/")


def default_cifar10(*, test_split: float = DEFAULT_TEST_SPLIT, image_size: int | None = None,
                    seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Dataset:
    """The data of a command given none, for a model with no record of its own:
    ``$EDGEL2_DATA``; else the CIFAR-10-JPEG copy in a source checkout's ``.data/`` (what
    ``scripts/setup.sh`` unpacks); else the original CIFAR-10, downloaded once into the cache
    (:func:`download_cifar10`).

    Example:
        >>> default_cifar10().name       # doctest: +SKIP
        'CIFAR-10-JPEG'
    """
    env = os.environ.get(DATA_ENV)
    local = CHECKOUT_CIFAR10 if (CHECKOUT_CIFAR10 / ".complete").is_file() else None
    if env or local:
        return load_dataset(env or local, test_split=test_split, image_size=image_size,
                            seed=seed, cache_dir=cache_dir)
    return _load_cifar_batches(download_cifar10(cache_dir))


def load_dataset_for(path: str | os.PathLike | None, size: tuple[int, int], *,
                     test_split: float = DEFAULT_TEST_SPLIT, image_size: int | None = None,
                     seed: int = 0) -> Dataset:
    """``path`` loaded for a model that takes square ``size`` (height, width) images: decoded
    straight to that size (e.g. 8x8 digits for a network fine-tuned at 32x32; images that
    already have it are not resampled), so a folder of large photos is never held at full
    size. An explicit ``image_size`` (the user's --image-size) wins.

    Example:
        >>> ds = load_dataset_for("data/digits", (32, 32))   # doctest: +SKIP
        >>> ds.image_shape                                    # doctest: +SKIP
        (32, 32, 3)
    """
    height, width = size
    if image_size is None and height == width:
        image_size = height
    return load_dataset(path, test_split=test_split, image_size=image_size, seed=seed)


# --- what a model remembers of its data ---------------------------------------------------

KERAS_CIFAR10_SOURCE = "keras.datasets.cifar10"  # what runs that downloaded CIFAR-10 recorded


@dataclass(frozen=True)
class DataRecord:
    """The data a model was trained on, as its run recorded it: where it is and how the run
    split it (the test fraction of a bare class folder, the validation fraction held out of
    the training images after ``subset``, and the seed of both).

    Example:
        >>> DataRecord("/data/photos", "photos", val_split=0.2).as_metadata()["val_split"]
        0.2
    """

    source: str
    name: str
    test_split: float = DEFAULT_TEST_SPLIT
    val_split: float = 0.0
    subset: int | None = None
    seed: int = 0
    recorded_in: str = ""   # the file that holds the record, for messages

    def as_metadata(self) -> dict:
        """The record as an exported file's ``data`` metadata entry."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "recorded_in"}

    @classmethod
    def from_run(cls, described: dict, recorded_in: str = "") -> DataRecord | None:
        """The record in a run's ``config.json`` (None when it has none)."""
        data, config = described.get("data"), described.get("config") or {}
        if not isinstance(data, dict) or not isinstance(data.get("source"), str) \
                or not data["source"]:
            return None
        return cls(data["source"], str(data.get("name") or Path(data["source"]).name),
                   **_split_fields(config), recorded_in=recorded_in)

    @classmethod
    def from_metadata(cls, entry, recorded_in: str = "") -> DataRecord | None:
        """The record in an exported file's ``data`` metadata entry (None when unusable)."""
        if not isinstance(entry, dict) or not isinstance(entry.get("source"), str) \
                or not entry["source"]:
            return None
        return cls(entry["source"], str(entry.get("name") or ""), **_split_fields(entry),
                   recorded_in=recorded_in)


def _split_fields(entry: dict) -> dict:
    """The split fields of a record, each only when it has the right type."""
    fields: dict = {}
    for key, kinds in (("test_split", (int, float)), ("val_split", (int, float)),
                       ("subset", (int,)), ("seed", (int,))):
        value = entry.get(key)
        if isinstance(value, kinds) and not isinstance(value, bool):
            fields[key] = value
    return fields


def data_record(model_path: str | os.PathLike) -> DataRecord | None:
    """What ``model_path`` remembers of its data: for a ``.keras`` file, its run's
    ``config.json``; for an exported file, the ``data`` entry of its metadata, else the run
    that the ``export_report.json`` beside it names. None when nothing is recorded (the
    shipped models, files from elsewhere).

    Example:
        >>> data_record("runs/train/photos/model.keras").source     # doctest: +SKIP
        '/home/me/photos'
    """
    path = Path(model_path)
    if path.suffix.lower() == ".keras":
        return _run_record(path)
    from edgel2.errors import ModelError
    from edgel2.runtime.modelfile import read_metadata

    try:
        record = DataRecord.from_metadata(read_metadata(path).get("data"), f"{path.name}'s metadata")
    except ModelError:
        record = None  # the command that opens the model says what is wrong with it
    if record is not None:
        return record
    report = path.parent / "export_report.json"
    try:
        stored = json.loads(report.read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(stored, str) or not stored:
        return None
    return _run_record(report.parent / stored)


def _run_record(model_path: Path) -> DataRecord | None:
    """The record in the ``config.json`` of the run ``model_path`` belongs to."""
    return DataRecord.from_run(run_config(model_path), str(model_path.parent / "config.json"))


def load_model_data(model_path: str | os.PathLike, size: tuple[int, int], *,
                    data: str | os.PathLike | None = None, test_split: float | None = None,
                    image_size: int | None = None) -> Dataset:
    """The labelled images to evaluate, export, calibrate or benchmark ``model_path`` on, at
    its input ``size`` (height, width): ``data`` when given; else the data its run recorded
    (:func:`data_record`), split as the run split it (its validation split too); else
    :func:`default_cifar10`. Recorded data that is no longer there is a :class:`DataError`
    naming ``--data``, never a silent fall-back to CIFAR-10.

    Example:
        >>> ds = load_model_data("runs/train/photos/model.keras", (32, 32))   # doctest: +SKIP
        >>> ds.name, ds.x_val is not None                                     # doctest: +SKIP
        ('photos', True)
    """
    record = None if data else data_record(model_path)
    if record is None or record.source == KERAS_CIFAR10_SOURCE:
        split = DEFAULT_TEST_SPLIT if test_split is None else test_split
        return load_dataset_for(data, size, test_split=split, image_size=image_size)
    if not Path(record.source).exists():
        raise DataError(f"the data {Path(model_path).name} was trained on is gone: "
                        f"{record.source} (recorded in {record.recorded_in}); pass --data PATH")
    ds = load_dataset_for(record.source, size, image_size=image_size, seed=record.seed,
                          test_split=record.test_split if test_split is None else test_split)
    return carve(ds, subset=record.subset, val_split=record.val_split, seed=record.seed)


def carve(ds: Dataset, *, subset: int | None = None, val_split: float = 0.0,
          seed: int = 0) -> Dataset:
    """``ds`` as a run trains on it (a new :class:`Dataset`; ``ds`` is left as it is): the
    class-balanced ``subset`` of the training images, then a seeded, class-balanced
    validation split of ``val_split`` held out of them (unless the data has its own).

    Example:
        >>> x = np.zeros((40, 4, 4, 3), np.uint8)
        >>> ds = Dataset(x, np.arange(40) % 2, x[:10], np.arange(10) % 2, ["a", "b"])
        >>> carved = carve(ds, subset=20, val_split=0.1)
        >>> len(carved.y_train), len(carved.y_val), len(ds.y_train)
        (18, 2, 40)
    """
    x_train, y_train, x_val, y_val = ds.x_train, ds.y_train, ds.x_val, ds.y_val
    if subset:
        x_train, y_train = balanced_subset(x_train, y_train, subset, seed)
    if val_split and x_val is not None:
        raise DataError(f"{ds.source or ds.name} has a {VALIDATION_SPLIT_NAME}/ folder of its "
                        "own: a validation split held out of the training images would be a "
                        "second one; leave --val-split unset")
    if val_split:
        parts = split_stratified(x_train, y_train, val_split, seed)
        x_train, y_train, x_val, y_val = (parts["x_train"], parts["y_train"],
                                          parts["x_test"], parts["y_test"])
    return dataclasses.replace(ds, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)


def summary_lines(ds: Dataset, resize_reason: str = "") -> list[str]:
    """A short summary of a data set for the start of a run: its classes with their images
    per split, the sizes seen and what was resized (``resize_reason`` says why), and a
    warning for each class with :data:`IMBALANCE_RATIO` times fewer training images than the
    largest.

    Example:
        >>> x = np.zeros((7, 4, 4, 3), np.uint8)
        >>> ds = Dataset(x[:6], np.array([0, 0, 0, 0, 1, 1]), x[:1], np.array([1]), ["ant", "bee"],
        ...              name="bugs")
        >>> print("\\n".join(summary_lines(ds)))
        data: bugs, 2 classes, 6 train / 1 test images
          class  train   test
          ant        4      0
          bee        2      1
        warning: class 'bee' has 2 training images, 2.0x fewer than 'ant' (4)
    """
    splits = [("train", ds.y_train)] + ([("val", ds.y_val)] if ds.y_val is not None else []) \
        + [("test", ds.y_test)]
    counts = {name: np.bincount(y, minlength=ds.num_classes) for name, y in splits}
    width = max(5, *(len(c) for c in ds.class_names))
    totals = " / ".join(f"{len(y):,} {name}" for name, y in splits)
    lines = [f"data: {ds.name}, {ds.num_classes} classes, {totals} images"
             + (f" ({ds.source})" if ds.source else "")]
    if ds.num_classes <= 20:  # CIFAR-100 and up: the per-class table would be the whole screen
        lines.append(f"  {'class':<{width}}" + "".join(f"{name:>7}" for name, _ in splits))
        for i, c in enumerate(ds.class_names):
            lines.append(f"  {c:<{width}}" + "".join(f"{counts[n][i]:>7,}" for n, _ in splits))
    seen = ds.extra.get("images_seen")
    if seen and seen.get("smallest"):
        small, large, (w, h) = seen["smallest"], seen["largest"], seen["size"]
        sizes = (f"all {small[0]}x{small[1]}" if seen["distinct"] == 1 else
                 f"{seen['distinct']} sizes from {small[0]}x{small[1]} to {large[0]}x{large[1]}")
        formats = ", ".join(f"{k} {v:,}" for k, v in seen["formats"].items())
        resized = (f"; {seen['resized']:,} resized to {w}x{h}" if seen["resized"] else
                   f"; trained at {w}x{h}")
        lines.append(f"  images: {sizes} ({formats}){resized}"
                     + (f" ({resize_reason})" if resize_reason and seen["resized"] else ""))
    train = counts["train"]
    largest = int(np.argmax(train))
    for i, c in enumerate(ds.class_names):
        if train[i] * IMBALANCE_RATIO <= train[largest]:
            ratio = f"{train[largest] / train[i]:.1f}x fewer" if train[i] else "none"
            lines.append(f"warning: class {c!r} has {train[i]:,} training images, {ratio} than "
                         f"{ds.class_names[largest]!r} ({train[largest]:,})")
    return lines


def balanced_subset(x: np.ndarray, y: np.ndarray, n: int, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced random subset of ``n`` examples (the first ``n % classes`` classes
    get one more), in shuffled order. Returns the inputs unchanged if ``n >= len(y)``.

    Example:
        >>> x, y = np.zeros((100, 2, 2, 3), np.uint8), np.repeat(np.arange(10), 10)
        >>> np.bincount(balanced_subset(x, y, 20)[1]).tolist()
        [2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    """
    if n >= len(y):
        return x, y
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    picked = []
    for i, c in enumerate(classes):
        want = n // len(classes) + (1 if i < n % len(classes) else 0)
        members = np.flatnonzero(y == c)
        picked.append(rng.choice(members, size=min(want, len(members)), replace=False))
    index = rng.permutation(np.concatenate(picked))
    return x[index], y[index]


def held_out_images(ds: Dataset, count: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Held-out images for checks: the whole test split (``count=None``) or a seeded,
    class-balanced subset of ``count``."""
    if count is None:
        return ds.x_test, ds.y_test
    return balanced_subset(ds.x_test, ds.y_test, count, seed)


# --- image folders ---------------------------------------------------------------------------

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
            raise DataError(f"--test-split must be between 0 and 1, got {test_split}")
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

    Example:
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
        # The runtime's policy (EXIF, alpha over white, bilinear): train as we infer.
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
                     "pass --image-size N to resize them all")


def split_stratified(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> dict:
    """A seeded, class-balanced split: ``fraction`` of each class (at least one image) as
    ``x_test``/``y_test``, the rest as ``x_train``/``y_train``, each in its original order.

    Example:
        >>> parts = split_stratified(np.arange(20), np.arange(20) % 2, 0.2, seed=0)
        >>> np.bincount(parts["y_test"]).tolist(), len(parts["y_train"])
        ([2, 2], 16)
    """
    rng = np.random.default_rng(seed)
    test = np.concatenate([
        rng.permutation(idx)[:max(1, round(len(idx) * fraction))]
        for idx in (np.flatnonzero(y == c) for c in np.unique(y))])
    is_test = np.zeros(len(y), bool)
    is_test[test] = True
    return {"x_train": x[~is_test], "y_train": y[~is_test], "x_test": x[is_test], "y_test": y[is_test]}


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


# --- CIFAR-10 python batches and the Keras download ---------------------------------------

def _load_cifar_batches(root: Path) -> Dataset:
    def read(name: str) -> dict:
        try:
            with open(root / name, "rb") as f:
                return pickle.load(f, encoding="bytes")
        except (OSError, pickle.UnpicklingError, EOFError) as e:
            raise DataError(f"cannot read CIFAR-10 batch {root / name}: {e}") from None

    def arrays(batches: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
        y = np.concatenate([b[b"labels"] for b in batches]).astype(np.int32)
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.uint8), y

    train_names = sorted(p.name for p in root.glob("data_batch_*"))
    x_train, y_train = arrays([read(n) for n in train_names])
    x_test, y_test = arrays([read("test_batch")])
    names = CIFAR10_CLASSES
    if (root / "batches.meta").is_file():
        names = [n.decode() for n in read("batches.meta")[b"label_names"]]
    digest = hashlib.sha256()
    for n in train_names + ["test_batch"]:
        digest.update((root / n).read_bytes())
    count = len(y_train) + len(y_test)
    seen = np.full((count, 2), 32, np.int32)
    return Dataset(x_train, y_train, x_test, y_test, names, source=str(root.resolve()),
                   name="CIFAR-10", fingerprint=digest.hexdigest()[:16],
                   extra={"images_seen": _describe_sizes(seen, (32, 32),
                                                         {"CIFAR-10 python batches": count})})


def download_cifar10(cache_dir: str | os.PathLike | None = None, url: str = CIFAR10_URL) -> Path:
    """The original CIFAR-10's ``cifar-10-batches-py/`` in the cache, downloaded (163 MB, its
    MD5 checked) and unpacked the first time. Progress goes to stderr, never stdout; a failed
    download is a :class:`DataError` that says why (no network, the HTTP status, a bad
    checksum) and leaves nothing half-written.

    Example:
        >>> download_cifar10().name      # doctest: +SKIP
        'cifar-10-batches-py'
    """
    base = cache_folder(cache_dir)
    target = base / "cifar-10-batches-py"
    if (target / "test_batch").is_file():
        return target
    advice = f"pass --data PATH or set ${DATA_ENV} to an image folder or cifar-10-batches-py/"
    print(f"edgel2: no data given: downloading CIFAR-10 from {url} into {base}", file=sys.stderr)
    try:
        base.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=base, prefix=".cifar10-") as scratch:
            archive = Path(scratch) / "cifar-10-python.tar.gz"
            md5 = hashlib.md5()
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as f:
                while chunk := response.read(1 << 20):
                    md5.update(chunk)
                    f.write(chunk)
            if url == CIFAR10_URL and md5.hexdigest() != CIFAR10_MD5:
                raise DataError(f"could not download CIFAR-10: the file from {url} has MD5 "
                                f"{md5.hexdigest()}, not {CIFAR10_MD5}; {advice}")
            with tarfile.open(archive) as tar:
                tar.extractall(scratch, filter="data")
            if not (Path(scratch) / "cifar-10-batches-py" / "test_batch").is_file():
                raise DataError(f"could not download CIFAR-10: {url} holds no "
                                f"cifar-10-batches-py/test_batch; {advice}")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(Path(scratch) / "cifar-10-batches-py", target)
    except urllib.error.HTTPError as e:
        raise DataError(f"could not download CIFAR-10: {url} answered HTTP {e.code} "
                        f"{e.reason}; {advice}") from None
    except urllib.error.URLError as e:
        reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror \
            else e.reason
        raise DataError(f"could not download CIFAR-10 (no network? {reason}); {advice}") from None
    except (OSError, tarfile.TarError, EOFError) as e:
        what = getattr(e, "strerror", None) or first_line(e)
        raise DataError(f"could not download CIFAR-10: {what}; {advice}") from None
    return target
