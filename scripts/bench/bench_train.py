#!/usr/bin/env python3
"""Train-step throughput (images/s) of the edgel2 ResNet-18 for each Keras backend present.

Each backend runs in its own process (Keras fixes its backend at import). A cell times
`--steps` train steps (augmentation, forward, backward, SGD update, exactly as
`edgel2 train` compiles them) after `--warmup` steps that absorb compilation.

    python scripts/bench/bench_train.py                        # tensorflow and jax, widths 64 and 16
    python scripts/bench/bench_train.py --widths 64 --batch-size 512 --backends jax
    python scripts/bench/bench_train.py --backends tensorflow --widths 64 --image-sizes 8,16,32

Several --image-sizes are timed in one process, in interleaved rounds (--rounds, medians),
so their ratios hold on a machine whose speed drifts.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time


def measure(width: int, batch_size: int, warmup: int, steps: int, sizes: list[int],
            rounds: int) -> list[dict]:
    import keras
    import numpy as np

    from edgel2.backend import accelerator
    from edgel2.config import TrainConfig
    from edgel2.train import build_trainer

    device = accelerator()
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16" if device else "float32")
    rng = np.random.default_rng(0)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch_size)]
    cells = {}
    for size in sizes:
        trainer, _ = build_trainer(TrainConfig(width=width, batch_size=batch_size), 10,
                                   (size, size, 3), steps_per_epoch=1000)
        x = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
        start = time.perf_counter()
        for _ in range(warmup):
            trainer.train_on_batch(x, y)
        cells[size] = (trainer, x, time.perf_counter() - start, [])
    for _ in range(rounds):  # interleaved, so drift hits every size alike
        for trainer, x, _, rates in cells.values():
            start = time.perf_counter()
            for _ in range(steps):
                trainer.train_on_batch(x, y)  # returns host floats: each step is waited for
            rates.append(steps * batch_size / (time.perf_counter() - start))
    return [{"backend": keras.backend.backend(), "device": device or "cpu", "width": width,
             "size": size, "batch": batch_size, "images_per_s": float(np.median(rates)),
             "warmup_s": compile_s} for size, (_, _, compile_s, rates) in cells.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument("--widths", default="64,16")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--image-sizes", default="32", help="square image sides, comma-separated")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (medians)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sizes = [int(s) for s in args.image_sizes.split(",")]
        print(json.dumps(measure(int(args.child), args.batch_size, args.warmup, args.steps,
                                 sizes, args.rounds)))
        return

    rows = []
    for backend in args.backends.split(","):
        module = {"tensorflow": "tensorflow", "jax": "jax"}[backend]
        if importlib.util.find_spec(module) is None:
            print(f"# {backend}: not installed, skipped", file=sys.stderr)
            continue
        for width in map(int, args.widths.split(",")):
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(width), "--batch-size",
                 str(args.batch_size), "--warmup", str(args.warmup), "--steps", str(args.steps),
                 "--image-sizes", args.image_sizes, "--rounds", str(args.rounds)],
                env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"# {backend} width {width} failed: {proc.stderr.strip()[-500:]}",
                      file=sys.stderr)
                continue
            rows += json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{'backend':<11} {'device':<8} {'width':>5} {'size':>5} {'batch':>5} {'images/s':>9} "
          f"{'warm-up s':>9}")
    for r in rows:
        print(f"{r['backend']:<11} {r['device']:<8} {r['width']:>5} {r['size']:>5} "
              f"{r['batch']:>5} {r['images_per_s']:>9.1f} {r['warmup_s']:>9.1f}")
    print(f"# {os.cpu_count()} CPU cores; {args.steps} timed steps after {args.warmup} warm-up "
          f"steps; medians of {args.rounds} interleaved rounds")


if __name__ == "__main__":
    main()
