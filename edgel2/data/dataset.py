"""A data set in memory (:class:`Dataset`: uint8 NHWC arrays, labels, class names) and
what is done to one: carving a subset or a validation split, class-balanced samples, a
summary for people."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgel2.errors import DataError

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
CHECKOUT_CIFAR10 = Path(__file__).resolve().parents[2] / ".data" / "cifar10-jpeg"
# A class with this many times fewer training images than the largest is worth a warning.
IMBALANCE_RATIO = 2.0


@dataclass
class Dataset:
    """A labelled train/test split held in memory.

    Examples:
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


def carve(ds: Dataset, *, subset: int | None = None, val_split: float = 0.0,
          seed: int = 0) -> Dataset:
    """``ds`` as a run trains on it (a new :class:`Dataset`; ``ds`` is left as it is): the
    class-balanced ``subset`` of the training images, then a seeded, class-balanced
    validation split of ``val_split`` held out of them (unless the data has its own).

    Examples:
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
                        "second one; leave `val_split` unset")
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

    Examples:
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

    Examples:
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


def split_stratified(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> dict:
    """A seeded, class-balanced split: ``fraction`` of each class (at least one image) as
    ``x_test``/``y_test``, the rest as ``x_train``/``y_train``, each in its original order.

    Examples:
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


