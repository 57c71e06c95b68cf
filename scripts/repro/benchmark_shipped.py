"""Regenerate the shipped model's benchmark chart (models/resnet18-benchmark.png) and table.

The shipped model's Keras source is not kept, so its network is rebuilt from the shipped int8
ONNX (edgel2.pretrained.network_from_onnx: the same weights, 92.57 % against the source's
92.58 % on CIFAR-10-JPEG), exported in every format and precision, and the two int8 files
re-exported from it are replaced by the shipped ones, so that the int8 rows are the files
edgel2 ships. Then `edgel2 benchmark` measures every row (OpenVINO's too, when installed):

    python scripts/repro/benchmark_shipped.py --out runs/shipped --repeat 3 --check 2000

Needs edgel2[train] (and edgel2[openvino] for the OpenVINO rows) and the CIFAR-10-JPEG data
($EDGEL2_DATA, or the checkout's .data/). Writes runs/shipped/ and, with --update-chart,
copies the chart over models/resnet18-benchmark.png.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/shipped"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--check", default="2000", help="test images for top-1, or 'all'")
    parser.add_argument("--update-chart", action="store_true",
                        help="copy the chart over models/resnet18-benchmark.png")
    args = parser.parse_args()

    from edgel2.backend import use_backend

    use_backend("tensorflow")
    from edgel2.checkpoint import save_model
    from edgel2.pretrained import network_from_onnx
    from edgel2.runtime.shipped import shipped_model

    args.out.mkdir(parents=True, exist_ok=True)
    model = args.out / "resnet18.keras"
    if not model.exists():
        save_model(network_from_onnx(shipped_model()), model)
    export = args.out / "export"
    edgel2 = [sys.executable, "-m", "edgel2"]
    if not (export / "export_report.json").exists():
        subprocess.run([*edgel2, "export", str(model), "--format", "all", "--precision", "all",
                        "--check", "1000", "--no-calibrate", "--allow-drop", "--out", str(export)],
                       check=True)
    for suffix in (".onnx", ".tflite"):  # the int8 rows measure the shipped files themselves
        shutil.copyfile(shipped_model(f"resnet18-int8{suffix}"), export / f"resnet18-int8{suffix}")
    subprocess.run([*edgel2, "benchmark", str(export), "--check", args.check,
                    "--seconds", str(args.seconds), "--repeat", str(args.repeat)], check=True)
    if args.update_chart:
        shutil.copyfile(export / "benchmark.png", ROOT / "models" / "resnet18-benchmark.png")


if __name__ == "__main__":
    main()
