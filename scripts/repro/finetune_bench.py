"""Does starting from the shipped pretrained ResNet-18 help on small sets of real images?

For each image folder written by scripts/tools/make_finetune_data.py, each fraction of its training
images (a class-balanced --subset) and each seed, the full-width ResNet-18 in each arm:

    pretrained        `edgel2 train --pretrained`: TrainConfig.finetune() (lr 0.04, 10 %
                      warm-up, colour jitter 0.2, zoom crops keeping >= 60 % of the area)
    pretrained-plain  the same without colour jitter and zoom (crop + flip only)
    scratch           from scratch with the from-scratch defaults (lr 0.4, 25 % warm-up)

with the same epochs, batch and image size. Test top-1 is of the saved model.keras. Cheap
cells run first; --stop-after starts no run past a time budget, and results.json is written
after every run, so a cut-short run keeps what it measured.

    python scripts/tools/make_finetune_data.py .data/finetune
    python scripts/repro/finetune_bench.py .data/finetune --epochs 5 --stop-after 1800
    python scripts/repro/finetune_bench.py .data/finetune --arms pretrained,pretrained-plain
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--sets", default="lfw,digits")
    parser.add_argument("--fractions", default="0.1,1.0")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default="pretrained,scratch", help=f"of {', '.join(ARMS)}")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("runs/finetune"))
    parser.add_argument("--stop-after", type=float, default=None,
                        help="start no new run after this many seconds")
    args = parser.parse_args()
    started = time.perf_counter()

    import keras

    from edgel2.data import load_dataset
    from edgel2.train import train

    arms = {arm: ARMS[arm] for arm in args.arms.split(",")}
    data = {name: load_dataset(args.data / name, image_size=args.image_size)
            for name in args.sets.split(",")}
    plan = [(name, float(fraction), int(seed), arm)
            for fraction in args.fractions.split(",") for name in data
            for seed in args.seeds.split(",") for arm in arms]
    plan.sort(key=lambda p: p[1] * len(data[p[0]].y_train))  # cheap cells first
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, fraction, seed, arm in plan:
        if args.stop_after is not None and time.perf_counter() - started > args.stop_after:
            print(f"stopping: --stop-after {args.stop_after:g} s passed", flush=True)
            break
        ds = data[name]
        subset = None if fraction >= 1 else max(ds.num_classes, round(fraction * len(ds.y_train)))
        config = arms[arm](width=64, epochs=args.epochs, batch_size=args.batch_size,
                           image_size=args.image_size, subset=subset, seed=seed)
        run = args.out / f"{name}-{fraction:g}-{arm}-seed{seed}"
        begin = time.perf_counter()
        result = train(config, run, dataset=ds, verbose=0)
        results.append({"set": name, "fraction": fraction, "train_images": subset or len(ds.y_train),
                        "seed": seed, "arm": arm, "test_acc": result.test_acc,
                        "seconds": time.perf_counter() - begin, "test_images": len(ds.y_test)})
        print(f"{name} {fraction:g} seed {seed} {arm:<10} test top-1 "
              f"{100 * result.test_acc:6.2f} %  {results[-1]['seconds']:6.1f} s", flush=True)
        (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in
                                                                    vars(args).items()},
                                                           "runs": results}, indent=1))
        keras.backend.clear_session()
    print(table(results))


def _arms() -> dict:
    from edgel2.config import TrainConfig

    return {"pretrained": lambda **k: TrainConfig.finetune(**k),
            "pretrained-plain": lambda **k: TrainConfig.finetune(color_jitter=0.0, crop_scale=1.0,
                                                                 **k),
            "scratch": lambda **k: TrainConfig(**k)}


ARMS = _arms()


def table(results: list[dict]) -> str:
    """Markdown: a row per (set, fraction), test top-1 mean ± std over seeds for each arm."""
    names = list(dict.fromkeys(r["arm"] for r in results))
    lines = ["| images | train images | seeds | " + " | ".join(f"{a}: top-1 % | s/run"
                                                               for a in names) + " |",
             "| --- | --- | --- | " + " | ".join("--- | ---" for _ in names) + " |"]
    cells = sorted({(r["set"], r["fraction"], r["train_images"]) for r in results})
    for name, fraction, count in cells:
        row = [f"{name} ({fraction:.0%})", str(count)]
        per_arm = {arm: [r for r in results if (r["set"], r["fraction"], r["arm"]) ==
                         (name, fraction, arm)] for arm in names}
        row.append(str(min(len(v) for v in per_arm.values())))
        for runs in per_arm.values():
            acc = 100 * np.array([r["test_acc"] for r in runs])
            row += ([f"{acc.mean():.1f} ± {acc.std():.1f}",
                     f"{np.mean([r['seconds'] for r in runs]):.0f}"] if len(acc) else ["-", "-"])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
