"""A user's own photos, end to end: a folder of mixed sizes and formats trains without
--image-size, and every later command on the model (or on files exported from it) finds the
same data, split as the run split it, with nothing downloaded, quietly."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgel2.data import (
    DataRecord,
    carve,
    data_record,
    download_cifar10,
    load_dataset,
    load_model_data,
    summary_lines,
)
from edgel2.errors import DataError

PHOTO_CLASSES = {"astronaut": "astronaut", "cat": "chelsea", "coffee": "coffee"}
ANSI_ESCAPE = "\x1b["
# lines native libraries print that a user has no use for (edgel2.backend.NATIVE_NOISE)
LIBRARY_NOISE = re.compile(r"tensorflow|oneDNN|cpu_feature_guard|XNNPACK|absl::|NodeDef",
                           re.IGNORECASE)


def write_photos(folder: Path, per_class: int, seed: int = 0) -> Path:
    """Seeded crops (40-120 px a side, any aspect) of one scikit-image photo per class,
    alternately JPEG and PNG, in ``folder/<class>/``: a folder as a user has one."""
    skimage_data = pytest.importorskip("skimage.data")
    rng = np.random.default_rng(seed)
    for name, photo in PHOTO_CLASSES.items():
        image = getattr(skimage_data, photo)()
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = min(image.shape[:2])
            crop = int(rng.integers(side // 3, side + 1))
            top, left = (int(rng.integers(0, n - crop + 1)) for n in image.shape[:2])
            size = tuple(int(v) for v in rng.integers(40, 121, 2))
            picture = Image.fromarray(image[top:top + crop, left:left + crop]).resize(size)
            picture.save(folder / name / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    return folder


@pytest.fixture
def photos(tmp_path) -> Path:
    return write_photos(tmp_path / "photos", per_class=10)


# --- the data: mixed sizes, a summary, a record --------------------------------------------

def test_a_folder_of_mixed_sizes_is_resized_to_the_size_asked_for_and_refused_without_one(
        photos, tmp_path):
    ds = load_dataset(photos, mixed_size=24, cache_dir=tmp_path / "cache")
    assert ds.x_train.shape[1:] == (24, 24, 3) and ds.x_test.shape[1:] == (24, 24, 3)
    seen = ds.extra["images_seen"]
    assert seen["resized"] == 30 and seen["formats"] == {"JPEG": 15, "PNG": 15}
    with pytest.raises(DataError, match=r"images differ in size .* pass `image_size` N"):
        load_dataset(photos, cache_dir=tmp_path / "cache")


def test_the_summary_names_classes_splits_sizes_resizing_and_imbalance(photos, tmp_path):
    for extra in sorted((photos / "cat").iterdir())[:6]:
        extra.unlink()  # cat: 4 images against 10
    ds = load_dataset(photos, mixed_size=16, test_split=0.25, cache_dir=tmp_path / "cache")
    lines = summary_lines(ds, "the default for images of mixed sizes")
    assert lines[0] == f"data: photos, 3 classes, 19 train / 5 test images ({photos})"
    assert lines[1].split() == ["class", "train", "test"]
    assert lines[3].split() == ["cat", "3", "1"]
    assert re.fullmatch(r"  images: \d+ sizes from \d+x\d+ to \d+x\d+ \(JPEG 12, PNG 12\); 24 "
                        r"resized to 16x16 \(the default for images of mixed sizes\)", lines[5])
    assert lines[6:] == ["warning: class 'cat' has 3 training images, 2.7x fewer than "
                         "'astronaut' (8)"]


def test_a_val_folder_beside_train_and_test_is_the_validation_split(tiny_folder, tmp_path):
    from conftest import write_images

    for name in ("ant", "bee", "cat"):
        write_images(tiny_folder / "val" / name, 2, seed=20)
    ds = load_dataset(tiny_folder, cache_dir=tmp_path / "cache")
    assert len(ds.y_val) == 6 and len(ds.y_test) == 6 and len(ds.y_train) == 12
    with pytest.raises(DataError, match="has a val/ folder of its own"):
        carve(ds, val_split=0.2)


def test_a_held_out_class_that_training_never_saw_is_refused(tiny_folder, tmp_path):
    from conftest import write_images

    write_images(tiny_folder / "test" / "wasp", 2)
    with pytest.raises(DataError, match=r"class 'wasp' has held-out images but no training images"):
        load_dataset(tiny_folder, cache_dir=tmp_path / "cache")


def test_a_keras_model_remembers_its_run_data_and_split(tmp_path, tiny_folder):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({
        "name": "bugs", "data": {"source": str(tiny_folder), "name": "data"},
        "config": {"test_split": 0.2, "val_split": 0.25, "subset": None, "seed": 3}}))
    record = data_record(run / "model.keras")
    assert record == DataRecord(str(tiny_folder), "data", test_split=0.2, val_split=0.25,
                                seed=3, recorded_in=str(run / "config.json"))
    ds = load_model_data(run / "model.keras", (8, 8))
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (9, 3, 6)


def test_an_exported_file_remembers_its_data_through_its_metadata(tmp_path, tiny_folder):
    from conftest import make_tiny_onnx, tiny_metadata

    record = DataRecord(str(tiny_folder), "bugs", val_split=0.25)
    model = make_tiny_onnx(tmp_path / "m.onnx", {**tiny_metadata(), "data": record.as_metadata()})
    assert data_record(model) == DataRecord(str(tiny_folder), "bugs", val_split=0.25,
                                            recorded_in="m.onnx's metadata")


def test_a_file_without_metadata_record_finds_its_run_through_the_export_report(
        tmp_path, tiny_folder):
    from conftest import make_tiny_onnx

    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data": {"source": str(tiny_folder)},
                                                 "config": {}}))
    (run / "export" / "export_report.json").write_text(json.dumps({"model": "../model.keras"}))
    model = make_tiny_onnx(run / "export" / "model-int8.onnx")
    assert data_record(model).source == str(tiny_folder)


def test_recorded_data_that_is_gone_is_one_line_naming_data(tmp_path):
    from conftest import make_tiny_onnx, tiny_metadata

    gone = DataRecord(str(tmp_path / "moved-away"), "photos")
    model = make_tiny_onnx(tmp_path / "m.onnx", {**tiny_metadata(), "data": gone.as_metadata()})
    with pytest.raises(DataError, match=r"the data m.onnx was trained on is gone: .*moved-away "
                                        r"\(recorded in m.onnx's metadata\); pass `data` PATH"):
        load_model_data(model, (8, 8))


def test_a_model_with_no_record_falls_back_to_edgel2_data(tmp_path, tiny_folder, monkeypatch):
    from conftest import make_tiny_onnx

    monkeypatch.setenv("EDGEL2_DATA", str(tiny_folder))
    ds = load_model_data(make_tiny_onnx(tmp_path / "m.onnx"), (8, 8))
    assert ds.source == str(tiny_folder.resolve())


# --- the CIFAR-10 download says why it failed, never on stdout ------------------------------

@pytest.fixture
def http_404():
    """A loopback HTTP server that answers 404 to everything; yields its URL."""
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404, "Not Found")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
    server.shutdown()


def test_a_failed_download_names_the_http_status_and_writes_nothing_to_stdout(
        http_404, tmp_path, capfd):
    with pytest.raises(DataError, match=r"could not download CIFAR-10: http://127.0.0.1:\d+/"
                                        r"cifar-10-python.tar.gz answered HTTP 404 Not Found; "
                                        r"pass `data` PATH"):
        download_cifar10(tmp_path / "cache", url=http_404)
    out, err = capfd.readouterr()
    assert out == "" and "downloading CIFAR-10" in err
    assert not list((tmp_path / "cache").iterdir())  # nothing half-written


def test_a_download_with_no_network_says_so(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match=r"could not download CIFAR-10 \(no network\? "
                                        r"Connection refused\)"):
        download_cifar10(tmp_path / "cache", url=f"http://127.0.0.1:{port}/x.tar.gz")


# --- the walk a new user takes, through the real command line -------------------------------

def edgel2(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """``edgel2 ARGS`` as a user runs it, its output piped (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "edgel2", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_quiet_success(result: subprocess.CompletedProcess) -> None:
    """Exit 0, no download, no escape codes and no native library's chatter in a pipe."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "download" not in output.lower(), output
    assert ANSI_ESCAPE not in output, output
    assert not LIBRARY_NOISE.search(output), LIBRARY_NOISE.search(output).group(0)


@pytest.mark.slow
def test_own_photos_fine_tune_eval_export_benchmark_and_serve_without_data_or_downloads(
        tmp_path):
    """The path a new user takes, as they type it: the data is named once, at training time.
    EDGEL2_DATA is unset and any download would fail (no route to a proxy), so every later
    command must find the photos through the run."""
    from test_serve import Server

    photos = write_photos(tmp_path / "photos", per_class=12)
    env = {k: v for k, v in os.environ.items() if k != "EDGEL2_DATA"}
    env.update(EDGEL2_CACHE=str(tmp_path / "cache"), HTTPS_PROXY="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9")
    run = tmp_path / "runs" / "photos"

    trained = edgel2("train", "--data", photos, "--pretrained", "--epochs", "2", "--out", run,
                     env=env)
    assert_quiet_success(trained)
    assert "data: photos, 3 classes, 33 train / 3 test images" in trained.stdout
    assert "36 resized to 32x32 (the pretrained model's input" in trained.stdout
    assert json.loads((run / "config.json").read_text())["name"] == "photos"

    evaluated = edgel2("eval", run / "model.keras", env=env)
    assert_quiet_success(evaluated)
    assert "(3 test images of photos, from " in evaluated.stdout

    exported = edgel2("export", run / "model.keras", "--precision", "int8", env=env)
    assert_quiet_success(exported)
    int8 = run / "export" / "photos-int8.onnx"
    from edgel2.runtime import read_metadata

    metadata = read_metadata(int8)
    assert metadata["name"] == "photos" and metadata["data"]["source"] == str(photos)
    # 2 images a fit: far too few, so the file keeps plain softmax and says why
    assert (metadata["temperature"], metadata["unsmooth"]) == (1.0, 0.0)
    assert metadata["calibration"]["refused"].startswith("fitted on 3 images, fewer than")
    assert "not calibrated (every file keeps plain softmax): fitted on 3 images" in exported.stdout

    file_eval = edgel2("eval", int8, env=env)
    assert_quiet_success(file_eval)
    assert "(3 test images of photos" in file_eval.stdout

    before = sorted(p.name for p in (run / "export").iterdir())
    benchmarked = edgel2("benchmark", run / "export", "--seconds", "0.1", "--batch-sizes", "1",
                         "--format", "onnx", env=env)
    assert_quiet_success(benchmarked)
    assert re.search(r"ONNX Runtime  int8 .* ok", benchmarked.stdout)
    assert re.search(r"ONNX Runtime  fp32 .* skipped: no such file", benchmarked.stdout)
    # measured what was there: nothing exported on the side
    assert sorted(p.name for p in (run / "export").iterdir()) == sorted(
        before + ["benchmark.json", "benchmark.png"])

    server = Server(model=int8, env=env)
    try:
        status, body = server.json("GET", "/v2/models/photos-int8")
        assert status == 200 and body["parameters"]["class_names"] == sorted(PHOTO_CLASSES)
        assert b"<title>edgel2: photos-int8</title>" in server.get("/")[2]
    finally:
        assert server.stop() == 0


# --- the knobs people expect: --patience, augmentation for photos --------------------------

@pytest.mark.slow
def test_patience_stops_a_run_that_no_longer_improves_and_a_resume_knows_it(tiny_folder,
                                                                            tmp_path):
    """With a learning rate too small to change anything, the validation top-1 stays where
    epoch 1 left it: --patience 2 stops after epoch 3 of 6, best.keras is epoch 1, and
    --resume says the run is finished."""
    from edgel2.checkpoint import checkpoint_state
    from edgel2.config import TrainConfig
    from edgel2.errors import TrainingError
    from edgel2.train import train

    config = TrainConfig(width=2, epochs=6, batch_size=4, lr=1e-12, val_split=0.25,
                         patience=2, data=str(tiny_folder))
    result = train(config, tmp_path / "run", verbose=0)
    assert [r["epoch"] for r in result.history] == [1, 2, 3] and result.stopped_early
    assert checkpoint_state(tmp_path / "run" / "best.keras")["epoch"] == 1
    assert checkpoint_state(tmp_path / "run" / "last.keras")["epoch"] == 3
    with pytest.raises(TrainingError, match="already finished: it stopped early after epoch 3"):
        train(config, resume=tmp_path / "run", verbose=0)


def test_patience_without_a_validation_split_is_refused_and_leaves_no_run_folder(tiny_folder,
                                                                                 tmp_path):
    from edgel2.config import TrainConfig
    from edgel2.errors import OptionError
    from edgel2.train import train

    with pytest.raises(OptionError, match="needs a validation split"):
        train(TrainConfig(width=2, epochs=2, patience=1, data=str(tiny_folder)),
              tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()


def test_fine_tuning_adds_colour_jitter_and_zoom_and_from_scratch_does_not():
    from edgel2.config import TrainConfig

    tuned, scratch = TrainConfig.finetune(), TrainConfig()
    assert (tuned.color_jitter, tuned.crop_scale) == (0.2, 0.6)
    assert (scratch.color_jitter, scratch.crop_scale) == (0.0, 1.0)
    assert TrainConfig.finetune(color_jitter=0.0).color_jitter == 0.0  # asked for: kept


def test_zoom_and_jitter_leave_images_alone_when_off_and_stay_in_range_when_on():
    from edgel2.augment import color_jitter, random_zoom

    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(random_zoom(images, 0, 1.0)), images)
    np.testing.assert_array_equal(np.asarray(color_jitter(images, 0, 0.0)), images)
    zoomed = np.asarray(random_zoom(images, 0, 0.25))
    jittered = np.asarray(color_jitter(images, 0, 0.5))
    assert zoomed.dtype == jittered.dtype == np.uint8
    assert not np.array_equal(zoomed, images) and not np.array_equal(jittered, images)
    # a zoomed image only repeats its own pixels: every output pixel is one of the input's
    for out, src in zip(zoomed, images):
        assert {tuple(p) for p in out.reshape(-1, 3)} <= {tuple(p) for p in src.reshape(-1, 3)}


# --- infer --save, names, older spellings --------------------------------------------------

def test_infer_save_writes_a_labelled_copy_of_each_image_keeping_the_folders_apart(
        tiny_onnx, tmp_path):
    from click.testing import CliRunner
    from conftest import write_images

    from edgel2.cli import cli

    write_images(tmp_path / "in" / "a", 2, size=(8, 8))
    write_images(tmp_path / "in" / "b", 1, size=(12, 8), fmt="JPEG")
    (tmp_path / "in" / "b" / "broken.png").write_bytes(b"not an image")
    result = CliRunner().invoke(cli, ["infer", str(tmp_path / "in"), "--model", str(tiny_onnx),
                                      "--save", str(tmp_path / "seen")])
    assert result.exit_code == 3  # the broken file; the others are classified and drawn
    written = sorted(p.relative_to(tmp_path / "seen").as_posix()
                     for p in (tmp_path / "seen").rglob("*") if p.is_file())
    assert written == ["a/000.png", "a/001.png", "b/000.jpeg"]
    with Image.open(tmp_path / "seen" / "a" / "000.png") as image:
        assert image.size == (256, 256)  # 8x8 drawn 32x, so the label is readable
    assert "edgel2: 3 annotated copies in" in result.stderr


def test_infer_save_into_a_place_that_cannot_be_a_folder_is_one_line_before_any_work(
        tiny_onnx, tmp_path):
    from click.testing import CliRunner

    from edgel2.cli import cli

    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(cli, ["infer", str(tmp_path), "--model", str(tiny_onnx),
                                      "--save", str(tmp_path / "file" / "seen")])
    assert result.exit_code == 1
    assert result.stderr.startswith("edgel2: error: cannot create the folder for annotated "
                                    "copies")


def test_a_served_model_is_named_by_its_run_and_precision_and_serve_name_overrides(tmp_path):
    from conftest import make_tiny_onnx, tiny_metadata

    from edgel2.runtime import Classifier

    named = make_tiny_onnx(tmp_path / "model-int8.onnx",
                           {**tiny_metadata(), "name": "bugs", "quantization": "int8"})
    assert Classifier(named).name == "bugs-int8"
    assert Classifier(make_tiny_onnx(tmp_path / "older.onnx")).name == "older"
    pytest.importorskip("starlette")
    from test_serve import Server

    server = Server("--name", "bugs-v2", model=named)
    try:
        assert server.get("/v2/models/bugs-v2")[0] == 200
        assert server.get("/v2/models/bugs-int8")[0] == 404
    finally:
        assert server.stop() == 0
    # a name from a file name is shown as text, never as markup
    odd = make_tiny_onnx(tmp_path / "<i>x.onnx")
    server = Server(model=odd)
    try:
        assert server.get("/v2/models/%3Ci%3Ex")[0] == 200
        page = server.get("/")[2].decode()
        assert "<title>edgel2: &lt;i&gt;x</title>" in page and "<i>x" not in page
    finally:
        assert server.stop() == 0


def test_a_name_that_cannot_name_files_and_urls_is_one_line_and_exit_2(tmp_path):
    from click.testing import CliRunner

    from edgel2.cli import cli

    result = CliRunner().invoke(cli, ["train", "--name", "my photos", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.startswith("edgel2: error: Invalid value for '--name': name 'my "
                                    "photos' may hold only letters")


@pytest.mark.parametrize("old, new", [(["--output", "r.json"], ["--out", "r.json"]),
                                      (["--format=json"], ["--out-format=json"]),
                                      (["--precision", "f32"], ["--compute-dtype", "fp32"])])
def test_older_spellings_of_infer_options_still_work_with_a_note(old, new, tiny_onnx, tmp_path,
                                                                  monkeypatch):
    from click.testing import CliRunner
    from conftest import write_images

    from edgel2.cli import cli

    write_images(tmp_path / "in", 1)
    monkeypatch.chdir(tmp_path)
    runs = [CliRunner().invoke(cli, ["infer", "in", "--model", str(tiny_onnx), *args])
            for args in (old, new)]
    assert [r.exit_code for r in runs] == [0, 0]
    assert runs[0].stdout == runs[1].stdout
    name = old[0].split("=")[0]
    assert f"edgel2: note: infer {name} is now {new[0].split('=')[0]}" in runs[0].stderr
