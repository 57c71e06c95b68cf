"""Output is never lost or destructive: a path that is not a regular file is written through,
never replaced; a destination that cannot take the results is refused before the work; a
write that fails at the end keeps the results on stdout; a killed export leaves nothing
behind that the next one does not clean; a failed run leaves no empty folders."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgel2.cli import cli
from edgel2.errors import OutputError
from edgel2.utils import (
    SCRATCH_PREFIX,
    atomic_path,
    check_output,
    deliver_text,
    remove_leftovers,
    scratch_space,
)


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "x.png"
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(path)
    return path


def _infer(tiny_onnx, image, *args):
    return CliRunner().invoke(cli, ["infer", str(image), "--model", str(tiny_onnx), *args])


def test_a_device_is_written_through_and_stays_a_device(tiny_onnx, image):
    result = _infer(tiny_onnx, image, "--out", os.devnull)
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_a_fifo_is_written_through_not_replaced(tmp_path):
    fifo = tmp_path / "results"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    with atomic_path(fifo) as tmp:
        tmp.write_text("path,label\n")
    assert reader.communicate(timeout=60)[0] == b"path,label\n"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_symbolic_link_keeps_pointing_at_the_file_it_names(tmp_path):
    target, link = tmp_path / "real.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target.name)
    with atomic_path(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and target.read_text() == "new"


def test_dev_stdout_adds_to_what_was_printed_instead_of_overwriting_it(tiny_onnx, image, tmp_path):
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        subprocess.run([sys.executable, "-c", "print('before', flush=True)"], stdout=f, check=True)
        subprocess.run([sys.executable, "-m", "edgel2", "infer", str(image), "--model",
                        str(tiny_onnx), "--out", "/dev/stdout", "--out-format", "csv"],
                       stdout=f, stderr=subprocess.DEVNULL, check=True)
    lines = out.read_text().splitlines()
    assert lines[0] == "before" and lines[1].startswith("path,label1,probability1")
    assert lines[2].startswith(f"{image},")


@pytest.mark.parametrize("make, message", [
    (lambda d: d, "is a folder; give a file name"),
    (lambda d: _file(d / "f") / "r.json", "is not a folder"),
    (lambda d: Path("/proc/version"), "cannot write in /proc"),
])
def test_a_destination_that_cannot_take_the_results_is_refused_before_the_work(
        tiny_onnx, image, tmp_path, make, message):
    result = _infer(tiny_onnx, image, "--out", str(make(tmp_path)))
    assert result.exit_code == 4
    assert result.stderr.startswith("edgel2: error: --out ") and message in result.stderr
    assert "classifying" not in result.stderr and "img/s" not in result.stderr  # no work done


def _file(path: Path) -> Path:
    path.write_text("a file")
    return path


def test_a_write_that_fails_at_the_end_keeps_the_results_on_stdout(tiny_onnx, image):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    result = _infer(tiny_onnx, image, "--out", "/dev/full", "--out-format", "json")
    assert result.exit_code == 4
    assert json.loads(result.stdout)[0]["path"] == str(image)  # the results, not lost
    assert result.stderr.splitlines()[-1] == ("edgel2: error: cannot write --out /dev/full: No "
                                              "space left on device; the results went to stdout "
                                              "instead")


def test_deliver_text_writes_atomically_when_it_can(tmp_path):
    deliver_text("a,b\n", tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text() == "a,b\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]


def test_a_folder_taken_meanwhile_keeps_the_finished_work_under_a_fallback_name(tmp_path):
    output, kept = tmp_path / "results", tmp_path / "results-kept"
    check_output(output, folder=True)
    with pytest.raises(OutputError, match=f"the results are in {kept} instead"):
        with atomic_path(output, fallback=kept) as tmp:
            tmp.mkdir()
            (tmp / "part-0.json").write_text("{}")
            output.mkdir()  # another job got there first
            (output / "theirs.json").write_text("{}")
    assert (kept / "part-0.json").exists() and (output / "theirs.json").exists()


def test_an_existing_folder_is_refused_as_a_new_output_folder(tmp_path):
    with pytest.raises(OutputError, match="exists already; give a new folder"):
        check_output(tmp_path, folder=True)


def test_scratch_space_holds_every_temporary_file_and_goes_away(tmp_path):
    with scratch_space(tmp_path) as scratch:
        assert scratch == tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}"
        assert Path(tempfile.mkdtemp()).parent == scratch
        assert os.environ["TMPDIR"] == str(scratch)  # child processes too
    assert list(tmp_path.iterdir()) == []
    assert tempfile.gettempdir() != str(scratch)


def test_leftovers_of_a_killed_process_are_removed_and_a_running_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftovers = [tmp_path / f"{SCRATCH_PREFIX}{dead.pid}", tmp_path / f".m-fp32.tmp{dead.pid}.tflite"]
    leftovers[0].mkdir()
    (leftovers[0] / "saved_model").mkdir()
    leftovers[1].write_bytes(b"half")
    alive = [tmp_path / f".m-int8.tmp{os.getpid()}.onnx", tmp_path / "m-int8.onnx"]
    for path in alive:
        path.write_bytes(b"x")
    assert sorted(remove_leftovers(tmp_path)) == sorted(leftovers)
    assert sorted(tmp_path.iterdir()) == sorted(alive)


def test_a_child_process_dies_with_its_parent():
    # the parent starts a child that asks to die with it, prints its pid, and is killed
    parent = subprocess.Popen([sys.executable, "-c", (
        "import os, subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import os, sys, time\\n"
        "from edgel2.utils import die_with_parent\\n"
        "die_with_parent(int(sys.argv[1])); print(os.getpid(), flush=True); time.sleep(600)', "
        "str(os.getpid())], stdout=subprocess.PIPE)\n"
        "print(child.stdout.readline().decode().strip(), flush=True)\n"
        "child.wait()\n")], stdout=subprocess.PIPE)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 60
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel delivers the signal; nothing to wait on but the pid
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie is gone for good
    except FileNotFoundError:
        return False


def test_a_failed_training_run_leaves_no_empty_folders(tmp_path):
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    (tmp_path / "photos" / "dog").mkdir()
    result = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "photos"), "--epochs",
                                      "1", "--out", str(tmp_path / "runs" / "train" / "a")])
    assert result.exit_code == 1 and "has no images" in result.stderr
    assert not (tmp_path / "runs").exists()
