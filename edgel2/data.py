"""Data sources -> uint8 NHWC arrays, integer labels and class names.

A source is detected from what the path is:

1. an image folder, ``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` (``val`` is accepted
   for ``test``); a folder holding only class subfolders is split with ``test_split``;
2. the original CIFAR-10 python batches (``cifar-10-batches-py/``);
3. nothing: ``$EDGEL2_DATA`` if set, else ``keras.datasets.cifar10.load_data()``.

Decoded image folders are cached as ``.npz`` under ``$EDGEL2_CACHE`` (default
``~/.cache/edgel2``), keyed by a hash of every file's path and bytes, so a changed folder is
decoded again and an unchanged one loads in a fraction of a second.

This module needs numpy and pillow only (Keras is imported for the download path alone).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgel2.errors import DataError
from edgel2.runtime.preprocess import IMAGE_SUFFIXES, ImageError, load_image, open_regular_file

DATA_ENV = "EDGEL2_DATA"
CACHE_ENV = "EDGEL2_CACHE"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
TEST_SPLIT_NAMES = ("test", "val")


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


def load_dataset(path: str | os.PathLike | None = None, *, test_split: float = 0.1,
                 image_size: int | None = None, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a data source (see the module docstring for what ``path`` may be).

    ``image_size`` resizes every image to a square of that side (needed when the images
    differ in size). ``test_split`` and ``seed`` split a folder of bare class subfolders.
    Raises :class:`DataError` with a one-line reason for anything unusable.

    Example:
        >>> ds = load_dataset(os.environ["EDGEL2_DATA"])  # doctest: +SKIP
    """
    if path is None or str(path) == "":
        env = os.environ.get(DATA_ENV)
        return load_dataset(env, test_split=test_split, image_size=image_size, seed=seed,
                            cache_dir=cache_dir) if env else _load_keras_cifar10()
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"data path does not exist: {root}")
    if root.is_dir() and (root / "data_batch_1").is_file() and (root / "test_batch").is_file():
        return _load_cifar_batches(root)
    if root.is_dir() and (root / "cifar-10-batches-py").is_dir():
        return _load_cifar_batches(root / "cifar-10-batches-py")
    if root.is_dir():
        return _load_image_folder(root, test_split=test_split, image_size=image_size, seed=seed,
                                  cache_dir=cache_dir)
    raise DataError(f"unknown data layout at {root}: expected an image folder "
                    "(train/<class>/, test/<class>/ or <class>/) or cifar-10-batches-py/")


def load_dataset_for(path: str | os.PathLike | None, size: tuple[int, int], *,
                     test_split: float = 0.1, image_size: int | None = None) -> Dataset:
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
    return load_dataset(path, test_split=test_split, image_size=image_size)


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
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


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
                       cache_dir: str | os.PathLike | None) -> Dataset:
    test_dir = next((root / n for n in TEST_SPLIT_NAMES if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        splits = {"train": _list_split(root / "train"), "test": _list_split(test_dir)}
    elif (root / "train").is_dir() or test_dir is not None:
        raise DataError(f"{root} has a train/ or test/ folder but not both")
    else:
        if not 0.0 < test_split < 1.0:
            raise DataError(f"--test-split must be between 0 and 1, got {test_split}")
        files, labels = _list_split(root)
        splits = {"all": (files, labels)}
    class_names = sorted({c for _, labels in splits.values() for c in labels})

    all_files = [f for files, _ in splits.values() for f in files]
    blobs = _read_all(all_files)
    digest = hashlib.sha256(f"size={image_size}".encode())
    for f, b in zip(all_files, blobs):
        digest.update(str(f.relative_to(root)).encode() + b"\0" + hashlib.sha256(b).digest())
    fingerprint = digest.hexdigest()[:16]

    cache = _cache_path(cache_dir, fingerprint)
    arrays = _read_cache(cache, [f"{a}_{name}" for name in splits for a in "xy"])
    if arrays is None:
        pixels = _decode_all(all_files, blobs, image_size)
        arrays, start = {}, 0
        for name, (files, labels) in splits.items():
            arrays[f"x_{name}"] = pixels[start:start + len(files)]
            arrays[f"y_{name}"] = np.array([class_names.index(c) for c in labels], np.int32)
            start += len(files)
        _atomic_savez(cache, arrays)

    if "x_all" in arrays:
        arrays = split_stratified(arrays["x_all"], arrays["y_all"], test_split, seed)
    return Dataset(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                   class_names, source=str(root), name=_folder_name(root, class_names, all_files),
                   fingerprint=fingerprint,
                   extra={"test_split": test_split} if "train" not in splits else {})


def _folder_name(root: Path, class_names: list[str], files: list[Path]) -> str:
    """CIFAR-10-JPEG for CIFAR-10's classes in JPEG files (edgel2's shared pack, unpacked):
    accuracy on re-encoded images is not CIFAR-10 accuracy. Else the folder's name."""
    if class_names == CIFAR10_CLASSES and all(f.suffix.lower() in (".jpg", ".jpeg") for f in files):
        return "CIFAR-10-JPEG"
    return root.name


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


def _decode_all(files: list[Path], blobs: list[bytes], image_size: int | None) -> np.ndarray:
    size = None if image_size is None else (image_size, image_size)

    def decode(item: tuple[Path, bytes]) -> np.ndarray:
        # The runtime's policy (EXIF, alpha over white, bilinear): train as we infer.
        f, b = item
        try:
            return load_image(b, size)
        except ImageError as e:
            raise DataError(f"cannot decode image {f}: {e}") from None

    items = list(zip(files, blobs))
    chunks = [items[i:i + 2048] for i in range(0, len(items), 2048)]  # Pillow frees the GIL
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        images = [im for chunk in pool.map(lambda c: [decode(i) for i in c], chunks) for im in chunk]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        first = images[0].shape
        odd = next(i for i, im in enumerate(images) if im.shape != first)
        raise DataError(f"images differ in size ({files[0]} is {first[1]}x{first[0]}, "
                        f"{files[odd]} is {images[odd].shape[1]}x{images[odd].shape[0]}); "
                        "pass --image-size N to resize them all")
    return np.stack(images)


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


def _cache_path(cache_dir: str | os.PathLike | None, fingerprint: str) -> Path:
    base = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgel2")
    return base / "datasets" / f"{fingerprint}.npz"


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
    return Dataset(x_train, y_train, x_test, y_test, names, source=str(root), name="CIFAR-10",
                   fingerprint=digest.hexdigest()[:16])


def _load_keras_cifar10() -> Dataset:
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as e:  # urllib raises a zoo of types when offline
        raise DataError(f"could not download CIFAR-10 ({type(e).__name__}); pass --data PATH "
                        f"or set ${DATA_ENV} to an image folder or cifar-10-batches-py/") from None
    return Dataset(x_train, y_train.reshape(-1).astype(np.int32), x_test,
                   y_test.reshape(-1).astype(np.int32), list(CIFAR10_CLASSES),
                   source="keras.datasets.cifar10", name="CIFAR-10", fingerprint="keras-cifar10")
