"""Measuring every row: which files, in which child processes, over how many rounds, and
the engine choices the figures leave behind (:func:`benchmark`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgel2.backend import cpu_bfloat16
from edgel2.benchmark.report import machine
from edgel2.data import Dataset, held_out_images, load_dataset, load_dataset_for, load_model_data
from edgel2.errors import EdgeL2Error, OptionError, first_line, last_error_line
from edgel2.export import exported_file, report_model
from edgel2.runtime.formats import ENGINE_SPECS, MODEL_SUFFIXES
from edgel2.utils import run_config
from edgel2.variants import (
    BENCHMARK_FORMATS,
    BENCHMARK_ROWS,
    CHECK_IMAGES,
    ENGINE,
    FORMATS,
    RUNTIME,
    file_of,
)

ROWS = BENCHMARK_ROWS


def default_formats() -> tuple[str, ...]:
    """Every runtime that can run here: an engine beside a format's own (OpenVINO) only when
    its package is installed."""
    from edgel2.runtime.choices import engine_versions

    installed = engine_versions()
    return tuple(r for r in BENCHMARK_FORMATS if r in FORMATS or r == "keras"
                 or installed.get(ENGINE_SPECS[ENGINE[r]].package))


def benchmark(source: str | os.PathLike | Sequence[str | os.PathLike], *,
              data: str | None = None,
              formats: Sequence[str] | None = None, engine: str = "auto",
              batch_sizes: Sequence[int] = (1, 8, 64), threads: int | None = None,
              provider: str = "auto", seconds: float = 2.0, check: int | None = CHECK_IMAGES,
              min_accuracy: float | None = None, repeat: int = 1, dataset: Dataset | None = None,
              export_missing: bool | None = None, unknown_cost: bool = False,
              progress: Callable[[str], None] = lambda _: None) -> dict:
    """Measure size, top-1, batch-1 latency and throughput of every format and precision of
    one model or of several (a family: the same data, models of different cost).

    Each row runs in its own process, in interleaved rounds (``repeat``) over every model's
    rows, with the median of each cell kept. On a CPU, the figures also tell ``auto`` what to
    run on this machine (:func:`remember_choices`).

    Args:
        source: A ``.keras`` model or an export folder, or several: each row names its model
            (``model``); a folder holding several models' files counts as each of them.
        data: The data whose test split measures top-1; None for the data the model was
            trained on (:func:`edgel2.data.load_model_data`).
        formats: The runtimes to measure (:data:`~edgel2.variants.BENCHMARK_FORMATS`); None:
            every one installed.
        engine: ``auto``, or only that engine's rows (and Keras as the baseline).
        batch_sizes: Batch sizes of the throughput cells.
        threads: Threads per engine; None for every core.
        provider: ONNX Runtime's provider.
        seconds: Measuring time per cell.
        check: Test images top-1 is measured on (None: all; 0: speed only).
        min_accuracy: A row whose top-1 is below this share fails.
        repeat: Interleaved rounds; each cell is the median.
        dataset: The data, already loaded.
        export_missing: Export the files the rows need that are not there yet; None: only for a
            ``.keras`` source (an export folder is measured as it is, and a row without its
            file is ``skipped``).
        unknown_cost: Also time each exported file that has the unknown score as a copy
            without it (:func:`edgel2.export.unknown.without_unknown`), in the same rounds:
            each such row gets ``without_unknown`` (its speed cells) and ``unknown_cost`` (the
            share of throughput the score takes, per batch size).
        progress: Gets a line per step.

    Returns:
        The report: ``rows`` (one per model x runtime x precision, each with its cells or a
        stated reason, and the network's parameters and multiply-adds when its file says),
        ``models``, ``machine``, the settings, and ``auto`` (what ``auto`` will run here, for
        the first model).

    Examples:
        >>> report = benchmark("runs/train/exp/model.keras", repeat=3)     # doctest: +SKIP
        >>> print(format_table(report))                                     # doctest: +SKIP
    """
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    models = [model for one in sources for model in _models_of(Path(one))]
    if export_missing is None:
        export_missing = all(Path(one).suffix == ".keras" for one in sources)
    if export_missing and any(keras_path is None for keras_path, _, _ in models):
        export_dir = next(folder for keras_path, folder, _ in models if keras_path is None)
        raise EdgeL2Error(f"cannot export the missing files: {export_dir}/export_report.json "
                          "names no .keras model that is still there")
    formats = default_formats() if formats is None else formats
    if engine != "auto":  # that engine's rows, and Keras as the baseline
        formats = [f for f in formats if ENGINE.get(f, engine) == engine]
        if formats in ([], ["keras"]):
            raise OptionError(f"engine {engine} runs none of the formats asked for")
    kinds = [(f, p) for f, p in ROWS if f in formats and (p != "bf16" or cpu_bfloat16() is True)]
    if not kinds:
        raise EdgeL2Error(f"no known format in {', '.join(formats)}; choose from {', '.join(BENCHMARK_FORMATS)}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    keras_path, export_dir, stem = models[0]
    ds = dataset if dataset is not None else _load_data(data, keras_path, export_dir, stem)
    _check_same_size(models, ds)
    images, labels = held_out_images(ds, check)

    if export_missing:
        for keras_path, export_dir, _ in models:
            assert keras_path is not None  # (checked above: one line if missing)
            _export_missing(keras_path, export_dir, kinds, ds, progress, **_made_as(export_dir))
    asked_threads, threads = threads, threads or os.cpu_count() or 1
    results, paths = [], []
    for keras_path, export_dir, stem in models:
        for fmt, precision in kinds:
            path = keras_path if fmt == "keras" else exported_file(
                export_dir, stem, *file_of(fmt, precision))
            row: dict[str, Any] = {
                "model": stem, "format": fmt, "precision": precision, "runtime": RUNTIME[fmt],
                "file": None if path is None else str(path), "status": "failed", "reason": None}
            if path is None or not path.is_file():  # not there to measure: listed, not a failure
                row.update(status="skipped",
                           reason="no such file" if path else "no .keras model to measure")
            results.append(row)
            paths.append(path)
    rounds: list[list[dict]] = [[] for _ in results]
    bare_rounds: list[list[dict]] = [[] for _ in results]
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "check.npz", images=images, labels=labels)
        bare = _without_unknown(results, paths, Path(tmp)) if unknown_cost else [None] * len(results)
        for round_index in range(repeat):
            for row, path, bare_path, measured, bare_measured in zip(results, paths, bare, rounds,
                                                                     bare_rounds):
                if row["reason"]:                   # missing, or failed in an earlier round
                    continue
                progress(f"{row['model']} {row['runtime']} {row['precision']}: {path}"
                         + (f" (round {round_index + 1} of {repeat})" if repeat > 1 else ""))
                # the copy without the score right after the file: the same minute's speed
                for file, into, accuracy in ((path, measured, round_index == 0),
                                             (bare_path, bare_measured, False)):
                    cells = {} if file is None or row["reason"] else _measure_in_child(
                        row["format"], row["precision"], file, Path(tmp) / "check.npz",
                        batch_sizes, threads, provider, seconds, accuracy=accuracy)
                    if "reason" in cells:
                        row["reason"] = cells["reason"]
                    elif cells:
                        into.append(cells)
    for row, measured, bare_measured in zip(results, rounds, bare_rounds):
        if not row["reason"]:
            row.update(status="ok", **_median_cells(measured))
            if repeat > 1:
                row["rounds"] = [{k: m[k] for k in ("latency_ms", "throughput")} for m in measured]
            if bare_measured:
                row["without_unknown"] = _median_speed(bare_measured)
                row["unknown_cost"] = {b: 1 - row["throughput"][b] / speed
                                       for b, speed in row["without_unknown"]["throughput"].items()}

    baselines = {r["model"]: r for r in results if r["format"] == "keras" and r["status"] == "ok"}
    networks = _networks(results)
    for row in results:
        if networks.get(row["model"]):
            row["network"] = networks[row["model"]]
        if row["status"] != "ok":
            continue
        baseline = baselines.get(row["model"])
        if min_accuracy is not None and (row["accuracy"] or 0.0) < min_accuracy:
            row["status"] = "low accuracy"
            row["reason"] = f"top-1 {100 * row['accuracy']:.2f} % < --min-accuracy {100 * min_accuracy:g} %"
        if baseline is not None:
            row["speedup"] = {str(b): row["throughput"][str(b)] / baseline["throughput"][str(b)]
                              for b in batch_sizes}
            if row["accuracy"] is not None:  # None with --check 0
                row["accuracy_delta"] = row["accuracy"] - baseline["accuracy"]
    report = {"source": str(sources[0]), "export_dir": str(models[0][1]),
              "models": [{"model": stem, "source": str(keras_path or folder),
                          "export_dir": str(folder), "network": networks.get(stem)}
                         for keras_path, folder, stem in models],
              "data": ds.name,
              "check_images": int(len(labels)),
              "batch_sizes": list(batch_sizes), "threads": threads, "seconds_per_cell": seconds,
              "repeat": repeat, "provider": provider, "machine": machine(load), "rows": results}
    from edgel2.runtime.choices import probe_enabled

    if provider in ("auto", "cpu") and probe_enabled():  # what `auto` runs on this CPU
        for index, (_, _, stem) in enumerate(models):  # each model's files are remembered
            picks = remember_choices([r for r in results if r["model"] == stem],
                                     list(batch_sizes), asked_threads, repeat)
            if index == 0:
                report["auto"] = picks
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


def _models_of(source: Path) -> list[tuple[Path | None, Path, str]]:
    """The models ``source`` holds, each as (its ``.keras`` file or None, its export folder,
    its files' stem): a ``.keras`` model; an export folder of one model (its report names
    it); or a folder of several models' files, one per stem."""
    if source.suffix == ".keras" and source.is_file():
        model: Path | None = source
        folder = source.parent / "export"
    elif source.is_dir():
        model, folder = report_model(source / "export_report.json"), source
    else:
        raise EdgeL2Error(f"not a .keras model or an export folder: {source}")
    if model is not None and model.is_file():
        from edgel2.export.source import model_name

        return [(model, folder, model_name(model))]
    stems = sorted({p.name.rsplit("-", 1)[0] for suffix in MODEL_SUFFIXES
                    for p in source.glob(f"*-*{suffix}")})
    if not stems:
        raise EdgeL2Error(f"no exported files in {source}")
    return [(None, source, stem) for stem in stems]


def _check_same_size(models: list[tuple[Path | None, Path, str]], ds: Dataset) -> None:
    """Refuse a family whose models take images of different sizes: one test set serves all."""
    wanted = tuple(ds.x_test.shape[1:3])
    for keras_path, export_dir, stem in models:
        size = _model_and_size(keras_path, export_dir, stem)[1]
        if size is not None and tuple(size) != wanted:
            raise EdgeL2Error(f"{stem} takes {size[0]}x{size[1]} images and the first model "
                              f"{wanted[0]}x{wanted[1]}: benchmark models of one image size "
                              "together")


def _networks(rows: list[dict]) -> dict[str, dict]:
    """Each model's network (architecture, parameters, multiply-adds), read from the
    metadata of the first of its files that says."""
    from edgel2.runtime.modelfile import read_metadata

    found: dict[str, dict] = {}
    for row in rows:
        if row["model"] in found or row["format"] == "keras" or row["status"] == "skipped":
            continue
        try:
            network = read_metadata(row["file"]).get("network")
        except (OSError, ValueError, EdgeL2Error):
            continue
        if isinstance(network, dict):
            found[row["model"]] = network
    return found


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
    from edgel2.export import ExportConfig, export_model
    from edgel2.export.source import model_name
    from edgel2.export.writers import writer_of

    stem = model_name(keras_path)
    files = {file_of(f, p) for f, p in rows if f != "keras"}
    made_as = ExportConfig(flip_average=flip_average, batch=batch)
    for fmt in FORMATS:
        missing = sorted(p for f, p in files if f == fmt and not
                         exported_file(export_dir, stem, fmt, p).is_file()
                         and not writer_of(fmt).refuses(p, made_as))
        if missing:
            progress(f"exporting {fmt} {', '.join(missing)}")
            export_model(keras_path, [fmt], missing, dataset=ds, check=0, out=export_dir,
                         flip_average=flip_average, batch=batch)


def _load_data(data, keras_path: Path | None, export_dir: Path, stem: str | None = None):
    """The test images at the model's input size (a fine-tuned model's may differ from its
    folder's images), which the run's config.json or any exported file's metadata gives
    (as stored when neither says), from the data the model was trained on unless ``data``
    says otherwise."""
    model, size = _model_and_size(keras_path, export_dir, stem)
    if size is None:
        return load_dataset(data)
    return load_model_data(model, size, data=data) if model else load_dataset_for(data, size)


def _model_and_size(keras_path: Path | None, export_dir: Path, stem: str | None = None
                    ) -> tuple[Path | None, tuple[int, int] | None]:
    """A model file that remembers the data, and the input size (height, width)."""
    from edgel2.runtime.modelfile import read_metadata

    files = sorted(p for p in export_dir.glob(f"{stem}-*" if stem else "*")
                   if p.suffix in MODEL_SUFFIXES) if export_dir.is_dir() else []
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
    proc = subprocess.run([sys.executable, "-m", "edgel2.benchmark.child", str(os.getpid()), spec], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"reason": last_error_line(proc.stderr, proc.returncode)[:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_cells(measured: list[dict]) -> dict:
    """One row from its rounds: size and accuracy from the first, each speed cell the median.

    Examples:
        >>> rounds = [{"size_mb": 1.0, "accuracy": 0.9, "latency_ms": {"p50": 2.0},
        ...            "throughput": {"64": 100.0}},
        ...           {"latency_ms": {"p50": 4.0}, "throughput": {"64": 300.0}},
        ...           {"latency_ms": {"p50": 3.0}, "throughput": {"64": 200.0}}]
        >>> _median_cells(rounds)["latency_ms"], _median_cells(rounds)["throughput"]
        ({'p50': 3.0}, {'64': 200.0})
    """
    first = measured[0]
    return {"size_mb": first["size_mb"], "accuracy": first["accuracy"], **_median_speed(measured)}


def _median_speed(measured: list[dict]) -> dict:
    """The latency and throughput cells of several rounds, each the median."""
    return {group: {key: float(np.median([m[group][key] for m in measured]))
                    for key in measured[0][group]} for group in ("latency_ms", "throughput")}


def _without_unknown(rows: list[dict], paths: list[Path | None], folder: Path
                     ) -> list[Path | None]:
    """For each row, a copy of its exported file without the unknown score (None: Keras, no
    file, or a file without the score)."""
    from edgel2.export.unknown import without_unknown

    copies: list[Path | None] = []
    for index, (row, path) in enumerate(zip(rows, paths)):
        if row["format"] == "keras" or row["reason"] or path is None:
            copies.append(None)
            continue
        into = folder / f"bare{index}"  # one folder each: the copy keeps the file's name
        into.mkdir()
        try:
            copies.append(without_unknown(path, into))
        except Exception as e:  # its format's library cannot read it (protobuf's own errors)
            row["reason"] = f"cannot read it to remove the unknown score: {first_line(e)}"
            copies.append(None)
    return copies


