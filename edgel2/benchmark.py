"""``edgel2 benchmark``: every format and precision side by side on this machine.

For a ``.keras`` model (exporting what is missing) or an export folder, each row (Keras fp32 as
the baseline; ONNX Runtime fp32/fp16/int8/dynamic; LiteRT fp32/fp16/dynamic/int8) is measured
in its own process, so one runtime cannot slow another: file size, top-1 on held-out test
images, batch-1 latency p50/p90/p99, and throughput at each batch size after a warm-up, over a
fixed time per cell. With ``repeat`` > 1 every row is measured again in each of several rounds,
one row after another, and each cell reports its median over the rounds: a virtual machine's
speed drifts by tens of percent over minutes, and interleaving spreads that drift over every
row instead of charging it to whichever row ran in the slow minute. Results: a table, JSON (with
a machine description and each round's figures) and a PNG chart.

Example:
    >>> report = benchmark("runs/train/exp/model.keras", seconds=1.0)   # doctest: +SKIP
    >>> print(format_table(report))                                       # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgel2.data import held_out_images, load_dataset, load_dataset_for, load_model_data
from edgel2.errors import EdgeL2Error, OptionError, last_error_line
from edgel2.export import exported_file, report_model
from edgel2.export.check import run_batches
from edgel2.utils import run_config
from edgel2.variants import (
    BENCHMARK_FORMATS,
    BENCHMARK_ROWS,
    CHECK_IMAGES,
    COLOR,
    ENGINE,
    MARKER,
    RUNTIME,
    SHORT_NAME,
    SUFFIX,
)

ROWS = BENCHMARK_ROWS
FORMATS = BENCHMARK_FORMATS


def file_of(fmt: str, precision: str) -> tuple[str, str]:
    """The exported file a row runs, as (format, precision).

    Example:
        >>> file_of("openvino", "bf16"), file_of("tflite", "int8")
        (('onnx', 'fp32'), ('tflite', 'int8'))
    """
    if fmt == "openvino":
        return "onnx", "fp32" if precision == "bf16" else precision
    return fmt, precision


def default_formats() -> tuple[str, ...]:
    """Every runtime that can run here: OpenVINO only when it is installed."""
    import importlib.util

    return tuple(f for f in FORMATS if f != "openvino" or importlib.util.find_spec("openvino"))


def has_bf16() -> bool:
    """Whether this CPU computes in bfloat16 (AVX512_BF16 or AMX), read from /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def benchmark(source: str | os.PathLike, *, data: str | None = None,
              formats: Sequence[str] | None = None, engine: str = "auto",
              batch_sizes: Sequence[int] = (1, 8, 64), threads: int | None = None,
              provider: str = "auto", seconds: float = 2.0, check: int | None = CHECK_IMAGES,
              min_accuracy: float | None = None, repeat: int = 1, dataset=None,
              export_missing: bool | None = None,
              progress: Callable[[str], None] = lambda _: None) -> dict:
    """Measure every row; return the report (see the module docstring).

    ``source`` is a ``.keras`` model or an export folder. ``export_missing`` exports the
    files the rows need that are not there yet (from the folder's model, named in its
    ``export_report.json``); by default only for a ``.keras`` source: an export folder is
    measured as it is, and a row without its file is ``skipped``. ``data`` defaults to the
    data the model was trained on (:func:`edgel2.data.load_model_data`).
    """
    source = Path(source)
    keras_path, export_dir = _locate(source)
    if export_missing is None:
        export_missing = source.suffix == ".keras"
    if export_missing and keras_path is None:
        raise EdgeL2Error(f"cannot export the missing files: {export_dir}/export_report.json "
                          "names no .keras model that is still there")
    formats = default_formats() if formats is None else formats
    if engine != "auto":  # that engine's rows, and Keras as the baseline
        formats = [f for f in formats if ENGINE.get(f, engine) == engine]
        if formats in ([], ["keras"]):
            raise OptionError(f"engine {engine} runs none of the formats asked for")
    rows = [(f, p) for f, p in ROWS if f in formats and (p != "bf16" or has_bf16())]
    if not rows:
        raise EdgeL2Error(f"no known format in {', '.join(formats)}; choose from {', '.join(FORMATS)}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    ds = dataset if dataset is not None else _load_data(data, keras_path, export_dir)
    images, labels = held_out_images(ds, check)

    if export_missing and keras_path is not None:  # (checked above: one line if missing)
        _export_missing(keras_path, export_dir, rows, ds, progress, **_made_as(export_dir))
    asked_threads, threads = threads, threads or os.cpu_count() or 1
    results, paths = [], []
    for fmt, precision in rows:
        path = keras_path if fmt == "keras" else exported_file(
            export_dir, _stem(keras_path, export_dir), *file_of(fmt, precision))
        row: dict[str, Any] = {"format": fmt, "precision": precision, "runtime": RUNTIME[fmt],
               "file": None if path is None else str(path), "status": "failed", "reason": None}
        if path is None or not path.is_file():  # not there to measure: listed, not a failure
            row.update(status="skipped",
                       reason="no such file" if path else "no .keras model to measure")
        results.append(row)
        paths.append(path)
    rounds: list[list[dict]] = [[] for _ in rows]
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "check.npz", images=images, labels=labels)
        for round_index in range(repeat):
            for row, path, measured in zip(results, paths, rounds):
                if row["reason"]:                   # missing, or failed in an earlier round
                    continue
                progress(f"{row['runtime']} {row['precision']}: {path}"
                         + (f" (round {round_index + 1} of {repeat})" if repeat > 1 else ""))
                cells = _measure_in_child(row["format"], row["precision"], path,
                                          Path(tmp) / "check.npz", batch_sizes, threads, provider,
                                          seconds, accuracy=round_index == 0)
                if "reason" in cells:
                    row["reason"] = cells["reason"]
                else:
                    measured.append(cells)
    for row, measured in zip(results, rounds):
        if not row["reason"]:
            row.update(status="ok", **_median_cells(measured))
            if repeat > 1:
                row["rounds"] = [{k: m[k] for k in ("latency_ms", "throughput")} for m in measured]

    baseline = next((r for r in results if r["format"] == "keras" and r["status"] == "ok"), None)
    for row in results:
        if row["status"] != "ok":
            continue
        if min_accuracy is not None and (row["accuracy"] or 0.0) < min_accuracy:
            row["status"] = "low accuracy"
            row["reason"] = f"top-1 {100 * row['accuracy']:.2f} % < --min-accuracy {100 * min_accuracy:g} %"
        if baseline is not None:
            row["speedup"] = {str(b): row["throughput"][str(b)] / baseline["throughput"][str(b)]
                              for b in batch_sizes}
            if row["accuracy"] is not None:  # None with --check 0
                row["accuracy_delta"] = row["accuracy"] - baseline["accuracy"]
    report = {"source": str(source), "export_dir": str(export_dir), "data": ds.name,
              "check_images": int(len(labels)),
              "batch_sizes": list(batch_sizes), "threads": threads, "seconds_per_cell": seconds,
              "repeat": repeat, "provider": provider, "machine": machine(load), "rows": results}
    from edgel2.runtime.choices import probe_enabled

    if provider in ("auto", "cpu") and probe_enabled():  # what `auto` runs on this CPU
        report["auto"] = remember_choices(results, list(batch_sizes), asked_threads, repeat)
    return report


