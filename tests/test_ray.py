"""``edgel2 infer --ray``: the runtime as a Ray Data job gives exactly ``edgel2 infer``'s
records, reports bad files per row, survives a killed worker, reads pyarrow filesystem URIs,
and leaves nothing half-written.

Everything runs on one local Ray instance (``ray.init(num_cpus=2)``, loopback only), started
once for the module. The images are 30 CIFAR-10-JPEG test files plus hostile ones made here.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
pq = pytest.importorskip("pyarrow.parquet")

from edgel2.cluster import ClassifyBatch, classify_on_ray  # noqa: E402
from edgel2.errors import EdgeL2Error  # noqa: E402
from edgel2.runtime import Classifier  # noqa: E402
from edgel2.runtime.io import expand_paths, render  # noqa: E402
from edgel2.runtime.shipped import shipped_model  # noqa: E402

pytestmark = pytest.mark.slow
BAD = {"empty.png": "empty file", "fifo.png": "not a regular file (a FIFO)",
       "notes.jpg": "not an image edgel2 reads (JPEG, PNG, BMP, GIF, WebP, TIFF, PPM/PGM/PBM or ICO)"}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(data_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in ("cat", "ship", "frog"):
        (folder / name).mkdir()
        for source in sorted((data_dir / "test" / name).glob("*.jpg"))[:10]:
            shutil.copy(source, folder / name / source.name)
    (folder / "empty.png").write_bytes(b"")
    os.mkfifo(folder / "fifo.png")
    (folder / "notes.jpg").write_text("not a picture")
    return folder


def infer_records(paths: list[str]) -> dict[str, dict]:
    """What ``edgel2 infer --format json`` writes for ``paths``, by path."""
    classifier = Classifier(shipped_model())
    files = expand_paths(paths)
    records = json.loads(render(list(classifier.predict_files(files, top_k=2)), "json", 2))
    return {r["path"]: r for r in records}


def parquet_records(folder: Path) -> dict[str, dict]:
    return {r["path"]: r for r in pq.read_table(folder).to_pylist()}


def test_ray_gives_exactly_the_records_of_edgel2_infer(local_ray, images, tmp_path):
    report = classify_on_ray([str(images)], tmp_path / "out", top_k=2)
    expected = infer_records([str(images)])
    assert len(expected) == 33
    assert parquet_records(tmp_path / "out") == expected
    assert (report.images, report.failed, report.output) == (33, 3, str(tmp_path / "out"))


def test_bad_files_are_rows_with_the_reason_infer_gives(local_ray, images, tmp_path):
    classify_on_ray([str(images)], tmp_path / "out")
    records = parquet_records(tmp_path / "out")
    assert {Path(p).name: r["error"] for p, r in records.items() if r["error"]} == BAD
    assert all(r["predictions"] is None for r in records.values() if r["error"])


def test_json_lines_hold_the_same_records(local_ray, images, tmp_path):
    classify_on_ray([str(images)], tmp_path / "out", output_format="jsonl", top_k=2)
    lines = [json.loads(line) for part in sorted(glob.glob(str(tmp_path / "out" / "*.json")))
             for line in Path(part).read_text().splitlines()]
    assert {r["path"]: r for r in lines} == infer_records([str(images)])


def test_a_filesystem_uri_is_listed_and_read_through_pyarrow(local_ray, images, tmp_path):
    report = classify_on_ray([f"file://{images}/cat"], tmp_path / "out", top_k=2)
    records = parquet_records(tmp_path / "out")
    expected = infer_records([str(images / "cat")])
    assert report.images == 10
    assert {p.removeprefix("file://"): r["predictions"] for p, r in records.items()} == \
        {p: r["predictions"] for p, r in expected.items()}


def test_the_job_finishes_when_a_worker_is_killed_mid_run(local_ray, images, tmp_path):
    """The first actor to get a batch kills its own process (SIGKILL, as the OOM killer
    would); Ray restarts the actor and runs the batch again."""
    marker = tmp_path / "killed-once"

    class DiesOnce(ClassifyBatch):
        def __call__(self, batch):
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__call__(batch)

    report = classify_on_ray([str(images)], tmp_path / "out", classify=DiesOnce, top_k=2)
    assert marker.exists()
    assert report.images == 33
    assert parquet_records(tmp_path / "out") == infer_records([str(images)])


def test_a_failed_job_leaves_no_output_folder(local_ray, images, tmp_path):
    class Broken(ClassifyBatch):
        def __call__(self, batch):
            raise RuntimeError("broken on purpose")

    with pytest.raises(Exception, match="broken on purpose"):
        classify_on_ray([str(images)], tmp_path / "out", classify=Broken)
    assert os.listdir(tmp_path) == []


def test_an_actor_larger_than_every_node_is_refused_instead_of_waiting(local_ray, images, tmp_path):
    with pytest.raises(EdgeL2Error, match="`cpus_per_actor` 3: no node of this Ray cluster "
                                          "has more than 2 CPUs"):
        classify_on_ray([str(images)], tmp_path / "out", cpus_per_actor=3)
    assert os.listdir(tmp_path) == []


def test_an_existing_output_folder_is_refused(local_ray, images, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(EdgeL2Error, match="exists already"):
        classify_on_ray([str(images)], tmp_path / "out")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgel2", "infer", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_runs_a_local_ray_and_exits_3_when_some_images_failed(images, tmp_path):
    result = cli("--ray", str(images), "--out", "out", "--out-format", "jsonl", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    summary = [line for line in result.stderr.splitlines() if line.startswith("edgel2:")]
    assert summary[0].startswith("edgel2: 33 images in ")
    assert summary[0].endswith("on Ray, 1 actor x 2 CPUs; jsonl in out")  # 33 files: 1 block
    assert summary[1] == "edgel2: 3 of 33 images failed"
    assert [p.suffix for p in (tmp_path / "out").iterdir()] == [".json"]


@pytest.mark.parametrize("args, message", [
    (["--ray", "x.png"], "edgel2: error: --ray writes a folder of part files: pass --out FOLDER"),
    (["--ray", "x.png", "--out-format", "csv", "--out", "o"],
     "edgel2: error: with --ray, --out-format is one of parquet, jsonl"),
    (["x.png", "--out-format", "parquet"],
     "edgel2: error: --out-format parquet is written by --ray; without it use one of table, json, csv"),
    (["x.png", "--actors", "2"], "edgel2: error: --actors and --cpus-per-actor go with --ray"),
])
def test_ray_options_that_do_not_fit_are_one_line_and_exit_2(args, message, tmp_path):
    result = cli(*args, cwd=tmp_path)
    assert (result.returncode, result.stderr.strip()) == (2, message)
