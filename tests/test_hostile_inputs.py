"""Hostile images, paths and file names: whatever a file or a folder does, it is that entry's
own error (one short reason), every other file is still classified, nothing hangs, and the
output is always written, in every format."""
from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgel2.cli import cli
from edgel2.data import load_dataset
from edgel2.errors import DataError, ImageError
from edgel2.runtime import Classifier, load_image
from edgel2.runtime.io import expand_paths, printable

RNG = np.random.default_rng(0)
STRIP_OFFSETS, ASCII = 273, 2


def _tiff(mode: str) -> bytes:
    if mode == "F":
        image = Image.fromarray(RNG.random((8, 8), dtype=np.float32))
    elif mode == "I;16":
        image = Image.fromarray(RNG.integers(0, 65535, (8, 8), dtype=np.uint16))
    else:
        image = Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "TIFF")
    return buffer.getvalue()


def _retype_tag(tiff: bytes, tag: int, new_type: int) -> bytes:
    """The TIFF with one IFD entry's type field changed: Pillow then hands a str where its
    decoder wants an int, and raises TypeError inside ImageFile.load."""
    data = bytearray(tiff)
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if struct.unpack_from("<H", data, entry)[0] == tag:
            struct.pack_into("<H", data, entry + 2, new_type)
            return bytes(data)
    raise AssertionError(f"tag {tag} not in the TIFF")


HOSTILE_TIFFS = {f"{mode.replace(';', '')}.tif": _retype_tag(_tiff(mode), STRIP_OFFSETS, ASCII)
                 for mode in ("F", "I;16", "LAB")}


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return path


def _infer(*args: str):
    return CliRunner().invoke(cli, ["infer", *args])


@pytest.mark.parametrize("name", list(HOSTILE_TIFFS))
def test_a_decoder_that_raises_anything_gives_that_file_an_image_error(name):
    with pytest.raises(Exception):  # noqa: B017 - the fixture is hostile to Pillow itself, any error
        Image.open(io.BytesIO(HOSTILE_TIFFS[name])).load()
    with pytest.raises(ImageError, match=r"^cannot decode: "):
        load_image(HOSTILE_TIFFS[name], (8, 8))


def test_hostile_tiffs_fail_alone_and_the_other_files_are_classified(tiny_onnx, tmp_path):
    folder = tmp_path / "images"
    good = _png(folder / "good.png")
    for name, content in HOSTILE_TIFFS.items():
        (folder / name).write_bytes(content)
    result = _infer(str(folder), "--model", str(tiny_onnx), "--out-format", "json")
    assert result.exit_code == 3 and "3 of 4 images failed" in result.stderr
    records = {Path(r["path"]).name: r for r in json.loads(result.stdout)}
    assert records["good.png"]["error"] is None
    assert records["good.png"]["predictions"][0]["label"] == \
        Classifier(tiny_onnx).predict(good)[0][0][0]
    for name in HOSTILE_TIFFS:
        assert records[name]["error"].startswith("cannot decode: ")


def test_a_hostile_tiff_in_training_data_stops_with_one_line_naming_it(tiny_folder, tmp_path):
    bad = tiny_folder / "train" / "cat" / "bad.tif"
    bad.write_bytes(HOSTILE_TIFFS["F.tif"])
    with pytest.raises(DataError, match=rf"^cannot decode image {bad}: cannot decode: "):
        load_dataset(tiny_folder, cache_dir=tmp_path / "cache")


def test_a_fifo_in_training_data_stops_with_one_line_instead_of_blocking(tiny_folder, tmp_path):
    fifo = tiny_folder / "train" / "ant" / "x.png"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=rf"^cannot read {fifo}: not a regular file \(a FIFO\)$"):
        load_dataset(tiny_folder, cache_dir=tmp_path / "cache")