def remember_choices(rows: list[dict], batch_sizes: list[int], threads: int | None,
                     rounds: int) -> dict:
    """Store what ``auto`` should run on this machine, from the benchmark's rows: for each
    precision, for the ONNX file, the TFLite file and the pair of both, the engine with the
    lowest batch-1 p50 (the latency workload) and the highest throughput at each batch size
    above 1 (the throughput workload), where :mod:`edgel2.runtime.choices` finds them when a
    model is opened. A fuller measurement than the first open's race replaces it.

    Returns:
        What a folder of these files runs, with its figure: ``{"precision": p, "latency":
        "litert m-int8.tflite 1.58 ms", "64": ...}`` for the precision it opens
        (``FOLDER_PRECISIONS``), or {} when none was measured.
    """
    from edgel2.runtime.modelfile import FOLDER_PRECISIONS

    measured = [r for r in rows if r["status"] == "ok" and r["format"] != "keras"
                and r["precision"] != "bf16"]
    summary: dict = {}
    for precision in FOLDER_PRECISIONS:
        group = [r for r in measured if r["precision"] == precision]
        if group:
            picks = _remember_group(group, precision, batch_sizes, threads, rounds)
            summary = summary or {"precision": precision, **picks}
    return summary


def _remember_group(group: list[dict], precision: str, batch_sizes: list[int],
                    threads: int | None, rounds: int) -> dict:
    """:func:`remember_choices` for the rows of one precision; what the pair (or the one
    file measured) runs, by workload (``latency`` or a batch size)."""
    from edgel2.runtime import choices
    from edgel2.runtime.probe import LATENCY, THROUGHPUT, Candidate, EngineChoice, Measured

    hashes = {Path(r["file"]): choices.file_hash(Path(r["file"]).read_bytes()) for r in group}
    formats = sorted({file_of(r["format"], precision)[0] for r in group})
    workloads = [(LATENCY, 1, lambda r: r["latency_ms"]["p50"] / 1000)] + [
        (THROUGHPUT, b, lambda r, b=b: 1 / r["throughput"][str(b)]) for b in batch_sizes if b > 1]
    picks: dict = {}
    for subset in [[f] for f in formats] + ([formats] if len(formats) > 1 else []):
        rows = [r for r in group if file_of(r["format"], precision)[0] in subset]
        files = sorted({hashes[Path(r["file"])] for r in rows})
        for workload, batch, seconds in workloads:
            def candidate(r: dict, workload: str = workload) -> Candidate:
                return Candidate(ENGINE[r["format"]], Path(r["file"]), threads,
                                 workload if r["format"] == "openvino" else None)
            ranked = [(candidate(r), seconds(r)) for r in sorted(rows, key=seconds)]
            choice = EngineChoice(workload, batch, [Measured(c, c.label, s, rounds)
                                                    for c, s in ranked],
                                  "edgel2 benchmark", choices.now())
            choices.save(choices.choice_key(files, workload, batch, threads, "f32"), choice,
                         hashes)
            picks[workload if batch == 1 else str(batch)] = \
                f"{choice.chosen} {choice.figure(choice.measured[0])}"
    return picks


