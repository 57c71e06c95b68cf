"""What ``edgel2 export`` does, step by step: the files to write, each written through the
format's writer into a scratch folder, checked against the Keras model, calibrated, given its
metadata, then moved into place; and the report."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from edgel2.data import Dataset, balanced_subset, held_out_images, load_model_data
from edgel2.errors import EdgeL2Error, first_line
from edgel2.export.config import ExportConfig
from edgel2.export.writers import writer_of
from edgel2.utils import (
    atomic_path,
    remove_if_empty,
    run_batches,
    scratch_space,
    writable_folder,
    write_json,
)
from edgel2.variants import FORMATS, PRECISIONS, SUFFIX


def exported_file(out_dir: Path, stem: str, fmt: str, precision_name: str) -> Path:
    """Where :func:`export_model` writes one file.

    Args:
        out_dir: The export folder.
        stem: The model's name (the run's).
        fmt: The format (:data:`~edgel2.variants.FORMATS`).
        precision_name: fp32, fp16, dynamic or int8.

    Returns:
        ``out_dir/<stem>-<precision><suffix>``.

    Examples:
        >>> exported_file(Path("export"), "model", "tflite", "int8").as_posix()
        'export/model-int8.tflite'
    """
    return out_dir / f"{stem}-{precision_name}{SUFFIX[fmt]}"


def export_model(model_path: str | os.PathLike, formats: Sequence[str] | None = None,
                 precisions: Sequence[str] | None = None, *, config: ExportConfig | None = None,
                 dataset: Dataset | None = None,
                 progress: Callable[[str], None] = lambda _: None,
                 check_progress: Callable[[int, int], None] | None = None,
                 **options: Any) -> dict:
    """Export a ``.keras`` model to every format x precision, check each file against the
    Keras model, and write ``export_report.json`` beside the files.

    Files that fail their check are not kept; nothing half-written is left on failure. With
    ``calibrate`` a calibration is fitted to the Keras model's logits on held-out images
    (:mod:`edgel2.calibration.files`) and recorded in every file's metadata, so that the
    runtime's probabilities match its accuracy. With ``unknown`` (the default) every file gets
    a second output, ``unknown_score``, fitted on training images (:mod:`edgel2.unknown`), and
    its own threshold in the metadata, set to keep ``keep`` of held-out known images
    (:mod:`edgel2.unknown.fit`, :mod:`edgel2.export.unknown`). ``flip_average`` exports
    :func:`edgel2.model.flip_averaged` into ``export-flip/``; ``batch`` fixes the batch
    dimension (NPUs and delegates want static shapes) into ``export-b<N>/``; the runtime pads
    to it (:class:`edgel2.runtime.engines.FixedBatch`). The report keeps the rows of earlier
    exports of the same model into the same folder whose files are still there.

    Args:
        model_path: The trained ``.keras`` model (its run's ``config.json`` beside it names
            the classes and the data).
        formats: Formats to write (:data:`~edgel2.variants.FORMATS`, or ``all``); None: the
            config's.
        precisions: Precisions to write (:data:`~edgel2.variants.PRECISIONS`, or ``all``);
            None: the config's.
        config: Every other knob (:class:`~edgel2.export.config.ExportConfig`); None: the
            defaults.
        dataset: The data to quantize, calibrate and check on, already loaded; None: loaded
            as the run recorded (or ``config.data``).
        progress: Gets a line per step.
        check_progress: Called with (done, total) after each batch of check images, for a
            progress bar.
        **options: Any :class:`~edgel2.export.config.ExportConfig` field, overriding
            ``config``'s.

    Returns:
        This call's report: ``rows`` (one per file: format, precision, file, size, top-1,
        agreement with Keras, status and reason), the Keras accuracy, and the calibration.

    Examples:
        >>> report = export_model("runs/exp/model.keras", ["onnx", "tflite"], ["int8"],
        ...                       check=500)                             # doctest: +SKIP
        >>> [(r["file"], r["status"]) for r in report["rows"]]           # doctest: +SKIP
        [('model-int8.onnx', 'ok'), ('model-int8.tflite', 'ok')]
    """
    # first, so that an install without Keras says so before anything else is missed
    from edgel2.export.source import model_name

    config = config or ExportConfig()
    if formats is not None:
        options["formats"] = formats
    if precisions is not None:
        options["precisions"] = precisions
    config = config.replaced(**options).validated()
    model_path = Path(model_path)
    out_dir = Path(config.out) if config.out else \
        model_path.parent / default_folder(config.flip_average, config.batch)
    stem = model_name(model_path)
    targets = [(f, p, exported_file(out_dir, stem, f, p))
               for f in config.formats for p in config.precisions]
    for fmt, precision, _ in targets:
        refusal = writer_of(fmt).refuses(precision, config)
        if refusal:
            raise EdgeL2Error(refusal)
    existing = [str(t) for _, _, t in targets if t.exists()]
    if existing and not config.force:
        raise EdgeL2Error(f"{existing[0]} exists; pass `force` to overwrite")
    if not model_path.is_file():  # before any folder is made for its files
        raise EdgeL2Error(f"model file does not exist: {model_path}")
    created = writable_folder(out_dir, "the output folder")
    try:
        # every temporary file (SavedModels, converters' inputs) goes to a scratch folder
        # inside out_dir: removed at the end, and by the next export if this one is killed
        with scratch_space(out_dir):
            return _export_targets(model_path, out_dir, targets, config, dataset, progress,
                                   check_progress)
    finally:  # a failed export leaves no empty folder behind
        if created is not None:
            remove_if_empty(out_dir, created)


def _export_targets(model_path: Path, out_dir: Path, targets: list, config: ExportConfig,
                    dataset, progress, check_progress) -> dict:
    """The work of :func:`export_model`, once its arguments are checked."""
    from edgel2.export.source import load_source

    precisions = {precision for _, precision, _ in targets}
    model, base_metadata = load_source(model_path)
    base_metadata["flip_average"] = config.flip_average
    base_metadata["input"]["shape"][0] = base_metadata["output"]["shape"][0] = config.batch
    if config.flip_average:
        from edgel2.model import flip_averaged

        model = flip_averaged(model)
        if "network" in base_metadata:  # the network runs twice: on the image and its mirror
            base_metadata["network"]["multiply_adds"] *= 2
    needs_data = "int8" in precisions or config.check != 0 or config.calibrate or config.unknown
    ds = (dataset if dataset is not None or not needs_data else
          load_model_data(model_path, tuple(model.input.shape[1:3]), data=config.data))
    # Data is loaded whenever int8 is asked for; a missing source already raised, saying `data`.
    representative = _representative_images(ds, config.int8_images) \
        if "int8" in precisions else None
    if base_metadata["class_names"] is None:
        base_metadata["class_names"] = _class_names(model_path, model.output.shape[-1], ds, progress)

    check = None
    if config.check != 0:
        images, labels = held_out_images(ds, config.check)
        progress(f"Keras reference on {len(labels)} {ds.name} test images")
        reference = run_batches(lambda b: model.predict_on_batch(b), images, 256,
                                check_progress).astype(np.float64)
        check = Check(images, labels, reference, ds.name, check_progress)

    calibration_result = None
    if config.calibrate:
        from edgel2.calibration.files import keras_calibration, metadata_record

        if config.check is None:  # the reference already covers the whole test split, in order
            logits = None if check is None else check.reference
        else:
            held = "validation and test" if ds.y_val is not None else "test"
            progress(f"calibrating: Keras logits on the {ds.name} {held} images")
            logits = None
        calibration_result = keras_calibration(model, ds, check_progress, logits=logits)
        base_metadata.update(metadata_record(calibration_result))

    unknown, written = None, model  # written: the graph every file holds
    if config.unknown and config.flip_average:
        progress("no unknown score in flip-averaged files (the score reads one view)")
    elif config.unknown:
        from edgel2.unknown.fit import fit_unknown
        from edgel2.unknown.head import with_unknown_score

        unknown = fit_unknown(model, ds, config.unknown_images, config.keep, progress,
                              check_progress)
        written = with_unknown_score(model, unknown.head)

    checked = {"data": None, "check_images": 0, "keras_accuracy": None} if check is None else {
        "data": check.data, "check_images": int(len(check.labels)),
        "keras_accuracy": float(np.mean(check.reference.argmax(1) == check.labels))}
    rows = []
    for fmt, precision, target in targets:
        progress(f"{fmt} {precision} -> {target}")
        rows.append({**_export_one(written, fmt, precision, target, config, representative,
                                   check, base_metadata, unknown), **checked})
    # the model as seen from the report's folder: valid from any directory, and after the
    # run directory is moved as a whole
    report = {"model": Path(os.path.relpath(Path(model_path).resolve(), out_dir.resolve())).as_posix(),
              "out": str(out_dir), "flip_average": config.flip_average, "batch": config.batch,
              **checked, "calibration": calibration_result, "rows": rows}
    report_path = out_dir / "export_report.json"
    write_json(report_path, _with_earlier_rows(report_path, report))
    return report


@dataclass(frozen=True)
class Check:
    """The held-out images every file is compared with Keras on."""

    images: np.ndarray
    labels: np.ndarray
    reference: np.ndarray  # the Keras logits on them
    data: str              # the data's name
    on_batch: Callable[[int, int], None] | None = None


def default_folder(flip_average: bool = False, batch: int | None = None) -> str:
    """The export folder's name beside the model, so that variants never mix.

    Args:
        flip_average: Files of the flip-averaged model.
        batch: Files with this fixed batch dimension; None for any batch.

    Returns:
        ``export``, ``export-flip``, ``export-b<N>`` or ``export-flip-b<N>``.

    Examples:
        >>> default_folder(), default_folder(True), default_folder(batch=8), default_folder(True, 1)
        ('export', 'export-flip', 'export-b8', 'export-flip-b1')
    """
    return "export" + ("-flip" if flip_average else "") + (f"-b{batch}" if batch else "")


def report_model(report_path: Path, report: dict | None = None) -> Path | None:
    """The ``.keras`` model an ``export_report.json`` belongs to.

    Its ``model`` entry is relative to the report's folder; reports written before that held it
    relative to the directory ``export`` ran in, which their ``out`` entry tells.

    Args:
        report_path: The ``export_report.json``.
        report: Its contents, if already read; None reads the file.

    Returns:
        The model's path (which may no longer exist), or None if the report names none.

    Examples:
        >>> report_model(Path("/runs/exp/export/export_report.json"), {"model": "../model.keras"})
        PosixPath('/runs/exp/model.keras')
        >>> report_model(Path("/runs/export_report.json"), [1, 2]) is None  # not edgel2's
        True
        >>> report_model(Path("/r/export_report.json"), {"model": "m.keras", "out": "a/b/c/d"})
        PosixPath('/r/m.keras')
    """
    if report is None:
        try:
            report = json.loads(Path(report_path).read_text())
        except (OSError, ValueError):
            return None
    stored = report.get("model") if isinstance(report, dict) else None
    if not isinstance(stored, str) or not stored:
        return None  # not a report edgel2 wrote
    folder = Path(report_path).parent.resolve()
    candidates = [Path(stored)] if Path(stored).is_absolute() else [folder / stored]
    out = report.get("out")
    out = Path(out) if isinstance(out, str) else Path(".")
    if not Path(stored).is_absolute() and not out.is_absolute() \
            and 0 < len(out.parts) <= len(folder.parents):
        candidates.append(folder.parents[len(out.parts) - 1] / stored)  # the older layout
    return next((Path(os.path.normpath(c)) for c in candidates if c.is_file()),
                Path(os.path.normpath(candidates[0])))


def _with_earlier_rows(path: Path, report: dict) -> dict:
    """``report`` plus the ok rows of the report already at ``path`` (same model) for files
    this call did not write and that are still there, in format x precision order."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return report
    if report_model(path, earlier) != report_model(path, report):
        return report
    written = {r["file"] for r in report["rows"]}
    kept = [r for r in earlier.get("rows", []) if r.get("status") == "ok"
            and r.get("file") not in written and (path.parent / r["file"]).is_file()]
    rank = {fp: i for i, fp in enumerate(product(FORMATS, PRECISIONS))}
    rows = sorted(kept + report["rows"], key=lambda r: rank.get((r["format"], r["precision"]), -1))
    return {**report, "rows": rows}


