"""scripts/gpu_train.sh, the one prepared script for the lent GPU machine, run here with a tiny
setting: device minutes are too few to find its bugs there."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_gpu_script_trains_evaluates_ablates_and_leaves_what_the_device_tool_returns(
        data_dir, tmp_path):
    # The GPU machine has no TensorFlow: block it, as there.
    blocker = tmp_path / "blocked"
    (blocker / "tensorflow").mkdir(parents=True)
    (blocker / "tensorflow" / "__init__.py").write_text("raise ImportError('no tensorflow')\n")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "EDGEL2_DATA": str(data_dir),
           "PYTHONPATH": str(blocker), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "EPOCHS": "2", "WIDTH": "2", "SUBSET": "256", "BATCH": "64",
           "CUTOUT": "8", "EMA": "0.9",  # the recipe knobs to try next for 93 %, on JAX too
           "ABLATION_EPOCHS": "1", "ABLATION_SEEDS": "0", "BUDGET_S": "100000"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_train.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    returned = sorted(p.name for p in out.iterdir())
    assert len(returned) <= 8  # the device tool brings back at most 8 files
    assert {"summary.txt", "device.txt", "results.tar.gz", "model.keras.part-aa",
            "ablation.log", "ablation.json"} <= set(returned)
    summary = (out / "summary.txt").read_text()
    assert "epochs 2; first epoch" in summary and "CIFAR-10-JPEG test top-1" in summary
    with tarfile.open(out / "results.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["config.json", "curves.png", "eval.json",
                                          "metrics.csv", "train.log"]
        config = json.load(tar.extractfile("config.json"))
    assert config["backend"] == "jax"
    assert (config["config"]["cutout"], config["config"]["ema"]) == (8, 0.9)
    ablation = json.loads((out / "ablation.json").read_text())["rows"]
    assert list(ablation) == ["no L2", "weight L2 only", "feature L2 only",
                              "weight + feature L2", "L1 instead", "dropout 0.3 instead"]

    # the parts rebuild the checkpoint, as the README says
    model = tmp_path / "model.keras"
    model.write_bytes(b"".join(p.read_bytes() for p in sorted(out.glob("model.keras.part-*"))))
    from edgel2.evaluate import load_model

    assert load_model(model).name == "resnet18_w2"
