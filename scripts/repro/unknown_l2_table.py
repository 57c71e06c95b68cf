#!/usr/bin/env python3
"""The tables of docs/measurements/unknown.md from the runs scripts/repro/unknown_l2.sh made:
each run's ``unknown_scores.md`` read back, one row per run, then the means over seeds.

    python scripts/repro/unknown_l2_table.py runs/unknown-l2
"""
from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

RUN = re.compile(r"w\d+-l2(?P<lam>\d[\d.]*(?:e-?\d+)?)(?:-(?P<kind>oe|ln)(?P<knob>[\d.]+))?-s(?P<seed>\d+)$")
TRAINING = {None: "plain", "oe": "--outliers", "ln": "--logit-norm"}
EXPORTED = "Mahalanobis, all stages joined (exported)"
SCORES = {"max softmax": "max softmax", "energy": "energy", "Mahalanobis, stage 4": "Maha. stage 4",
          EXPORTED: "Maha. joined (exported)", "ViM": "ViM"}
# the probe's sets unlike every training outlier (jigsaws and noise are what --outliers makes)
UNLIKE_OUTLIERS = ("digits", "faces", "photos")


def read_run(path: Path) -> dict:
    """One run's top-1 and its table of AUROC / FPR95 cells."""
    text = path.read_text()
    top1 = float(re.search(r"top-1 ([\d.]+) %", text).group(1))
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| ")]
    sets = [re.sub(r" \(\d+\)$", "", c) for c in rows[0][1:-1]]
    table = {r[0]: dict(zip([*sets, "mean"], r[1:], strict=True)) for r in rows[2:]}
    return {"top1": top1, "sets": sets, "table": table}


def auroc(cell: str) -> float:
    return float(cell.split(" / ")[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the OUT folder of unknown_l2.sh")
    args = parser.parse_args()
    runs = []
    for path in sorted(args.out.glob("*/unknown_scores.md")):
        name = RUN.match(path.parent.name)
        if name:
            knob = f" {name['knob']}" if name["kind"] else ""
            runs.append({"training": TRAINING[name["kind"]] + knob, "lam": name["lam"],
                         "seed": int(name["seed"]), **read_run(path)})
    runs.sort(key=lambda r: (list(TRAINING.values()).index(r["training"].split()[0]),
                             float(r["lam"]), r["seed"]))
    sets = runs[0]["sets"]

    print("| training | feature L2 λ | seed | top-1 | " + " | ".join(SCORES.values()) + " |")
    print("| --- " * (4 + len(SCORES)) + "|")
    for r in runs:
        print(f"| {r['training']} | {r['lam']} | {r['seed']} | {r['top1']:.2f} % | "
              + " | ".join(r["table"][s]["mean"] for s in SCORES) + " |")
    print("\nThe exported score, AUROC / FPR95 per set:\n")
    print("| training | feature L2 λ | seed | " + " | ".join(sets) + " |")
    print("| --- " * (3 + len(sets)) + "|")
    for r in runs:
        print(f"| {r['training']} | {r['lam']} | {r['seed']} | "
              + " | ".join(r["table"][EXPORTED][s] for s in sets) + " |")
    print(f"\nMeans over seeds (the exported score; 'unlike the outliers': "
          f"{', '.join(UNLIKE_OUTLIERS)}):\n")
    print("| training | feature L2 λ | seeds | top-1 | mean AUROC | unlike the outliers | "
          "faces | max softmax mean AUROC |")
    print("| --- " * 8 + "|")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["training"], r["lam"]), []).append(r)
    for (training, lam), group in groups.items():
        def mean(values) -> float:
            return statistics.fmean(values)
        exported = [r["table"][EXPORTED] for r in group]
        print(f"| {training} | {lam} | {len(group)} | {mean(r['top1'] for r in group):.2f} % | "
              f"{mean(auroc(t['mean']) for t in exported):.3f} | "
              f"{mean(mean(auroc(t[s]) for s in UNLIKE_OUTLIERS) for t in exported):.3f} | "
              f"{mean(auroc(t['faces']) for t in exported):.3f} | "
              f"{mean(auroc(r['table']['max softmax']['mean']) for r in group):.3f} |")


if __name__ == "__main__":
    main()