def _export_one(model, fmt: str, precision: str, target: Path, config: ExportConfig,
                representative: np.ndarray | None, check: Check | None,
                base_metadata: dict, unknown=None) -> dict:
    from edgel2.export import check as checks
    from edgel2.export.unknown import file_record

    row: dict[str, Any] = {"format": fmt, "precision": precision, "file": target.name,
           "size_mb": None, "accuracy": None, "agreement": None, "max_abs_diff": None,
           "export_s": None, "status": "failed", "reason": None}
    start = time.perf_counter()
    writer = writer_of(fmt)
    try:
        with atomic_path(target) as tmp:
            extra = writer.write(model, tmp, precision, config, representative)
            result = None
            if check is not None:
                try:
                    logits = checks.run_file(tmp, check.images, on_batch=check.on_batch)
                except Exception as e:  # e.g. ConvInteger kernels missing in this ORT build
                    raise EdgeL2Error(f"the file does not run in its runtime: "
                                      f"{first_line(e)}") from None
                result = checks.compare(check.reference, logits, check.labels)
                row.update(accuracy=result["accuracy"], agreement=result["agreement"],
                           max_abs_diff=result["max_abs_diff"],
                           mean_abs_diff=result["mean_abs_diff"])
                failure = checks.verdict(result, precision, config.max_drop)
                if failure and not (config.allow_drop and precision != "fp32"):
                    raise EdgeL2Error(failure)
                row["reason"] = failure
            advice = extra.pop("advice", None)
            row.update(extra)
            row["reason"] = row["reason"] or advice
            metadata = {**base_metadata, "format": fmt, "precision": precision,
                        "accuracy": None if result is None or check is None else {
                            "top1": result["accuracy"], "keras_top1": result["reference_accuracy"],
                            "images": result["images"], "data": f"{check.data} test split"}}
            if unknown is not None:
                metadata["unknown"] = file_record(tmp, unknown, check.on_batch if check else None)
                row.update(unknown_threshold=metadata["unknown"]["threshold"],
                           unknown_flagged=metadata["unknown"]["flagged"])
            writer.embed_metadata(tmp, metadata)
        row.update(status="ok", size_mb=target.stat().st_size / 2**20)
        written = writer.companions(target, precision, config, metadata, row)
        if written:
            row["companions"] = [p.name for p in written]
    except EdgeL2Error as e:
        row["reason"] = str(e)
    row["export_s"] = time.perf_counter() - start
    return row


