#!/usr/bin/env python3
"""The micro-batcher under many callers, some of whom give up: N threads each send one image
at a time through one ``Batcher``; in the cancelling runs each request is cancelled right
after it is submitted with probability P (a client timeout or disconnect).

    python scripts/bench/bench_batcher.py [--model FILE] [--engine E] [--callers 64] [--requests 40] [--cancel 0.1]

Rounds with and without cancels alternate (medians over ``--rounds``; this VM's speed drifts).
Every request that was not cancelled must resolve, with the same labels as single-threaded
``Classifier.predict`` on that image and probabilities within 1e-5; the script exits 1 if not.
Throughput counts the images answered per second of wall time.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import random
import statistics
import sys
import time

import numpy as np

from edgel2.runtime import Batcher, Classifier
from edgel2.runtime.shipped import shipped_model


def test_images(clf: Classifier, count: int) -> np.ndarray:
    data = os.environ.get("EDGEL2_DATA")
    if data:
        from edgel2.data import held_out_images, load_dataset

        return held_out_images(load_dataset(data), count)[0]
    return np.random.default_rng(0).integers(0, 256, (count, *clf.input_size[::-1], 3), np.uint8)


def one_round(batcher: Batcher, images: np.ndarray, callers: int, requests: int,
              cancel: float, seed: int) -> dict:
    """``callers`` threads, each sending ``requests`` images one at a time; a request is
    cancelled right after submitting with probability ``cancel`` (counted if that worked)."""
    def caller(index: int) -> list[tuple[int, object]]:
        rng = random.Random(seed * 1000 + index)
        outcomes = []
        for _ in range(requests):
            i = rng.randrange(len(images))
            future = batcher.submit(images[i])
            if rng.random() < cancel and future.cancel():
                outcomes.append((i, "cancelled"))
                continue
            try:
                outcomes.append((i, future.result(timeout=120)))
            except concurrent.futures.TimeoutError:
                outcomes.append((i, "timed out"))
        return outcomes

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(callers) as pool:
        outcomes = [o for mine in pool.map(caller, range(callers)) for o in mine]
    seconds = time.perf_counter() - start
    answered = [(i, r) for i, r in outcomes if not isinstance(r, str)]
    return {"seconds": seconds, "answered": answered, "img_s": len(answered) / seconds,
            "cancelled": sum(r == "cancelled" for _, r in outcomes),
            "hung": sum(r == "timed out" for _, r in outcomes)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the shipped int8 ONNX")
    parser.add_argument("--engine", default="auto", help="auto, onnxruntime, openvino or litert")
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--requests", type=int, default=40, help="per caller per round")
    parser.add_argument("--cancel", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-delay-ms", type=float, default=2.0)
    args = parser.parse_args()

    clf = Classifier(args.model or shipped_model(), engine=args.engine)
    images = test_images(clf, 512)
    expected = [clf.predict(image, top_k=3)[0] for image in images]  # single-threaded, batch 1
    print(f"# {clf.path.name} on {clf.engine.name}, {os.cpu_count()} cores, {args.callers} callers x {args.requests} "
          f"requests per round, Batcher(max_batch={args.max_batch}, "
          f"max_delay_ms={args.max_delay_ms}), {args.rounds} interleaved rounds")
    rates: dict[float, list[float]] = {0.0: [], args.cancel: []}
    failures = 0
    with Batcher(clf, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, top_k=3,
                 max_queue=args.callers * 2) as batcher:
        one_round(batcher, images, args.callers, 5, 0.0, seed=999)  # warm-up
        for r in range(args.rounds):
            for cancel in rates:
                result = one_round(batcher, images, args.callers, args.requests, cancel, seed=r)
                labels_differ = sum([lab for lab, _ in got] != [lab for lab, _ in expected[i]]
                                    for i, got in result["answered"])
                worst = max(abs(p - q) for i, got in result["answered"]
                            for (_, p), (_, q) in zip(got, expected[i]))
                failures += labels_differ + result["hung"] + (worst > 1e-5)
                rates[cancel].append(result["img_s"])
                print(f"round {r + 1} cancel {cancel:.0%}: {len(result['answered'])} answered, "
                      f"{result['cancelled']} cancelled, {result['hung']} timed out, "
                      f"{labels_differ} label mismatches, max |dp| {worst:.1e}, "
                      f"{result['img_s']:.1f} img/s")
        alive = batcher.submit(images[0]).result(timeout=60) == expected[0]  # still serving
    base, cancelling = (statistics.median(rates[c]) for c in rates)
    print(f"\nmedian img/s answered: no cancels {base:.1f}, {args.cancel:.0%} cancelled "
          f"{cancelling:.1f} ({cancelling / base:.2f}x); serving after all rounds: {alive}; "
          f"mismatches or hangs: {failures}")
    return 1 if failures or not alive else 0


if __name__ == "__main__":
    sys.exit(main())
