#!/usr/bin/env python3
"""Train-step throughput (images/s) of an edgel2 network for each Keras backend present.

Each backend runs in its own process (Keras fixes its backend at import). A cell times
`--steps` train steps (augmentation, forward, backward, SGD update, exactly as
`edgel2 train` compiles them) after `--warmup` steps that absorb compilation.

    python scripts/bench/bench_train.py                        # tensorflow and jax, widths 64 and 16
    python scripts/bench/bench_train.py --widths 64 --batch-size 512 --backends jax
    python scripts/bench/bench_train.py --backends tensorflow --widths 64 --image-sizes 8,16,32
    python scripts/bench/bench_train.py --backends tensorflow --arch resnet20 --onednn on,off

Each round starts one process per backend, oneDNN setting and width, and times every
--image-sizes in it; the table gives the medians of --rounds such interleaved rounds, so
ratios hold on a machine whose speed drifts. --onednn sets TensorFlow's
TF_ENABLE_ONEDNN_OPTS ("on", "off") or leaves it as the environment has it ("default", which
edgel2 also does: TensorFlow turns oneDNN on by itself only on CPUs with AVX-512 VNNI/BF16 or
AMX).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time


def measure(arch: str, width: int | None, batch_size: int, warmup: int, steps: int,
            sizes: list[int]) -> list[dict]:
    import keras
    import numpy as np

    from edgel2.backend import accelerator
    from edgel2.config import TrainConfig
    from edgel2.train import build_trainer

    device = accelerator()
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16" if device else "float32")
    rng = np.random.default_rng(0)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch_size)]
    rows = []
    for size in sizes:
        trainer, _ = build_trainer(TrainConfig(arch=arch, width=width, batch_size=batch_size),
                                   10, (size, size, 3), steps_per_epoch=1000)
        x = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
        start = time.perf_counter()
        for _ in range(warmup):
            trainer.train_on_batch(x, y)
        warmed = time.perf_counter()
        for _ in range(steps):
            trainer.train_on_batch(x, y)  # returns host floats: each step is waited for
        rows.append({"size": size, "images_per_s": steps * batch_size / (time.perf_counter() - warmed),
                     "warmup_s": warmed - start, "device": device or "cpu"})
    return rows


ONEDNN_VALUES = {"on": "1", "off": "0"}  # TF_ENABLE_ONEDNN_OPTS; "default" leaves it alone


def onednn_settings(text: str) -> list[str]:
    settings = text.split(",")
    unknown = [s for s in settings if s not in ("default", *ONEDNN_VALUES)]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown)}: choose from default, on, off")
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument("--arch", default="resnet18", help="an edgel2 architecture (train --arch)")
    parser.add_argument("--widths", default="64,16",
                        help="network widths, comma-separated ('default': the architecture's)")
    parser.add_argument("--onednn", default="default", type=onednn_settings,
                        help="TensorFlow's oneDNN kernels, comma-separated: default, on, off")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--image-sizes", default="32", help="square image sides, comma-separated")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (medians)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.image_sizes.split(",")]
    if args.child:
        width = None if args.child == "default" else int(args.child)
        print(json.dumps(measure(args.arch, width, args.batch_size, args.warmup, args.steps, sizes)))
        return

    cells = []  # (backend, oneDNN setting or "-", width)
    for backend in args.backends.split(","):
        if importlib.util.find_spec(backend) is None:
            print(f"# {backend}: not installed, skipped", file=sys.stderr)
            continue
        settings = args.onednn if backend == "tensorflow" else ["-"]
        cells += [(backend, onednn, width) for onednn in settings for width in args.widths.split(",")]
    rates: dict[tuple, list] = {}
    for _ in range(args.rounds):
        for backend, onednn, width in cells:
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            if onednn in ONEDNN_VALUES:
                env["TF_ENABLE_ONEDNN_OPTS"] = ONEDNN_VALUES[onednn]
            proc = subprocess.run(
                [sys.executable, __file__, "--child", width, "--arch", args.arch, "--batch-size",
                 str(args.batch_size), "--warmup", str(args.warmup), "--steps", str(args.steps),
                 "--image-sizes", args.image_sizes],
                env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"# {backend} width {width} failed: {proc.stderr.strip()[-500:]}",
                      file=sys.stderr)
                continue
            for row in json.loads(proc.stdout.strip().splitlines()[-1]):
                rates.setdefault((backend, onednn, width, row["size"], row["device"]), []).append(row)
    print(f"{'backend':<11} {'oneDNN':<7} {'device':<8} {'arch':<9} {'width':>7} {'size':>5} "
          f"{'batch':>5} {'images/s':>9} {'warm-up s':>9}")
    for (backend, onednn, width, size, device), rows in rates.items():
        speed = statistics.median(r["images_per_s"] for r in rows)
        warmup = statistics.median(r["warmup_s"] for r in rows)
        print(f"{backend:<11} {onednn:<7} {device:<8} {args.arch:<9} {width:>7} {size:>5} "
              f"{args.batch_size:>5} {speed:>9.1f} {warmup:>9.1f}")
    print(f"# {os.cpu_count()} CPU cores; {args.steps} timed steps after {args.warmup} warm-up "
          f"steps; medians of {args.rounds} interleaved rounds, one process per cell and round")


if __name__ == "__main__":
    main()
