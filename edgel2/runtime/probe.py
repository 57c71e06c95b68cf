"""How ``auto`` picks an engine by measuring it: the ways to run a model that are worth
trying for a workload, a short race between them on this CPU, and the choice it reports.

A static rule ("OpenVINO for ONNX on x86") is right only on the CPU it was measured on: on
one 2-core AMD EPYC LiteRT had the lowest batch-1 latency and OpenVINO the highest batch-64
throughput, on an Intel Xeon OpenVINO led both. So ``auto`` measures the candidates once per
machine, model file and workload (:mod:`edgel2.runtime.choices` remembers the result).

The race is kept honest against a shared machine's noise by interleaving: every candidate
still in the race is measured once per round, one after another, so a slow second charges
all of them rather than one; each figure is the median over rounds, each round's sample
itself a median of several runs (latency) or a few whole batches (throughput); a
candidate is dropped only when it is :data:`DROP_RATIO` behind the best, far beyond the
round-to-round noise (a few %); the rest race on while :data:`PROBE_BUDGET_S` lasts.

Examples:
    >>> laps = {"a": 2.0, "b": 1.0}
    >>> [(m.label, m.seconds) for m in race(["a", "b"], lambda c: laps[c], label=str)]
    [('b', 1.0), ('a', 2.0)]
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edgel2.errors import OptionError

# How the app calls the model. "latency": one image at a time (Classifier.predict, the
# server's micro-batcher), judged by the median batch-1 time. "throughput": many images
# (predict_files, edgel2 infer, Ray), judged by images per second at the batch size.
WORKLOADS = ("latency", "throughput")
LATENCY, THROUGHPUT = WORKLOADS

# The race. A candidate more than DROP_RATIO behind the best after a round is out; the others
# run further rounds while the budget lasts (the first round always runs in full), at most
# MAX_ROUNDS. A latency sample is the median of LATENCY_RUNS batch-1 runs after one untimed
# run (the previous candidate's threads may still be spinning down).
PROBE_BUDGET_S = 0.6
MAX_ROUNDS = 9
DROP_RATIO = 1.2
LATENCY_RUNS = 10

Clock = Callable[[], float]
Contender = TypeVar("Contender", bound=Hashable)


@dataclass(frozen=True)
class Candidate:
    """One way to run the model: an engine, the file it runs and its settings.

    Attributes:
        engine: ``onnxruntime``, ``openvino`` or ``litert``.
        path: The file.
        threads: The engine's threads; None for its default (every core).
        streams: OpenVINO only: ``latency`` (every batch on one stream of all threads) or
            ``throughput`` (a batch in flight on each of several streams).
    """

    engine: str
    path: Path
    threads: int | None = None
    streams: str | None = None

    @property
    def label(self) -> str:
        """``litert resnet18-int8.tflite (1 thread)``: what the choice names."""
        settings = [f"{self.threads} thread" + "s" * (self.threads != 1)] if self.threads else []
        if self.streams:
            settings.append(f"{self.streams.upper()} hint")
        return f"{self.engine} {self.path.name}" + (f" ({', '.join(settings)})" if settings else "")


def check_workload(workload: str) -> str:
    """``workload`` if it is one of :data:`WORKLOADS`, else an :class:`OptionError`."""
    if workload not in WORKLOADS:
        raise OptionError(f"workload must be one of {', '.join(WORKLOADS)}, got {workload!r}")
    return workload


def candidates(engines: Sequence[tuple[str, Path]], workload: str, threads: int | None,
               cores: int) -> list[Candidate]:
    """The settings worth racing for each (engine, file): OpenVINO compiled for the workload
    (its LATENCY or THROUGHPUT hint); ONNX Runtime and LiteRT on every core and, for latency
    on a machine of several cores when ``threads`` is not fixed, on one (a small model can
    lose more to handing work between threads than it gains).

    Examples:
        >>> [c.label for c in candidates([("openvino", Path("m.onnx")),
        ...                               ("litert", Path("m.tflite"))], "latency", None, 2)]
        ['openvino m.onnx (LATENCY hint)', 'litert m.tflite', 'litert m.tflite (1 thread)']
    """
    found = []
    for engine, path in engines:
        if engine == "openvino":
            found.append(Candidate(engine, path, threads, workload))
            continue
        found.append(Candidate(engine, path, threads))
        if threads is None and workload == LATENCY and cores > 1:
            found.append(Candidate(engine, path, 1))
    return found


@dataclass(frozen=True)
class Measured:
    """A contender's figure from the race: seconds per image, the median over its rounds."""

    contender: Any  # a Candidate, when auto races engines
    label: str
    seconds: float
    rounds: int