def _locate(source: Path) -> tuple[Path | None, Path]:
    if source.is_dir():
        model = report_model(source / "export_report.json")
        return (model if model and model.is_file() else None), source
    if source.suffix == ".keras" and source.is_file():
        return source, source.parent / "export"
    raise EdgeL2Error(f"not a .keras model or an export folder: {source}")


def _stem(keras_path: Path | None, export_dir: Path) -> str:
    if keras_path is not None:
        from edgel2.export.source import model_name

        return model_name(keras_path)
    names = sorted(p.name for p in export_dir.glob("*-fp32.onnx")) + sorted(
        p.name for p in export_dir.glob("*.onnx")) + sorted(p.name for p in export_dir.glob("*.tflite"))
    if not names:
        raise EdgeL2Error(f"no exported files in {export_dir}")
    return names[0].rsplit("-", 1)[0]


def _made_as(export_dir: Path) -> dict:
    """How the folder's files were exported (flip-averaged, a fixed batch), from its report."""
    try:
        report = json.loads((export_dir / "export_report.json").read_text())
    except (OSError, ValueError):
        report = None
    if not isinstance(report, dict):
        return {"flip_average": False, "batch": None}
    batch = report.get("batch")
    return {"flip_average": report.get("flip_average") is True,
            "batch": batch if isinstance(batch, int) and not isinstance(batch, bool)
            and batch > 0 else None}


