#!/usr/bin/env python3
"""How close ``--engine auto`` comes to the fastest engine on this CPU, and what its race
costs the first open.

    python scripts/bench/bench_auto.py [--model DIR] [--rounds 5] [--seconds 2] [--json FILE]

Speed: each row is measured in a process of its own, as ``edgel2 benchmark`` measures
(batch-1 latency p50 over ``--seconds`` of ``engine.run`` on one image; throughput at
batch 64 through ``engine.run_stream``), and the rows take turns in every round (this VM's
speed drifts by tens of percent over minutes); each cell is the median over the rounds.
Rows: each engine on the folder's files; ``auto`` with its race turned off (the fixed
rule: OpenVINO for ONNX on x86); ``auto`` for the latency and for the throughput workload
(the choice the race made and cached before the rounds).

First open: the time ``Classifier(DIR, workload=W)`` takes in a fresh process (imports
excluded), with an empty cache (the race), with the choice cached, and with the race
turned off; also interleaved, medians over the rounds. The race adds (empty cache) minus
(race off).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ENGINE_ROWS = [("LiteRT", "litert"), ("ONNX Runtime", "onnxruntime"), ("OpenVINO", "openvino")]
AUTO_ROWS = [("auto, race off (fixed rule)", "auto", "latency", False),
             ("auto for latency", "auto", "latency", True),
             ("auto for throughput", "auto", "throughput", True)]
BATCH = 64


def child_speed(spec: dict) -> dict:
    """One row's cells, in this (child) process."""
    from edgel2.benchmark import time_cells
    from edgel2.runtime import Classifier

    clf = Classifier(spec["model"], engine=spec["engine"], workload=spec["workload"],
                     probe=spec["probe"], batch_size=BATCH)
    images = np.random.default_rng(0).integers(0, 256, (BATCH, 32, 32, 3), np.uint8)
    cells = time_cells(clf.engine.run, images, [1, BATCH], spec["seconds"], clf.engine.run_stream)
    return {"engine": clf.describe(), "p50": cells["latency_ms"]["p50"],
            "b1": cells["throughput"]["1"], "b64": cells["throughput"][str(BATCH)]}


def child_open(spec: dict) -> dict:
    """How long opening takes, in this (child) process, after the imports."""
    import edgel2.runtime.engines  # noqa: F401 - the imports are not what is measured
    from edgel2.runtime import Classifier

    start = time.perf_counter()
    clf = Classifier(spec["model"], workload=spec["workload"], probe=spec["probe"])
    return {"seconds": time.perf_counter() - start, "engine": clf.describe()}


def in_child(kind: str, spec: dict, cache: str) -> dict:
    env = {**os.environ, "EDGEL2_CACHE": cache}
    proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(spec)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} {spec}: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a folder with one model's pair "
                        "(default: the shipped int8 pair)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, spec = args.child
        print(json.dumps((child_speed if kind == "speed" else child_open)(json.loads(spec))))
        return

    from edgel2.benchmark import machine
    from edgel2.runtime.shipped import shipped_models

    model = str(Path(args.model) if args.model else shipped_models())
    speed_cache = tempfile.mkdtemp(prefix="bench-auto-")
    for workload in ("latency", "throughput"):  # the race the auto rows then read from cache
        raced = in_child("open", {"model": model, "workload": workload, "probe": True},
                         speed_cache)
        print(f"# race for {workload}: {raced['engine']}")
    rows = [(name, {"engine": engine, "workload": "latency", "probe": False})
            for name, engine in ENGINE_ROWS] + [
        (name, {"engine": engine, "workload": workload, "probe": probe})
        for name, engine, workload, probe in AUTO_ROWS]
    speeds: dict[str, list[dict]] = {name: [] for name, _ in rows}
    opens: dict[str, list[float]] = {}
    for round_index in range(args.rounds):
        for name, spec in rows:
            speeds[name].append(in_child("speed", {**spec, "model": model,
                                                   "seconds": args.seconds}, speed_cache))
        for workload in ("latency", "throughput"):
            empty = tempfile.mkdtemp(prefix="bench-auto-open-")
            for label, probe, cache in (("race (empty cache)", True, empty),
                                        ("cached", True, empty),  # the entry the race wrote
                                        ("race off", False, empty)):
                result = in_child("open", {"model": model, "workload": workload,
                                           "probe": probe}, cache)
                opens.setdefault(f"{workload}: {label}", []).append(result["seconds"])
        print(f"# round {round_index + 1} of {args.rounds} done", file=sys.stderr)

    median = {name: {k: statistics.median(r[k] for r in runs) for k in ("p50", "b1", "b64")}
              for name, runs in speeds.items()}
    best_p50 = min(median[name]["p50"] for name, _ in ENGINE_ROWS)
    best_b64 = max(median[name]["b64"] for name, _ in ENGINE_ROWS)
    m = machine()
    print(f"{m['cpu']}, {m['cores']} cores; {model}; {args.rounds} interleaved rounds, "
          f"{args.seconds:g} s a cell, medians")
    print(f"| row | runs | batch-1 p50 ms | img/s b1 | img/s b{BATCH} | p50 / fastest | "
          f"b{BATCH} / fastest |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, _ in rows:
        cells = median[name]
        print(f"| {name} | {speeds[name][0]['engine']} | {cells['p50']:.2f} | {cells['b1']:.0f} "
              f"| {cells['b64']:.0f} | {cells['p50'] / best_p50:.3f} | "
              f"{cells['b64'] / best_b64:.3f} |")
    print("\n| first open of the pair | median s | runs (all rounds) |\n| --- | --- | --- |")
    for label, values in opens.items():
        print(f"| {label} | {statistics.median(values):.3f} | "
              f"{', '.join(f'{v:.2f}' for v in values)} |")
    for workload in ("latency", "throughput"):
        added = statistics.median(opens[f"{workload}: race (empty cache)"]) - \
            statistics.median(opens[f"{workload}: race off"])
        print(f"race adds to the first open ({workload}): {added:.3f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": m, "speeds": speeds,
                                               "opens": opens}, indent=1))


if __name__ == "__main__":
    main()
