#!/usr/bin/env python3
"""What each app in examples/ costs against edgel2's Python runtime on the same engine, and
how far its answers are from the runtime's.

    python scripts/bench/bench_ports.py [--images 200] [--rounds 5] [--cold]

Per port: the time of a first run with its build (``--cold`` empties its cache first:
node_modules/ or .venv/, then a fresh install from the registries), the time of a cached run
on one image (start-up), the time per image over ``--images`` CIFAR-10-JPEG test images
((run on N - run on 1) / (N - 1): decode, resize, model, one JSON line), and the same per-image
time of ``edgel2.runtime.Classifier.predict`` one path at a time on the port's engine. The
runs take turns in every round and each cell is the median (this VM's speed drifts). Last,
the largest |Δp| against the runtime on the test images as PNG and as JPEG.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from test_ports import PORTS  # noqa: E402  (one table of ports, theirs and the tests')

CACHES = {"node": "node_modules", "mediapipe": ".venv"}  # what --cold removes


def run_port(port: str, model: Path, images: list[Path]) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    ran = subprocess.run([str(ROOT / "examples" / port / "run"), "--model", str(model),
                          *map(str, images)], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, [json.loads(line) for line in ran.stdout.splitlines()]


def runtime_per_image(model: Path, engine: str, images: list[Path]) -> float:
    from edgel2.runtime import Classifier

    classifier = Classifier(model, engine=engine)
    classifier.predict(images[0])  # warm-up
    start = time.perf_counter()
    for path in images:
        classifier.predict(path)
    return (time.perf_counter() - start) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="time a first run with its build")
    args = parser.parse_args()

    from PIL import Image

    from edgel2.data import load_dataset
    from edgel2.runtime import Classifier, shipped_model

    test = Path(load_dataset().source) / "test"
    jpegs = sorted(test.glob("*/*.jpg"))[:: max(1, 10000 // args.images)][: args.images]
    folder = Path(tempfile.mkdtemp(prefix="bench-ports-"))
    pngs = []
    for i, jpeg in enumerate(jpegs):
        pngs.append(folder / f"{i:04d}.png")
        Image.open(jpeg).save(pngs[-1])

    cold = {}
    for port in PORTS:
        if args.cold:
            shutil.rmtree(ROOT / "examples" / port / CACHES[port], ignore_errors=True)
        start = time.perf_counter()
        run_port(port, shipped_model(PORTS[port][0]), jpegs[:1])
        cold[port] = time.perf_counter() - start

    times: dict[str, dict[str, list[float]]] = {p: {"one": [], "per": [], "py": []} for p in PORTS}
    for _ in range(args.rounds):
        for port, (name, engine, _) in PORTS.items():
            model = shipped_model(name)
            one, _ = run_port(port, model, jpegs[:1])
            many, _ = run_port(port, model, jpegs)
            times[port]["one"].append(one)
            times[port]["per"].append((many - one) / (len(jpegs) - 1))
            times[port]["py"].append(runtime_per_image(model, engine, jpegs))

    print(f"{len(jpegs)} CIFAR-10-JPEG test images, medians of {args.rounds} interleaved rounds")
    print("| port | engine | first run | cached run, 1 image | per image | Python runtime per "
          "image | ratio | max |Δp| PNG | max |Δp| JPEG |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for port, (name, engine, _) in PORTS.items():
        model = shipped_model(name)
        reference = Classifier(model, engine=engine)
        worst = {}
        for kind, paths in (("png", pngs), ("jpeg", jpegs)):
            _, answers = run_port(port, model, paths)
            expected = np.stack([reference.probabilities(reference.preprocess(p)[None])[0]
                                 for p in paths])
            worst[kind] = float(np.abs(np.array([a["probabilities"] for a in answers])
                                       - expected).max())
        t = {k: statistics.median(v) for k, v in times[port].items()}
        print(f"| {port} | {engine} | {cold[port]:.1f} s{' (cold)' if args.cold else ''} "
              f"| {t['one']:.2f} s | {1e3 * t['per']:.2f} ms | {1e3 * t['py']:.2f} ms "
              f"| {t['per'] / t['py']:.2f}x | {worst['png']:.1e} | {worst['jpeg']:.1e} |")
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
