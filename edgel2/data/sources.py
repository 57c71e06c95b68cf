"""What a data path is, and loading it: an image folder, CIFAR-10's batches, or by default
``$EDGEL2_DATA``, a checkout's CIFAR-10-JPEG, else CIFAR-10 downloaded."""
from __future__ import annotations

import os
from pathlib import Path

from edgel2.data.cifar import _load_cifar_batches, download_cifar10
from edgel2.data.dataset import CHECKOUT_CIFAR10, DATA_ENV, DEFAULT_TEST_SPLIT, Dataset
from edgel2.data.folders import _load_image_folder
from edgel2.errors import DataError


def load_dataset(path: str | os.PathLike | None = None, *, test_split: float = DEFAULT_TEST_SPLIT,
                 image_size: int | None = None, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None,
                 mixed_size: int | None = None) -> Dataset:
    """Load a data source (see the module docstring for what ``path`` may be).

    Args:
        path: An image folder (``train/<class>/`` and ``test/<class>/``, or bare
            ``<class>/`` folders), a ``cifar-10-batches-py/`` folder, or None for
            :func:`default_cifar10`.
        test_split: The test fraction of a folder of bare class subfolders.
        image_size: Resize every image to a square of this side. Without it, images keep their
            size when they all have the same one.
        seed: Seeds the split of bare class subfolders.
        cache_dir: Where decoded folders are cached; None for ``$EDGEL2_CACHE``.
        mixed_size: The side a folder of mixed sizes is resized to (a photo folder always has
            mixed sizes); None refuses such a folder.

    Returns:
        The :class:`Dataset`.

    Raises:
        DataError: With a one-line reason, for anything unusable.

    Examples:
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

    Examples:
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

    Examples:
        >>> ds = load_dataset_for("data/digits", (32, 32))   # doctest: +SKIP
        >>> ds.image_shape                                    # doctest: +SKIP
        (32, 32, 3)
    """
    height, width = size
    if image_size is None and height == width:
        image_size = height
    return load_dataset(path, test_split=test_split, image_size=image_size, seed=seed)