def _export_missing(keras_path: Path, export_dir: Path, rows, ds, progress,
                    flip_average: bool = False, batch: int | None = None) -> None:
    """Export the files the rows need that are not in ``export_dir``, the way the files
    already there were made (flip-averaged or not, a fixed batch or not; TFLite int8 has no
    flip-averaged file)."""
    from edgel2.backend import use_backend

    use_backend("tensorflow")
    from edgel2.export import export_model

    stem = _stem(keras_path, export_dir)
    files = {file_of(f, p) for f, p in rows if f != "keras"}
    for fmt in ("onnx", "tflite"):
        missing = sorted(p for f, p in files if f == fmt and not
                         exported_file(export_dir, stem, fmt, p).is_file()
                         and not (flip_average and (fmt, p) == ("tflite", "int8")))
        if missing:
            progress(f"exporting {fmt} {', '.join(missing)}")
            export_model(keras_path, [fmt], missing, dataset=ds, check=0, out=export_dir,
                         flip_average=flip_average, batch=batch)


def _load_data(data, keras_path: Path | None, export_dir: Path):
    """The test images at the model's input size (a fine-tuned model's may differ from its
    folder's images), which the run's config.json or any exported file's metadata gives
    (as stored when neither says), from the data the model was trained on unless ``data``
    says otherwise."""
    model, size = _model_and_size(keras_path, export_dir)
    if size is None:
        return load_dataset(data)
    return load_model_data(model, size, data=data) if model else load_dataset_for(data, size)


def _model_and_size(keras_path: Path | None, export_dir: Path
                    ) -> tuple[Path | None, tuple[int, int] | None]:
    """A model file that remembers the data, and the input size (height, width)."""
    from edgel2.runtime.modelfile import read_metadata

    files = sorted(p for p in export_dir.glob("*") if p.suffix in SUFFIX.values()) \
        if export_dir.is_dir() else []
    described = run_config(keras_path) if keras_path is not None else {}
    try:
        if described:
            height, width = described["model"]["input_shape"][:2]
            return keras_path, (int(height), int(width))
        height, width = read_metadata(files[0])["input"]["shape"][1:3]
        return files[0], (int(height), int(width))
    except (OSError, ValueError, KeyError, TypeError, IndexError, EdgeL2Error):
        return (keras_path or (files[0] if files else None)), None


