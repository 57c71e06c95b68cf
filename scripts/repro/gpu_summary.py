#!/usr/bin/env python3
"""One JSON line per finished GPU run (scripts/repro/gpu_train.sh), and the pick of the best.

    gpu_summary.py NAME RUN_DIR WALL_S OPTIONS   # a line for runs.jsonl
    gpu_summary.py --best runs.jsonl             # the name of the best run within 60 s

Training time is the sum of the epochs' seconds (train + test pass) less the compile, taken
as the first epoch's excess over the median of the others.
"""
from __future__ import annotations

import csv
import json
import statistics
import sys

TARGET_SECONDS = 60.0


def describe(name: str, run_dir: str, wall: str, options: str) -> dict:
    rows = list(csv.DictReader(open(f"{run_dir}/metrics.csv")))
    seconds = [float(r["seconds"]) for r in rows]
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    compile_s = max(seconds[0] - steady, 0.0)
    train_s = sum(seconds) - compile_s
    acc = json.load(open(f"{run_dir}/eval.json"))["accuracy"]
    line = (f"{name}: {len(rows)} epochs, training {train_s:.1f} s + compile {compile_s:.1f} s "
            f"(steady epoch {steady:.2f} s, process {wall} s), last-epoch test top-1 "
            f"{100 * float(rows[-1]['test_acc']):.2f} %, edgel2 eval top-1 {100 * acc:.2f} %")
    return {"name": name, "options": options, "epochs": len(rows), "train_s": train_s,
            "compile_s": compile_s, "steady_epoch_s": steady, "process_s": int(wall),
            "eval_top1": acc, "line": line}


def best(path: str) -> str:
    runs = [json.loads(line) for line in open(path)] if path else []
    inside = [r for r in runs if r["train_s"] <= TARGET_SECONDS] or runs
    return max(inside, key=lambda r: r["eval_top1"])["name"] if inside else ""


if __name__ == "__main__":
    if sys.argv[1] == "--best":
        try:
            print(best(sys.argv[2]))
        except OSError:
            print("")
    else:
        print(json.dumps(describe(*sys.argv[1:5])))
