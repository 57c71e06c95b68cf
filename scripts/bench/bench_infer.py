#!/usr/bin/env python3
"""Inference benchmarks of the edgel2 runtime (no TensorFlow in the measured process).

    python scripts/bench/bench_infer.py --fp32 model-fp32.onnx --int8 model-int8.onnx [--images DIR]

Prints, each as a ratio against a baseline measured in the same run:
1. model-only throughput (images/s) of the fp32 and int8 ONNX at batch 1 and 64;
2. streaming over N PNG files (Classifier.predict_files: decode + resize on a thread pool,
   ahead of the model) against model-only throughput of the same model and batch size, and
   the wall time of the whole `edgel2 infer` command on them;
3. cold start of `edgel2 infer` on one image against `python -c "import tensorflow"`;
4. 32 concurrent callers through Batcher against 32 callers each calling predict on one image.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from edgel2.runtime import Batcher, Classifier


def model_only(clf: Classifier, batch: int, seconds: float) -> float:
    x = np.random.default_rng(0).integers(0, 256, (batch, *clf.input_size[::-1], 3), np.uint8)
    for _ in range(3):
        clf.engine.run(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        clf.engine.run(x)
        n += batch
    return n / (time.perf_counter() - start)


def make_pngs(folder: Path, count: int) -> list[Path]:
    """``count`` CIFAR-10-JPEG test images (or seeded noise without $EDGEL2_DATA) as PNGs."""
    from PIL import Image

    paths = sorted(folder.glob("*.png"))
    if len(paths) >= count:
        return paths[:count]
    folder.mkdir(parents=True, exist_ok=True)
    data = os.environ.get("EDGEL2_DATA")
    if data:
        from edgel2.data import load_dataset

        images = load_dataset(data).x_test
    else:
        images = np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), np.uint8)
    for i in range(count):
        Image.fromarray(images[i % len(images)]).save(folder / f"{i:05d}.png")
    return sorted(folder.glob("*.png"))[:count]


def streamed(clf: Classifier, paths: list[Path]) -> float:
    start = time.perf_counter()
    results = list(clf.predict_files(paths))
    assert all(r.error is None for r in results)
    return len(paths) / (time.perf_counter() - start)


def command_seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def concurrent_callers(clf: Classifier, images: np.ndarray, callers: int, rounds: int,
                       batcher: Batcher | None) -> float:
    def work(i):
        for r in range(rounds):
            image = images[(i * rounds + r) % len(images)]
            if batcher:
                batcher.submit(image).result()
            else:
                clf.predict(image)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return callers * rounds / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", required=True)
    parser.add_argument("--int8", required=True)
    parser.add_argument("--images", default=".data/png10k", help="folder for the PNG files")
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    print(f"# {os.cpu_count()} cores, onnxruntime threads: {args.threads or 'default (all cores)'}")
    classifiers = {name: Classifier(getattr(args, name), threads=args.threads, batch_size=64,
                                      workload="throughput")
                   for name in ("fp32", "int8")}
    print("\n1. model-only throughput, images/s")
    base = {}
    for name, clf in classifiers.items():
        for batch in (1, 64):
            base[name, batch] = model_only(clf, batch, args.seconds)
            print(f"   {name:<5} batch {batch:>2}: {base[name, batch]:8.1f} img/s"
                  f"  ({base[name, batch] / base['fp32', batch]:.2f}x fp32)")

    paths = make_pngs(Path(args.images), args.count)
    print(f"\n2. streaming {len(paths)} PNG files, batch 64")
    for name, clf in classifiers.items():
        rate = streamed(clf, paths)
        print(f"   {name:<5} predict_files: {rate:8.1f} img/s = {rate / base[name, 64]:.2f} of "
              f"model-only at batch 64")
        wall = command_seconds([sys.executable, "-m", "edgel2", "infer", str(args.images),
                                "--model", getattr(args, name), "--format", "csv",
                                "--out", os.devnull])
        print(f"   {name:<5} edgel2 infer (whole command, start-up included): {wall:.2f} s = "
              f"{len(paths) / wall:.1f} img/s = {len(paths) / wall / base[name, 64]:.2f} of model-only")

    print("\n3. cold start")
    one = paths[0]
    tf = command_seconds([sys.executable, "-c", "import tensorflow"])
    cold = command_seconds([sys.executable, "-m", "edgel2", "infer", str(one), "--model",
                            args.int8, "--format", "json"])
    print(f"   edgel2 infer one image (int8): {cold:.2f} s; python -c 'import tensorflow': "
          f"{tf:.2f} s; ratio {cold / tf:.2f}")

    print("\n4. 32 concurrent callers, one image each per call (int8)")
    clf = classifiers["int8"]
    images = np.stack([clf.preprocess(p) for p in paths[:256]])
    alone = concurrent_callers(clf, images, 32, 20, None)
    with Batcher(clf, max_batch=32, max_delay_ms=2) as batcher:
        gathered = concurrent_callers(clf, images, 32, 20, batcher)
    print(f"   predict per caller: {alone:8.1f} img/s; through Batcher: {gathered:8.1f} img/s; "
          f"ratio {gathered / alone:.2f}")


if __name__ == "__main__":
    main()