def _measure_in_child(fmt, precision, path, check_file, batch_sizes, threads, provider, seconds,
                      accuracy: bool = True) -> dict:
    spec = json.dumps({"format": fmt, "precision": precision, "path": str(path),
                       "check": str(check_file),
                       "batch_sizes": list(batch_sizes), "threads": threads,
                       "provider": provider, "seconds": seconds, "accuracy": accuracy})
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    proc = subprocess.run([sys.executable, "-m", "edgel2.benchmark", str(os.getpid()), spec], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"reason": last_error_line(proc.stderr, proc.returncode)[:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_cells(measured: list[dict]) -> dict:
    """One row from its rounds: size and accuracy from the first, each speed cell the median.

    Example:
        >>> rounds = [{"size_mb": 1.0, "accuracy": 0.9, "latency_ms": {"p50": 2.0},
        ...            "throughput": {"64": 100.0}},
        ...           {"latency_ms": {"p50": 4.0}, "throughput": {"64": 300.0}},
        ...           {"latency_ms": {"p50": 3.0}, "throughput": {"64": 200.0}}]
        >>> _median_cells(rounds)["latency_ms"], _median_cells(rounds)["throughput"]
        ({'p50': 3.0}, {'64': 200.0})
    """
    first = measured[0]
    return {"size_mb": first["size_mb"], "accuracy": first["accuracy"],
            **{group: {key: float(np.median([m[group][key] for m in measured]))
                       for key in first[group]} for group in ("latency_ms", "throughput")}}


# --- the child process ------------------------------------------------------------------

def _runner(fmt: str, precision: str, path: Path, threads: int, provider: str
            ) -> tuple[Callable[[np.ndarray], np.ndarray], Callable | None]:
    """The row's ``run(batch)``, and its engine's ``run_stream`` (None for Keras)."""
    if fmt == "keras":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        from edgel2.checkpoint import as_float32, load_model

        model = as_float32(load_model(path))
        return (lambda batch: np.asarray(model.predict_on_batch(batch))), None
    from edgel2.runtime.auto import open_engine

    engine = open_engine(path, providers=provider, threads=threads, engine=ENGINE[fmt],
                         precision="bf16" if precision == "bf16" else "f32")
    return engine.run, engine.run_stream


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
    run, stream = _runner(spec["format"], spec["precision"], path, spec["threads"], spec["provider"])
    check = np.load(spec["check"])
    images, labels = check["images"], check["labels"]
    result: dict[str, Any] = {"size_mb": path.stat().st_size / 2**20}
    if not len(images):                          # --check 0: speed only, on zero images
        result["accuracy"], images = None, np.zeros((1, *images.shape[1:]), np.uint8)
    elif spec.get("accuracy", True):             # later rounds measure speed only
        result["accuracy"] = float(np.mean(run_batches(run, images, 100).argmax(1) == labels))
    return {**result, **time_cells(run, images, spec["batch_sizes"], spec["seconds"], stream)}


def machine(load: float | None = None) -> dict:
    """CPU model, cores, clock, load and library versions."""
    from edgel2.backend import library_versions
    from edgel2.runtime.choices import cpu_model

    mhz = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                mhz = float(line.split(":", 1)[1])
                break
    except (OSError, ValueError):
        pass
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "mhz": mhz, "load_1min_at_start": load,
            "platform": platform.platform(), "versions": library_versions()}


def format_table(report: dict) -> str:
    """The report as a table read at a glance; speed-ups are against Keras fp32 in this run."""
    sizes = report["batch_sizes"]
    head = (f"{'runtime':<13} {'prec':<7} {'size MB':>7} {'top-1 %':>7} {'p50 ms':>7} {'p90 ms':>7} "
            f"{'p99 ms':>7} " + " ".join(f"{'img/s b' + str(b):>10}" for b in sizes) +
            f" {'x Keras':>8}  status")
    lines = [head, "-" * len(head)]
    for r in report["rows"]:
        name = SHORT_NAME[r["format"]]
        if "throughput" not in r:
            lines.append(f"{name:<13} {r['precision']:<7} {'-':>7} {'-':>7} {'-':>7} {'-':>7} {'-':>7} "
                         + " ".join(f"{'-':>10}" for _ in sizes) + f" {'-':>8}  {r['status']}: {r['reason']}")
            continue
        lat = r["latency_ms"]
        speed = r.get("speedup", {}).get(str(sizes[-1]))
        lines.append(
            f"{name:<13} {r['precision']:<7} {r['size_mb']:>7.2f} "
            f"{'-' if r['accuracy'] is None else format(100 * r['accuracy'], '.2f'):>7} "
            f"{lat['p50']:>7.2f} {lat['p90']:>7.2f} {lat['p99']:>7.2f} "
            + " ".join(f"{r['throughput'][str(b)]:>10.1f}" for b in sizes)
            + f" {'-' if speed is None else format(speed, '.2f') + 'x':>8}  {r['status']}"
            + (f": {r['reason']}" if r["reason"] else ""))
    lines.append(fastest_line(report))
    m = report["machine"]
    lines.append(f"{m['cpu']}, {m['cores']} cores, {report['threads']} threads, load {_load_text(m)}; "
                 f"top-1 on {report['check_images']} {report['data']} test images; "
                 f"x Keras at batch {sizes[-1]}")
    return "\n".join(lines)


def fastest_line(report: dict) -> str:
    """Which exported row is fastest at batch-1 latency and at each batch size.

    Example:
        >>> rows = [{"format": "onnx", "precision": "int8", "status": "ok",
        ...          "latency_ms": {"p50": 1.3}, "throughput": {"64": 1100.0}},
        ...         {"format": "openvino", "precision": "int8", "status": "ok",
        ...          "latency_ms": {"p50": 1.2}, "throughput": {"64": 1250.0}}]
        >>> fastest_line({"batch_sizes": [64], "rows": rows})
        'fastest: batch-1 p50 OpenVINO int8 1.20 ms; b64 OpenVINO int8 1250.0 img/s (1.14x the next engine)'
    """
    rows = [r for r in report["rows"] if r["status"] == "ok" and r["format"] != "keras"]
    if not rows:
        return "fastest: no exported file was measured"

    def name(r):
        return f"{SHORT_NAME[r['format']]} {r['precision']}"

    quickest = min(rows, key=lambda r: r["latency_ms"]["p50"])
    parts = [f"batch-1 p50 {name(quickest)} {quickest['latency_ms']['p50']:.2f} ms"]
    for b in report["batch_sizes"]:
        ranked = sorted(rows, key=lambda r: -r["throughput"][str(b)])
        best = ranked[0]
        other = next((r for r in ranked if r["format"] != best["format"]), None)
        parts.append(f"b{b} {name(best)} {best['throughput'][str(b)]:.1f} img/s" + (
            f" ({best['throughput'][str(b)] / other['throughput'][str(b)]:.2f}x the next engine)"
            if other else ""))
    auto = report.get("auto") or {}
    if auto:
        parts.append(f"auto here ({auto['precision']}, remembered): batch-1 {auto['latency']}"
                     + "".join(f", b{b} {auto[str(b)]}" for b in report["batch_sizes"]
                               if str(b) in auto))
    return "fastest: " + "; ".join(parts)


def _load_text(machine_info: dict) -> str:
    load = machine_info["load_1min_at_start"]
    return "unknown" if load is None else f"{load:.2f}"


# Rings of one size per runtime: two rows at the same spot (ONNX Runtime and LiteRT fp32 often
# are) stay visible as concentric rings instead of one hiding the other.
RING_SIZE = {"keras": 260, "onnx": 180, "tflite": 110, "openvino": 60}
MIN_ACCURACY_SPAN = 2.0  # points: a 0.1-point gap must not fill the whole axis


def plot_report(report: dict, path: str | os.PathLike) -> Path:
    """The :func:`benchmark_figure` as a PNG."""
    from edgel2.plots import _pyplot, _save

    return _save(benchmark_figure(report), _pyplot(), path)


def benchmark_figure(report: dict):
    """Accuracy against batch-1 latency, one ring per measured row, titled with the model,
    data and machine; the legend sits outside the axes and the accuracy axis spans at least
    :data:`MIN_ACCURACY_SPAN` points."""
    from matplotlib.ticker import LogLocator, ScalarFormatter

    from edgel2.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    measured = [r for r in report["rows"] if "latency_ms" in r and r["accuracy"] is not None]
    for r in measured:
        ax.scatter(r["latency_ms"]["p50"], 100 * r["accuracy"], s=RING_SIZE[r["format"]],
                   facecolors="none", edgecolors=COLOR[r["format"]], linewidths=1.6,
                   marker=MARKER[r["precision"]], label=f"{SHORT_NAME[r['format']]} {r['precision']}")
    if measured:
        accuracies = [100 * r["accuracy"] for r in measured]
        middle = (max(accuracies) + min(accuracies)) / 2
        half = max(MIN_ACCURACY_SPAN / 2, (max(accuracies) - min(accuracies)) / 2 + 0.25)
        ax.set_ylim(middle - half, middle + half)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    model = Path(next((r["file"] for r in measured if r.get("file")), report["source"])).stem
    rounds = f", median of {report['repeat']} rounds" if report.get("repeat", 1) > 1 else ""
    ax.set(xlabel="batch-1 latency p50 (ms, log scale)",
           ylabel=f"top-1 on {report['check_images']} {report['data']} test images (%)",
           xscale="log",
           title=f"{model.rsplit('-', 1)[0]}: accuracy against batch-1 latency\n"
                 f"{report['machine']['cpu']}, {report['threads']} threads{rounds}")
    # plain millisecond ticks ("2", "5", "10") rather than matplotlib's "2x10^0"
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    from edgel2.utils import die_with_parent

    die_with_parent(int(sys.argv[1]))
    print(json.dumps(_child(json.loads(sys.argv[2]))))