def embed_metadata(fmt: str, path: Path, metadata: dict, update: bool = False) -> None:
    """Write edgel2's metadata into an exported file, through its format's writer.

    ONNX keeps it in ``metadata_props`` (JSON values); TFLite in TFLite Support metadata and a
    zip appended to the flatbuffer.

    Args:
        fmt: The file's format.
        path: The file, rewritten in place (callers write into a temporary copy).
        metadata: The keys and values to write.
        update: Change only the keys in ``metadata`` and keep the rest; otherwise they replace
            what was there.

    Examples:
        >>> embed_metadata("onnx", Path("m.onnx"), {"temperature": 1.4}, update=True)  # doctest: +SKIP
    """
    writer_of(fmt).embed_metadata(path, metadata, update)


def micro_lines(rows: list[dict]) -> list[str]:
    """A line per int8 TFLite file on what TensorFlow Lite Micro needs to run it.

    Examples:
        >>> micro_lines([{"file": "m-int8.tflite", "micro_arena_bytes": 53760,
        ...               "size_mb": 0.3, "status": "ok"}])[0]   # doctest: +ELLIPSIS
        'TensorFlow Lite Micro: m-int8.tflite needs a 52.5 KiB tensor arena and 307.2 KiB of flash...'
    """
    lines = []
    for row in rows:
        if row.get("status") != "ok" or "micro_arena_bytes" not in row:
            continue
        if row["micro_arena_bytes"] is None:
            lines.append(f"TensorFlow Lite Micro: {row['file']}: {row.get('micro')}")
            continue
        written = row.get("companions")
        lines.append(f"TensorFlow Lite Micro: {row['file']} needs a "
                     f"{row['micro_arena_bytes'] / 1024:.1f} KiB tensor arena and "
                     f"{row['size_mb'] * 1024:.1f} KiB of flash (measured)"
                     + (f"; C source: {', '.join(written)}" if written else ""))
    return lines


