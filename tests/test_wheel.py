"""`pip install edgel2` as an app developer gets it: a wheel built from a clean copy of the
source, installed into a fresh virtual environment with only the base dependencies, runs
`edgel2 infer` with the model it ships, from any directory; the commands that need an extra
say which, in one line. (pip reuses its cache, so this takes seconds after the first run.)"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgel2.runtime import Classifier
from edgel2.runtime.shipped import shipped_model

ROOT = Path(__file__).resolve().parent.parent
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".data", "runs", "build", "dist", "*.egg-info",
                                    "__pycache__", ".pytest_cache", ".whl", ".site", "gpu-out",
                                    "node_modules")


def _run(*command, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600,
                          **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv holding the built wheel and the base dependencies."""
    work = tmp_path_factory.mktemp("wheel")
    source = shutil.copytree(ROOT, work / "source", ignore=NOT_SOURCE)  # no stale build/ files
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", source, "-w", work / "dist")
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (work / "dist").glob("edgel2-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {"edgel2/models/resnet18-int8.onnx", "edgel2/models/resnet18-int8.tflite",
            "edgel2/models/resnet20/resnet20-int8.onnx",
            "edgel2/models/resnet20/resnet20-int8.tflite",
            "edgel2/models/README.md", "edgel2/runtime/classifier.py"} <= names
    assert not any(n.startswith(("tests/", "models/", "scripts/")) for n in names)
    venv.create(work / "venv", with_pip=True)
    bin_dir = work / "venv" / "bin"
    install = _run(bin_dir / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel)
    assert install.returncode == 0, install.stderr[-2000:]
    return bin_dir


def _elsewhere(tmp_path: Path) -> dict:
    """Run from a directory with no edgel2 source in sight, and no path leading back to it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {"cwd": tmp_path, "env": env}


def test_the_wheel_holds_the_base_install_only(installed):
    listed = _run(installed / "python", "-m", "pip", "list", "--format", "json")
    packages = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"edgel2", "numpy", "pillow", "onnxruntime", "click"} <= packages
    assert not packages & {"tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "ai-edge-litert"}


def test_infer_without_model_uses_the_shipped_model_from_any_directory(installed, tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image)
    result = _run(installed / "edgel2", "infer", "photo.png", "--out-format", "json", "--top-k", "3",
                  **_elsewhere(tmp_path))
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    # the base install has no OpenVINO: its answer is ONNX Runtime's
    expected = Classifier(shipped_model(), engine="onnxruntime").predict(image, top_k=3)[0]
    assert [p["label"] for p in record["predictions"]] == [label for label, _ in expected]
    assert [p["probability"] for p in record["predictions"]] == \
        pytest.approx([p for _, p in expected], abs=1e-5)
    assert result.stderr.rstrip().endswith(
        "resnet18-int8.onnx (int8) on onnxruntime: CPUExecutionProvider")


@pytest.mark.parametrize("command, message", [
    (["eval", "model.keras"], 'keras is not installed: pip install "edgel2[train]"'),
    (["train", "--epochs", "1"], 'keras is not installed: pip install "edgel2[train]"'),
    (["export", "model.keras"], 'keras is not installed: pip install "edgel2[train]"'),
    (["serve"], 'prometheus_client is not installed: pip install "edgel2[serve]"'),
    (["infer", "--ray", "photo.png", "--out", "out"], 'ray is not installed: pip install "edgel2[ray]"'),
    (["infer", "photo.png", "--model", str(shipped_model("resnet18-int8.tflite"))],
     'LiteRT, which runs .tflite files, is not installed: pip install "edgel2[litert]" '
     "(the ai-edge-litert package)"),
])
def test_a_command_that_needs_an_extra_names_it_in_one_line(installed, tmp_path, command, message):
    Image.new("RGB", (32, 32)).save(tmp_path / "photo.png")
    (tmp_path / "model.keras").write_bytes(b"")
    result = _run(installed / "edgel2", *command, **_elsewhere(tmp_path))
    assert (result.returncode, result.stderr) == (1, f"edgel2: error: {message}\n")
