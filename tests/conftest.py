"""Shared fixtures. Real data comes from $EDGEL2_DATA (scripts/test.sh unpacks the shared
CIFAR-10-JPEG pack there); everything else is made in the test, seeded."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The unpacked CIFAR-10-JPEG image folder. CI must provide it; elsewhere tests skip."""
    path = os.environ.get("EDGEL2_DATA")
    if not path or not Path(path).is_dir():
        if os.environ.get("CI"):
            pytest.fail("EDGEL2_DATA is not set to the unpacked CIFAR-10-JPEG folder in CI")
        pytest.skip("EDGEL2_DATA is not set (run the tests through scripts/test.sh)")
    return Path(path)


@pytest.fixture(scope="session")
def cifar(data_dir):
    from edgel2.data import load_dataset

    return load_dataset(data_dir)


def write_images(folder: Path, count: int, size=(8, 8), seed: int = 0, fmt: str = "PNG") -> None:
    """``count`` seeded random RGB images into ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.{fmt.lower()}", fmt)


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """train/ and test/ with 3 classes of random 8x8 PNGs (4 and 2 per class)."""
    for c, name in enumerate(["cat", "ant", "bee"]):
        write_images(tmp_path / "data" / "train" / name, 4, seed=c)
        write_images(tmp_path / "data" / "test" / name, 2, seed=10 + c)
    return tmp_path / "data"