def _class_names(model_path: Path, count: int, ds, progress) -> list[str]:
    """Names for a model whose run config.json (which holds them) is not beside it."""
    if ds is not None and len(ds.class_names) == count:
        progress(f"no config.json beside {model_path.name}: class names taken from the data")
        return list(ds.class_names)
    progress(f"warning: no config.json beside {model_path.name} and no data to name the "
             f"classes: the files will say class_0 .. class_{count - 1}")
    return [f"class_{i}" for i in range(count)]


def _representative_images(ds, count: int) -> np.ndarray:
    return balanced_subset(ds.x_train, ds.y_train, count, seed=0)[0]


def format_table(report: dict) -> str:
    """The export report as a table people read at a glance.

    Args:
        report: What :func:`export_model` returned.

    Returns:
        One row per file (format, precision, size, top-1, agreement with Keras, largest logit
        difference, export time, status), then the calibration and the Keras top-1.

    Examples:
        >>> print(format_table(export_model("m.keras")))     # doctest: +SKIP
    """
    header = (f"{'format':<7} {'precision':<9} {'file':<28} {'size MB':>8} {'top-1 %':>8} "
              f"{'agree %':>8} {'max|dlogit|':>11} {'export s':>8}  status")
    lines = [header, "-" * len(header)]
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"
    for r in report["rows"]:
        lines.append(
            f"{r['format']:<7} {r['precision']:<9} {r['file']:<28} "
            f"{'-' if r['size_mb'] is None else format(r['size_mb'], '.2f'):>8} "
            f"{pct(r['accuracy']):>8} {pct(r['agreement']):>8} "
            f"{'-' if r['max_abs_diff'] is None else format(r['max_abs_diff'], '.3g'):>11} "
            f"{r['export_s']:>8.1f}  {r['status']}" + (f": {r['reason']}" if r["reason"] else ""))
    calibration = report.get("calibration")
    if calibration and calibration.get("refused"):
        before, after = calibration["before"], calibration.get("fit_after")
        lines.append(f"not calibrated (every file keeps plain softmax): {calibration['refused']}"
                     + (f" (the fit's NLL {before['nll']:.4f} -> {after['nll']:.4f} on the "
                        f"{calibration['reported_on']})" if before and after else ""))
    elif calibration:
        before, after = calibration["before"], calibration["after"]
        from edgel2.calibration.files import describe

        lines.append(f"calibrated ({describe(calibration)}, in every file's "
                     f"metadata): Keras ECE {before['ece']:.4f} -> {after['ece']:.4f}, NLL "
                     f"{before['nll']:.4f} -> {after['nll']:.4f} on the "
                     f"{calibration['reported_on']}; fitted on the "
                     f"{calibration['fitted_on']['data']}")
    lines += micro_lines(report["rows"])
    if report["keras_accuracy"] is not None:
        lines.append(f"Keras fp32 top-1 {100 * report['keras_accuracy']:.2f} % on "
                     f"{report['check_images']} {report['data']} test images")
    return "\n".join(lines)
