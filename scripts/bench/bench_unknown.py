#!/usr/bin/env python3
"""What the unknown score costs: batch-64 throughput (and batch-1 latency) of a file exported
with the score against the same model exported with ``--no-unknown``, on one engine, in
interleaved rounds (the machine's speed drifts), each file in turn; prints the medians and
their ratio as a Markdown table.

    edgel2 export model.keras --format onnx,tflite --precision int8 --out with/
    edgel2 export model.keras --format onnx,tflite --precision int8 --no-unknown --out without/
    python scripts/bench/bench_unknown.py --with with/m-int8.onnx --without without/m-int8.onnx
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def throughput(run, batch: np.ndarray, seconds: float) -> float:
    """Images a second of ``run(batch)`` in a loop for about ``seconds``."""
    run(batch)  # warm
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(batch)
        done += len(batch)
    return done / (time.perf_counter() - start)


def latency_ms(run, image: np.ndarray, calls: int = 200) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--with", dest="scored", required=True, help="the file with the score")
    parser.add_argument("--without", dest="plain", required=True,
                        help="the same model exported with --no-unknown")
    parser.add_argument("--engine", default="auto", help="onnxruntime, openvino, litert or auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    from edgel2.runtime.auto import open_engine

    engines = {"with the score": open_engine(args.scored, engine=args.engine, threads=args.threads),
               "without (--no-unknown)": open_engine(args.plain, engine=args.engine,
                                                     threads=args.threads)}
    engines["with the score"].with_unknown = True
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (64, 32, 32, 3), np.uint8)
    rates: dict[str, list[float]] = {name: [] for name in engines}
    latencies: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            rates[name].append(throughput(engine.run, batch, args.seconds))
            latencies[name].append(latency_ms(engine.run, batch[:1]))
    base = statistics.median(rates["without (--no-unknown)"])
    engine_name = next(iter(engines.values())).name
    print(f"{engine_name}, {args.rounds} interleaved rounds of {args.seconds:g} s, medians\n")
    print("| file | batch-64 img/s | relative | batch-1 latency p50 |")
    print("| --- | --- | --- | --- |")
    for name in engines:
        rate = statistics.median(rates[name])
        print(f"| {name} | {rate:,.1f} | {rate / base:.3f} | "
              f"{statistics.median(latencies[name]):.2f} ms |")


if __name__ == "__main__":
    main()
