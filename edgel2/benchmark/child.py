"""The measured child process: one row's file opened on its engine (or the Keras model),
its top-1 on the check images, batch-1 latency and throughput per batch size, as JSON on
stdout. ``python -m edgel2.benchmark.child PARENT_PID SPEC``."""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgel2.utils import run_batches
from edgel2.variants import ENGINE


def _runner(fmt: str, precision: str, path: Path, threads: int, provider: str
            ) -> tuple[Callable[[np.ndarray], np.ndarray], Callable | None, bool]:
    """The row's ``run(batch)``, its engine's ``run_stream`` (None for Keras), and whether
    ``run`` returns the unknown score as its last column: a file with the score is timed with
    it fetched, as the runtime runs it."""
    if fmt == "keras":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        from edgel2.checkpoint import as_float32, load_model

        model = as_float32(load_model(path))
        return (lambda batch: np.asarray(model.predict_on_batch(batch))), None, False
    from edgel2.runtime.auto import open_engine

    engine = open_engine(path, providers=provider, threads=threads, engine=ENGINE[fmt],
                         compute_dtype="bf16" if precision == "bf16" else "f32")
    engine.with_unknown = engine.has_unknown
    return engine.run, engine.run_stream, engine.with_unknown


def time_cells(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
               batch_sizes: Sequence[int], seconds: float, stream: Callable | None = None) -> dict:
    """Batch-1 latency percentiles (ms) of ``run``, and throughput (images/s) per batch size
    through ``stream`` (an engine's ``run_stream``, which may keep several batches in flight,
    as ``Classifier.predict_files`` does) or, without it, ``run`` in a loop."""
    def batch_of(n: int) -> np.ndarray:
        return np.ascontiguousarray(np.resize(images, (n, *images.shape[1:])))

    one = batch_of(1)
    for _ in range(5):
        run(one)
    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(latencies) < 10:
        t = time.perf_counter()
        run(one)
        latencies.append(1000 * (time.perf_counter() - t))
    stream = stream or (lambda items: ((tag, run(batch)) for tag, batch in items))
    throughput = {}
    for n in batch_sizes:
        batch = batch_of(n)
        for _ in stream((None, batch) for _ in range(2)):
            pass
        count, start = 0, time.perf_counter()

        def batches():  # one stream, for at least `seconds` and 3 batches: read as it goes
            while time.perf_counter() - start < seconds or count < 3 * n:  # noqa: B023
                yield None, batch  # noqa: B023

        for _ in stream(batches()):
            count += n
        throughput[str(n)] = count / (time.perf_counter() - start)
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    return {"latency_ms": {"p50": float(p50), "p90": float(p90), "p99": float(p99)},
            "throughput": throughput}


def _child(spec: dict) -> dict:
    path = Path(spec["path"])
    run, stream, scored = _runner(spec["format"], spec["precision"], path, spec["threads"],
                                  spec["provider"])
    check = np.load(spec["check"])
    images, labels = check["images"], check["labels"]
    result: dict[str, Any] = {"size_mb": path.stat().st_size / 2**20}
    if not len(images):                          # --check 0: speed only, on zero images
        result["accuracy"], images = None, np.zeros((1, *images.shape[1:]), np.uint8)
    elif spec.get("accuracy", True):             # later rounds measure speed only
        outputs = run_batches(run, images, 100)
        logits = outputs[:, :outputs.shape[1] - scored]   # the score, if any, comes last
        result["accuracy"] = float(np.mean(logits.argmax(1) == labels))
    return {**result, **time_cells(run, images, spec["batch_sizes"], spec["seconds"], stream)}



if __name__ == "__main__":
    from edgel2.utils import die_with_parent

    die_with_parent(int(sys.argv[1]))
    print(json.dumps(_child(json.loads(sys.argv[2]))))