def race(contenders: Sequence[Contender], sample: Callable[[Contender], float], *,
         label: Callable[[Contender], str], budget_s: float = PROBE_BUDGET_S,
         clock: Clock = time.perf_counter) -> list[Measured]:
    """Measure ``contenders`` in interleaved rounds (see the module docstring) and rank them.

    Args:
        contenders: What to measure, in the order to measure it in each round.
        sample: One measurement of a contender, in seconds per image (lower is better).
        label: A contender's name in the result.
        budget_s: Seconds of measuring after which no new round starts; the first round
            always runs, and a round that would end past the budget is not started.
        clock: Seconds, monotonic (a fake one in tests).

    Returns:
        Every contender's figure, best first: those still in the race by their median, then
        those dropped, also by their median. The first is the winner.
    """
    samples: dict[Contender, list[float]] = {c: [] for c in contenders}
    running = list(contenders)
    start = clock()

    def median(c: Contender) -> float:
        return statistics.median(samples[c])

    for _ in range(MAX_ROUNDS):
        round_start, measured = clock(), len(running)
        for c in running:
            samples[c].append(sample(c))
        best = min(median(c) for c in running)
        running = [c for c in running if median(c) <= best * DROP_RATIO]
        now = clock()
        next_round = (now - round_start) * len(running) / measured  # those left, at this pace
        if len(running) == 1 or now - start + next_round > budget_s:
            break
    dropped = [c for c in contenders if c not in running]
    ranked = sorted(running, key=median) + sorted(dropped, key=median)
    return [Measured(c, label(c), median(c), len(samples[c])) for c in ranked]


def latency_sample(run: Callable[[np.ndarray], object], image: np.ndarray,
                   clock: Clock = time.perf_counter) -> float:
    """Seconds per batch-1 call: the median of :data:`LATENCY_RUNS` timed runs of ``image``
    (``[1, H, W, 3]``) after one untimed run."""
    run(image)
    times = []
    for _ in range(LATENCY_RUNS):
        begin = clock()
        run(image)
        times.append(clock() - begin)
    return statistics.median(times)


def throughput_sample(run_stream: Callable[..., Iterable[object]], batch: np.ndarray, batches: int,
                      clock: Clock = time.perf_counter) -> float:
    """Seconds per image over ``batches`` copies of ``batch`` through an engine's
    ``run_stream`` (which keeps a batch in flight on each of an engine's streams)."""
    begin = clock()
    for _ in run_stream((None, batch) for _ in range(batches)):
        pass
    return (clock() - begin) / (batches * len(batch))


@dataclass
class EngineChoice:
    """What ``auto`` chose and the figures behind it, as shown by ``infer --verbose``, the
    server's log and metadata, and ``Classifier.describe()``.

    Attributes:
        workload: ``latency`` or ``throughput``.
        batch: The batch size it was measured at (1 for latency).
        measured: Every candidate's figure, the chosen one first.
        source: ``measured`` (now), ``cached`` (an earlier measurement on this machine) or
            ``edgel2 benchmark``.
        date: When it was measured (ISO 8601, UTC).

    Examples:
        >>> print(Classifier("models/").engine.choice)          # doctest: +SKIP
        litert resnet18-int8.tflite, batch-1 median 1.52 ms: the fastest of 5 measured ...
    """

    workload: str
    batch: int
    measured: list[Measured]
    source: str
    date: str

    @property
    def chosen(self) -> str:
        return self.measured[0].label

    def figure(self, m: Measured) -> str:
        """A figure as the workload reads it: ms per image at batch 1, or images per second."""
        if self.workload == LATENCY:
            return f"{1000 * m.seconds:.2f} ms"
        return f"{1 / m.seconds:,.0f} img/s"

    def summary(self) -> dict[str, Any]:
        """The choice as JSON-ready fields (the server's metadata endpoint)."""
        return {"workload": self.workload, "batch": self.batch, "source": self.source,
                "date": self.date, "chosen": self.chosen,
                "measured": [{"candidate": m.label, "figure": self.figure(m)}
                             for m in self.measured]}

    def __str__(self) -> str:
        measure = "batch-1 median" if self.workload == LATENCY else f"batch-{self.batch} throughput"
        best, others = self.measured[0], self.measured[1:]
        text = f"{best.label}, {measure} {self.figure(best)}"
        if others:
            text += (f": the fastest of {len(self.measured)} measured on this CPU (" +
                     "; ".join(f"{m.label} {self.figure(m)}" for m in others) + ")")
        return text + f" [{self.source} {self.date}]"