def test_a_fifo_or_device_named_like_an_image_is_refused_without_blocking(tiny_onnx, tmp_path):
    folder = tmp_path / "images"
    _png(folder / "good.png")
    os.mkfifo(folder / "x.png")  # opening it for reading would wait for a writer forever
    (folder / "dev.png").symlink_to("/dev/zero")
    script = ["-m", "edgel2", "infer", str(folder), str(folder / "x.png"), "--model",
              str(tiny_onnx), "--out-format", "csv"]
    proc = subprocess.run([sys.executable, *script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    rows = {(Path(r["path"]).name, r["error"]) for r in csv.DictReader(io.StringIO(proc.stdout))}
    assert rows == {("good.png", ""), ("x.png", "not a regular file (a FIFO)"),
                    ("dev.png", "not a regular file (a character device)")}
    assert proc.stdout.count("x.png") == 2  # once from the folder walk, once as given


def test_a_symlink_loop_is_walked_once_and_every_real_file_listed_once(tmp_path):
    root = tmp_path / "photos"
    a, b = _png(root / "a.png"), _png(root / "sub" / "b.png", 1)
    (root / "sub" / "up").symlink_to(root)            # a loop back to the top
    (root / "sub" / "self").symlink_to(root / "sub")  # a loop onto itself
    (root / "alias.png").symlink_to(a)                # a second name for a.png
    expected = [str(a), str(b)]
    assert expand_paths([str(root)]) == expected
    assert expand_paths([f"{root}/**/*.png"]) == expected
    assert expand_paths([f"{root}/*/*.png"]) == [str(b)]


def test_a_walk_reports_broken_links_and_unreadable_folders(tiny_onnx, tmp_path, monkeypatch):
    root = tmp_path / "photos"
    good = _png(root / "good.png")
    (root / "gone.png").symlink_to(root / "deleted.png")
    locked = root / "locked"
    _png(locked / "hidden-from-us.png")
    real_scandir = os.scandir

    def scandir(path="."):  # root cannot be denied a folder: simulate what a user would get
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    entries = expand_paths([str(root)])
    assert [getattr(e, "source", e) for e in entries] == [str(root / "gone.png"), str(good),
                                                          str(locked)]
    assert entries[2].error == "cannot read folder: Permission denied"
    result = _infer(str(root), "--model", str(tiny_onnx), "--out-format", "csv")
    assert result.exit_code == 3 and "2 of 3 images failed" in result.stderr
    errors = {Path(r["path"]).name: r["error"] for r in csv.DictReader(io.StringIO(result.stdout))}
    assert errors == {"gone.png": "broken symbolic link", "good.png": "",
                      "locked": "cannot read folder: Permission denied"}


@pytest.mark.parametrize("fmt", ["csv", "json", "table"])
def test_a_file_name_that_is_not_utf8_is_written_escaped_in_every_format(fmt, tiny_onnx, tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9.png"
    with open(raw, "wb") as f:
        Image.new("RGB", (8, 8), (200, 10, 10)).save(f, "PNG")
    out = tmp_path / f"out.{fmt}"
    result = _infer(os.fsdecode(raw), "--model", str(tiny_onnx), "--out-format", fmt, "--out", str(out))
    assert result.exit_code == 0, result.output
    text = out.read_bytes().decode("utf-8")  # valid UTF-8, or this raises
    assert printable(os.fsdecode(raw)) == f"{tmp_path}/caf\\xe9.png"
    if fmt == "json":
        assert json.loads(text)[0]["path"] == f"{tmp_path}/caf\\xe9.png"
    else:
        assert f"{tmp_path}/caf\\xe9.png" in text


def test_top_k_is_clamped_to_the_class_count(tiny_onnx, tmp_path):
    image = _png(tmp_path / "x.png")
    result = _infer(str(image), "--model", str(tiny_onnx), "--out-format", "csv", "--top-k", "3000000")
    assert result.exit_code == 0
    header, row = result.stdout.splitlines()
    assert header == "path,label1,probability1,label2,probability2,label3,probability3,unknown,unknown_score,error"
    assert len(row.split(",")) == 10


def test_non_finite_logits_are_that_images_error_and_json_stays_strict(tiny_onnx, tmp_path):
    _png(tmp_path / "images" / "colour.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "black.png")  # log(0): -inf logits
    result = _infer(str(tmp_path / "images"), "--model", str(tiny_onnx), "--out-format", "json")
    assert result.exit_code == 3

    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON output")

    records = {Path(r["path"]).name: r for r in json.loads(result.stdout, parse_constant=refuse)}
    assert records["black.png"] == {"path": str(tmp_path / "images" / "black.png"),
                                    "predictions": None, "unknown": None, "unknown_score": None,
                                    "error": "the model produced non-finite logits"}
    assert records["colour.png"]["error"] is None


# --- images that would be silently wrong, or decode before they are measured ----------------

def _float_tiff(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.float32), "F").save(buffer, "TIFF")
    return buffer.getvalue()


def test_a_float_tiff_in_0_to_1_is_scaled_not_read_as_black():
    values = np.full((4, 4), 0.5, np.float32)
    assert load_image(_float_tiff(values)).tolist() == np.full((4, 4, 3), 128).tolist()
    assert load_image(_float_tiff(values * 255)).tolist() == np.full((4, 4, 3), 128).tolist()


@pytest.mark.parametrize("values, reason", [
    (np.full((4, 4), -3.0), "a floating-point image with values in -3..-3; edgel2 reads 0..1 or 0..255"),
    (np.full((4, 4), 1000.0), "a floating-point image with values in 1000..1000; edgel2 reads 0..1 or 0..255"),
    (np.full((4, 4), np.nan), "a floating-point image with NaN or infinite values"),
])
def test_a_float_image_outside_0_to_255_is_refused_not_guessed(values, reason):
    with pytest.raises(ImageError) as error:
        load_image(_float_tiff(values))
    assert str(error.value) == reason


def _ico_holding(payload: bytes) -> bytes:
    """An ICO whose one entry claims 256x256 (0 in its size bytes) and holds ``payload``."""
    return (struct.pack("<HHH", 0, 1, 1)
            + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(payload), 22) + payload)


def test_an_ico_hiding_a_huge_png_is_refused_from_its_headers_before_decoding():
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, "PNG")  # 81 Mpx, a few kB
    ico = _ico_holding(buffer.getvalue())
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(ImageError, match=r"^image too large \(9000x9000\): refused"):
        load_image(ico, (8, 8))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * 2**20  # Pillow alone would decode 81 Mpx while opening it


def test_formats_edgel2_does_not_read_are_refused_by_name():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "TGA")
    with pytest.raises(ImageError) as error:
        load_image(buffer.getvalue())
    assert str(error.value) == ("not an image edgel2 reads (JPEG, PNG, BMP, GIF, WebP, TIFF, "
                                "PPM/PGM/PBM or ICO)")


def test_a_file_name_with_a_newline_cannot_forge_a_row_of_the_table(tiny_onnx, tmp_path):
    image = _png(tmp_path / "a\nforged  cat 99.0%.png")
    result = _infer(str(image), "--model", str(tiny_onnx))
    assert result.exit_code == 0
    assert result.stdout.count("\n") == 2  # the header and one row
    assert "a\\nforged  cat 99.0%.png" in result.stdout


@pytest.mark.parametrize("raw, reason", [
    (b"caf\xe9", "class folder name is not UTF-8 text: "),
    (b"cat\nforged", "class folder name holds a control character: "),
])
def test_a_class_folder_name_that_is_not_text_stops_training_data_in_one_line(
        tiny_folder, tmp_path, raw, reason):
    folder = os.path.join(os.fsencode(tiny_folder / "train"), raw)
    os.makedirs(folder)
    Image.new("RGB", (8, 8)).save(os.path.join(os.fsdecode(folder), "x.png"))
    with pytest.raises(DataError, match=f"^{reason}"):
        load_dataset(tiny_folder, cache_dir=tmp_path / "cache")
