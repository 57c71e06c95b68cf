"""edgel2.data: every source gives uint8 NHWC arrays, labels and class names; bad data gets
one clear DataError."""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
from conftest import write_images
from PIL import Image

from edgel2.data import CIFAR10_CLASSES, balanced_subset, load_dataset
from edgel2.errors import DataError


def test_image_folder_gives_uint8_nhwc_and_sorted_class_names(tiny_folder, tmp_path):
    ds = load_dataset(tiny_folder, cache_dir=tmp_path / "cache")
    assert ds.class_names == ["ant", "bee", "cat"]
    assert ds.x_train.shape == (12, 8, 8, 3) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (6, 8, 8, 3)
    assert np.bincount(ds.y_train).tolist() == [4, 4, 4]
    expected = np.asarray(Image.open(tiny_folder / "train" / "ant" / "000.png"))
    np.testing.assert_array_equal(ds.x_train[0], expected)


def test_decoded_folder_is_cached_and_a_changed_file_is_decoded_again(tiny_folder, tmp_path):
    cache = tmp_path / "cache"
    first = load_dataset(tiny_folder, cache_dir=cache)
    assert len(list((cache / "datasets").glob("*.npz"))) == 1
    again = load_dataset(tiny_folder, cache_dir=cache)
    assert again.fingerprint == first.fingerprint
    np.testing.assert_array_equal(again.x_train, first.x_train)

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tiny_folder / "train" / "ant" / "000.png")
    changed = load_dataset(tiny_folder, cache_dir=cache)
    assert changed.fingerprint != first.fingerprint
    assert changed.x_train[0].max() == 0


def test_a_truncated_cache_is_decoded_again_instead_of_failing_every_run(tiny_folder, tmp_path):
    cache = tmp_path / "cache"
    first = load_dataset(tiny_folder, cache_dir=cache)
    (cached,) = (cache / "datasets").glob("*.npz")
    cached.write_bytes(cached.read_bytes()[:200])  # a kill or a full disk mid-write elsewhere
    again = load_dataset(tiny_folder, cache_dir=cache)
    np.testing.assert_array_equal(again.x_train, first.x_train)
    np.testing.assert_array_equal(again.y_test, first.y_test)
    with np.load(cached) as z:  # and cached again, whole
        np.testing.assert_array_equal(z["x_train"], first.x_train)


def test_folder_of_bare_class_folders_is_split_per_class(tmp_path):
    for c in range(2):
        write_images(tmp_path / "flat" / f"class{c}", 10, seed=c)
    ds = load_dataset(tmp_path / "flat", test_split=0.2, cache_dir=tmp_path / "cache")
    assert np.bincount(ds.y_test).tolist() == [2, 2]
    assert np.bincount(ds.y_train).tolist() == [8, 8]


def test_cifar10_python_batches_are_read_as_nhwc(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    planar = rng.integers(0, 256, (4, 3072), dtype=np.uint8)  # CHW-flattened rows
    for name in ["data_batch_1", "data_batch_2", "test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": planar, b"labels": [0, 1, 2, 3]}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"a", b"b", b"c", b"d"]}, f)
    ds = load_dataset(tmp_path)
    assert ds.name == "CIFAR-10"
    assert ds.x_train.shape == (8, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    assert ds.class_names == ["a", "b", "c", "d"]
    # pixel (row 0, col 1) of image 0 in channel 2 is element 2*1024 + 1 of the planar row
    assert ds.x_train[0, 0, 1, 2] == planar[0, 2 * 1024 + 1]


@pytest.mark.parametrize("classes, fmt, name", [
    (CIFAR10_CLASSES, "JPEG", "CIFAR-10-JPEG"),   # the shared pack, unpacked
    (CIFAR10_CLASSES, "PNG", "pets"),             # lossless copies: not the JPEG pack
    (["cat", "dog"], "JPEG", "pets"),
])
def test_a_folder_is_named_for_reports_by_its_classes_and_format(tmp_path, classes, fmt, name):
    for c, cls in enumerate(classes):
        write_images(tmp_path / "pets" / "train" / cls, 1, seed=c, fmt=fmt)
        write_images(tmp_path / "pets" / "test" / cls, 1, seed=50 + c, fmt=fmt)
    assert load_dataset(tmp_path / "pets", cache_dir=tmp_path / "cache").name == name


def test_data_env_variable_is_used_when_no_path_is_given(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEL2_DATA", str(tiny_folder))
    assert load_dataset(cache_dir=tmp_path / "cache").class_names == ["ant", "bee", "cat"]


def test_offline_download_fails_with_one_line_naming_the_reason_and_data(monkeypatch, tmp_path):
    import socket
    import urllib.error
    import urllib.request

    import edgel2.data.sources

    def offline(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.delenv("EDGEL2_DATA", raising=False)
    monkeypatch.setenv("EDGEL2_CACHE", str(tmp_path))
    monkeypatch.setattr(edgel2.data.sources, "CHECKOUT_CIFAR10", tmp_path / "no-checkout-copy")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match=r"could not download CIFAR-10 \(no network\? Temporary "
                                        r"failure in name resolution\); pass `data` PATH") as e:
        load_dataset()
    assert "\n" not in str(e.value)


def test_missing_path_is_reported(tmp_path):
    with pytest.raises(DataError, match="data path does not exist: .*nowhere"):
        load_dataset(tmp_path / "nowhere")


def test_unknown_layout_is_reported(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown data layout"):
        load_dataset(tmp_path / "notes.txt")


def test_class_folder_without_images_is_named(tiny_folder, tmp_path):
    shutil.rmtree(tiny_folder / "train" / "bee")
    (tiny_folder / "train" / "bee").mkdir()
    with pytest.raises(DataError, match=r"class folder has no images: .*train/bee"):
        load_dataset(tiny_folder, cache_dir=tmp_path / "cache")


def test_mixed_sizes_need_image_size(tiny_folder, tmp_path):
    write_images(tiny_folder / "train" / "cat", 1, size=(12, 10), seed=5, fmt="JPEG")
    with pytest.raises(DataError, match=r"images differ in size .*`image_size`"):
        load_dataset(tiny_folder, cache_dir=tmp_path / "cache")
    ds = load_dataset(tiny_folder, image_size=16, cache_dir=tmp_path / "cache")
    assert ds.x_train.shape == (13, 16, 16, 3)


def test_unreadable_image_is_named(tiny_folder, tmp_path):
    (tiny_folder / "test" / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"cannot decode image .*test/cat/broken\.png"):
        load_dataset(tiny_folder, cache_dir=tmp_path / "cache")


def test_balanced_subset_takes_equal_counts_per_class_reproducibly():
    y = np.repeat(np.arange(10), 50)
    x = np.arange(500)
    xs, ys = balanced_subset(x, y, 105, seed=3)
    assert np.bincount(ys).tolist() == [11, 11, 11, 11, 11, 10, 10, 10, 10, 10]
    np.testing.assert_array_equal(y[xs], ys)
    np.testing.assert_array_equal(balanced_subset(x, y, 105, seed=3)[0], xs)


def test_shared_cifar10_jpeg_has_the_standard_split(cifar):
    assert cifar.name == "CIFAR-10-JPEG"
    assert cifar.x_train.shape == (50000, 32, 32, 3) and cifar.x_test.shape == (10000, 32, 32, 3)
    assert cifar.class_names[:3] == ["airplane", "automobile", "bird"]
    assert np.bincount(cifar.y_train).tolist() == [5000] * 10
    assert np.bincount(cifar.y_test).tolist() == [1000] * 10
