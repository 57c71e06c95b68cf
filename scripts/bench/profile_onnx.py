#!/usr/bin/env python3
"""Where ONNX Runtime spends its time: per-operator totals from ORT's own profiler.

    python scripts/bench/profile_onnx.py runs/train/exp/export/model-int8.onnx --batch 64 --runs 20

Prints a table (operator type, node count, share of the run time, ms per batch) for the
graph ONNX Runtime actually runs after its optimizations (QDQ groups become QLinear* ops).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort


def profile(path: str, batch: int, runs: int, threads: int | None
            ) -> tuple[list[tuple[str, int, float]], list[tuple[str, str, float]]]:
    """(op type, nodes, microseconds per run) rows and (node, op type, microseconds per run)
    rows, each slowest first."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = [batch] + [d if isinstance(d, int) else 32 for d in inp.shape[1:]]
    x = np.random.default_rng(0).integers(0, 256, shape).astype(
        np.uint8 if "uint8" in inp.type else np.float32)
    for _ in range(3 + runs):  # the first 3 warm up; only the last `runs` are counted below

        session.run(None, {inp.name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    kernel = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_node: dict[str, list[float]] = collections.defaultdict(list)
    op_of: dict[str, str] = {}
    for e in kernel:
        per_node[e["name"]].append(e["dur"])
        op_of[e["name"]] = e["args"].get("op_name", "?")
    nodes = sorted(((name.removesuffix("_kernel_time"), op_of[name], float(np.mean(d[-runs:])))
                    for name, d in per_node.items()), key=lambda r: -r[2])
    totals: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for _, op, us in nodes:
        totals[op][0] += 1
        totals[op][1] += us
    return sorted(((op, n, us) for op, (n, us) in totals.items()), key=lambda r: -r[2]), nodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--top", type=int, default=0, help="also list the N slowest nodes")
    args = parser.parse_args()
    rows, nodes = profile(args.model, args.batch, args.runs, args.threads)
    total = sum(us for _, _, us in rows)
    print(f"{Path(args.model).name}, batch {args.batch}, {args.threads} threads: "
          f"{total / 1000:.2f} ms of kernel time per run ({1e6 * args.batch / total:.0f} img/s)")
    print("| operator | nodes | share | ms per run |")
    print("| --- | --- | --- | --- |")
    for op, n, us in rows:
        print(f"| {op} | {n} | {100 * us / total:.1f} % | {us / 1000:.3f} |")
    if args.top:
        print("\n| node | operator | share | ms per run |\n| --- | --- | --- | --- |")
        for name, op, us in nodes[:args.top]:
            print(f"| {name} | {op} | {100 * us / total:.1f} % | {us / 1000:.3f} |")


if __name__ == "__main__":
    main()
