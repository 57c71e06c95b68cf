"""CIFAR-10's own python batches, and downloading them (MD5-checked) when no data is given
and no local copy exists."""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from edgel2.data.dataset import CIFAR10_CLASSES, CIFAR10_MD5, CIFAR10_URL, DATA_ENV, Dataset
from edgel2.data.folders import _describe_sizes
from edgel2.errors import DataError, first_line
from edgel2.utils import cache_folder


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

    Examples:
        >>> download_cifar10().name      # doctest: +SKIP
        'cifar-10-batches-py'
    """
    base = cache_folder(cache_dir)
    target = base / "cifar-10-batches-py"
    if (target / "test_batch").is_file():
        return target
    advice = f"pass `data` PATH or set ${DATA_ENV} to an image folder or cifar-10-batches-py/"
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
