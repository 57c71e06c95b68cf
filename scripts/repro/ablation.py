#!/usr/bin/env python3
"""The L2 ablation: same recipe, seed and epoch budget; only the regularizer changes.

Rows: no L2; weight L2 only; feature L2 only; both; L1 instead of L2; dropout instead of L2.
Columns: CIFAR-10-JPEG test top-1, train top-1 (un-augmented training images, inference
mode), the gap, and the mean ||u|| of the pooled features on the test images; mean and spread
over the seeds.

    python scripts/repro/ablation.py --width 8 --subset 5000 --epochs 10 --seeds 0,1,2   # CPU-sized
    KERAS_BACKEND=jax python scripts/repro/ablation.py --width 64 --epochs 30            # on a GPU
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgel2.config import DEFAULT_FEATURE_L2, DEFAULT_WEIGHT_L2, TrainConfig

ROWS = {
    "no L2": dict(weight_l2=0.0, feature_l2=0.0),
    "weight L2 only": dict(weight_l2=DEFAULT_WEIGHT_L2, feature_l2=0.0),
    "feature L2 only": dict(weight_l2=0.0, feature_l2=DEFAULT_FEATURE_L2),
    "weight + feature L2": dict(weight_l2=DEFAULT_WEIGHT_L2, feature_l2=DEFAULT_FEATURE_L2),
    "L1 instead": dict(weight_l2=0.0, feature_l2=0.0, l1=1e-5),
    "dropout 0.3 instead": dict(weight_l2=0.0, feature_l2=0.0, dropout=0.3),
}


def measure(run_dir: Path, ds, test) -> dict:
    import keras

    from edgel2.checkpoint import load_model
    from edgel2.model import feature_extractor

    model = load_model(run_dir / "model.keras")
    def top1(x, y):
        return float(np.mean(np.argmax(model.predict(x, batch_size=512, verbose=0), 1) == y))
    u = feature_extractor(model).predict(test.x_test, batch_size=512, verbose=0)
    keras.backend.clear_session()
    test_acc, train_acc = top1(test.x_test, test.y_test), top1(ds.x_train, ds.y_train)
    return {"test": test_acc, "train": train_acc, "gap": train_acc - test_acc,
            "feature_norm": float(np.mean(np.linalg.norm(u, axis=1)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--subset", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--eval-subset", type=int, default=2000,
                        help="test images watched per epoch; the table uses all 10,000")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--feature-l2-sweep", default="",
                        help="extra rows 'feature L2 = X' (comma-separated X), weight L2 off")
    parser.add_argument("--only-sweep", action="store_true", help="run the sweep rows alone")
    parser.add_argument("--stop-after", type=float, default=None,
                        help="start no new row after this many seconds (a device time limit); "
                             "the table then holds the rows that finished")
    args = parser.parse_args()
    started = time.perf_counter()

    import keras

    from edgel2.data import load_dataset
    from edgel2.train import prepare_data, read_metrics, train

    base = TrainConfig(data=args.data, width=args.width, subset=args.subset, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, test_subset=args.eval_subset)
    full = load_dataset(args.data)
    rows = {} if args.only_sweep else dict(ROWS)
    for value in filter(None, args.feature_l2_sweep.split(",")):
        rows[f"feature L2 = {float(value):g}"] = dict(weight_l2=0.0, feature_l2=float(value))
    results: dict[str, list[dict]] = {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = [(seed, name, change) for seed in map(int, args.seeds.split(","))
            for name, change in rows.items()]
    for done, (seed, name, change) in enumerate(plan):
        if args.stop_after is not None and time.perf_counter() - started > args.stop_after:
            print(f"stopping: --stop-after {args.stop_after:g} s passed; "
                  f"{len(plan) - done} of {len(plan)} rows not run", flush=True)
            break
        config = replace(base, seed=seed, **change)
        ds = prepare_data(config, full)
        run_dir = Path(args.out) / f"{name.replace(' ', '_').replace('+', 'and').replace('=', 'eq')}-seed{seed}"
        start = time.perf_counter()
        train(config, run_dir, dataset=ds, checkpoint_every=args.epochs, verbose=0)
        row = measure(run_dir, ds, full)
        row["seconds"] = time.perf_counter() - start
        row["seed"] = seed
        seconds = [r["seconds"] for r in read_metrics(run_dir / "metrics.csv")]
        row["first_epoch_seconds"], row["epoch_seconds"] = seconds[0], float(np.median(seconds[1:] or seconds))
        results.setdefault(name, []).append(row)
        # Written after every row, so a run cut short still leaves what it measured.
        (out / "ablation.json").write_text(json.dumps({"args": vars(args), "rows": results},
                                                      indent=1))
        keras.backend.clear_session()
        print(f"seed {seed} {name:<22} test {100 * row['test']:.2f} %  train "
              f"{100 * row['train']:.2f} %  |u| {row['feature_norm']:.2f}  "
              f"({row['seconds']:.0f} s; first epoch {row['first_epoch_seconds']:.1f} s, then "
              f"{row['epoch_seconds']:.2f} s/epoch)", flush=True)

    if not results:
        sys.exit("no row finished")
    seeds = max(len(r) for r in results.values())
    print(f"\nResNet-18 width {args.width}, {args.subset} training images, {args.epochs} epochs, "
          f"batch {args.batch_size}, lr {args.lr}, {seeds} seed(s); CIFAR-10-JPEG test split "
          f"(10,000 images); mean ± std over seeds\n")
    print("| regularizer | test top-1 % | train top-1 % | gap (points) | mean ‖u‖ |")
    print("| --- | --- | --- | --- | --- |")
    for name, rows in results.items():
        def cell(k, scale=100, rows=rows):
            return (f"{scale * np.mean([r[k] for r in rows]):.2f} ± "
                    f"{scale * np.std([r[k] for r in rows]):.2f}")
        print(f"| {name} | {cell('test')} | {cell('train')} | {cell('gap')} | {cell('feature_norm', 1)} |")


if __name__ == "__main__":
    main()
