"""What ``edgel2 export`` does, step by step: the files to write, each written through the
format's writer into a scratch folder, checked against the Keras model, calibrated, given its
metadata, then moved into place; and the report."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from itertools import product
from pathlib import Path

import numpy as np

from edgel2.data import balanced_subset, held_out_images, load_model_data
from edgel2.errors import EdgeL2Error, first_line, require_whole
from edgel2.export.onnx import INT8_IMAGES, INT8_METHODS, MIN_OPSET
from edgel2.utils import atomic_path, run_batches, scratch_space, writable_folder, write_json
from edgel2.variants import CHECK_IMAGES, FORMATS, PRECISIONS, SUFFIX, precision_name


def exported_file(out_dir: Path, stem: str, fmt: str, precision_name: str) -> Path:
    """Where ``export_model`` writes ``fmt`` at ``precision_name`` (fp32, fp16, dynamic, int8).

    Example:
        >>> exported_file(Path("export"), "model", "tflite", "int8").as_posix()
        'export/model-int8.tflite'
    """
    return out_dir / f"{stem}-{precision_name}{SUFFIX[fmt]}"


def export_model(model_path: str | os.PathLike, formats: Sequence[str] = ("onnx",),
                 precisions: Sequence[str] = ("fp32",), *, data: str | None = None,
                 int8_images: int = INT8_IMAGES, int8_method: str = INT8_METHODS[0],
                 opset: int = MIN_OPSET, out: str | os.PathLike | None = None,
                 check: int | None = CHECK_IMAGES,
                 force: bool = False, max_drop: float = 2.0, allow_drop: bool = False,
                 calibrate: bool = True, flip_average: bool = False,
                 batch: int | None = None, dataset=None, progress: Callable[[str], None] = lambda _: None,
                 check_progress: Callable[[int, int], None] | None = None) -> dict:
    """Export ``model_path`` to every format x precision, check each file, write
    ``export_report.json``; return this call's report. ``check=None`` checks on the whole test
    split, ``check=0`` skips checking. Files that fail their check are not kept.

    ``calibrate`` fits a calibration to the Keras model's logits on half of the test split
    (:mod:`edgel2.calibration.files`) and records it in every file's metadata, so that the
    runtime's probabilities match its accuracy; the report's ``calibration`` entry has the
    figures before and after, on the other half.

    ``flip_average`` exports :func:`edgel2.model.flip_averaged` (each image and its mirror,
    logits averaged: twice the compute) into ``export-flip/`` by default, so that its files
    never mix with the plain ones. ``batch`` fixes the batch dimension at that many images
    (NPUs, NNAPI and other delegates want static shapes), into ``export-b<N>/`` by default;
    the file refuses any other batch, and edgel2's runtime pads to it
    (:class:`edgel2.runtime.engines.FixedBatch`).

    The report file keeps the rows of earlier exports of the same model into the same folder
    whose files are still there (``edgel2 export --format onnx`` then ``--format tflite``, or
    ``edgel2 benchmark`` exporting what is missing), each row with the check it had.

    ``progress`` gets a line per step; ``check_progress(done, total)`` is called after each
    batch of check images (the Keras reference, then each file), for a progress bar.
    """
    # first, so that an install without Keras says so before anything else is missed
    from edgel2.export.source import model_name

    formats = _validated(formats, FORMATS, "format")
    precisions = _validated([precision_name(p) for p in precisions], PRECISIONS, "precision")
    if "onnx" in formats:
        from edgel2.export.onnx import check_opset

        check_opset(opset)

    model_path = Path(model_path)
    if batch is not None:
        require_whole("batch", batch)
    out_dir = Path(out) if out else model_path.parent / default_folder(flip_average, batch)
    stem = model_name(model_path)
    targets = [(f, p, exported_file(out_dir, stem, f, p)) for f in formats for p in precisions]
    if flip_average and any((f, p) == ("tflite", "int8") for f, p, _ in targets):
        raise EdgeL2Error("`flip_average` is not exported to TFLite int8: the full-integer "
                          "converter quantizes the two-view graph badly (80.5 % against 92.9 % "
                          "in Keras, measured); use --format onnx, or a float TFLite "
                          "(--quantize none, fp16 or dynamic)")
    existing = [str(t) for _, _, t in targets if t.exists()]
    if existing and not force:
        raise EdgeL2Error(f"{existing[0]} exists; pass `force` to overwrite")
    writable_folder(out_dir, "the output folder")
    # every temporary file (SavedModels, converters' inputs) goes to a scratch folder inside
    # out_dir: removed at the end, and by the next export if this one is killed
    with scratch_space(out_dir):
        return _export_targets(model_path, out_dir, targets, data=data, int8_images=int8_images,
                               int8_method=int8_method, opset=opset, check=check,
                               max_drop=max_drop, allow_drop=allow_drop, calibrate=calibrate,
                               flip_average=flip_average, batch=batch, dataset=dataset,
                               progress=progress, check_progress=check_progress)


def _export_targets(model_path: Path, out_dir: Path, targets: list, *, data, int8_images, int8_method,
                    opset, check, max_drop, allow_drop, calibrate, flip_average, batch, dataset,
                    progress, check_progress) -> dict:
    """The work of :func:`export_model`, once its arguments are checked."""
    from edgel2.export.source import load_source

    precisions = {precision for _, precision, _ in targets}
    model, base_metadata = load_source(model_path)
    base_metadata["flip_average"] = flip_average
    base_metadata["input"]["shape"][0] = base_metadata["output"]["shape"][0] = batch  # None: any
    if flip_average:
        from edgel2.model import flip_averaged

        model = flip_averaged(model)
    needs_data = "int8" in precisions or check != 0 or calibrate
    ds = (dataset if dataset is not None or not needs_data else
          load_model_data(model_path, tuple(model.input.shape[1:3]), data=data))
    # Data is loaded whenever int8 is asked for; a missing source already raised, saying --data.
    representative = _representative_images(ds, int8_images) if "int8" in precisions else None
    if base_metadata["class_names"] is None:
        base_metadata["class_names"] = _class_names(model_path, model.output.shape[-1], ds, progress)

    images = labels = reference = None
    if check != 0:
        images, labels = held_out_images(ds, check)
        progress(f"Keras reference on {len(labels)} {ds.name} test images")
        reference = run_batches(lambda b: model.predict_on_batch(b), images, 256,
                                check_progress).astype(np.float64)

    calibration_result = None
    if calibrate:
        from edgel2.calibration.files import keras_calibration, metadata_record

        if check is None:  # the reference already covers the whole test split, in order
            logits = reference
        else:
            held = "validation and test" if ds.y_val is not None else "test"
            progress(f"calibrating: Keras logits on the {ds.name} {held} images")
            logits = None
        calibration_result = keras_calibration(model, ds, check_progress, logits=logits)
        base_metadata.update(metadata_record(calibration_result))

    checked_on = None if images is None else ds.name
    checked = {"data": checked_on,
               "check_images": 0 if labels is None else int(len(labels)),
               "keras_accuracy": None if reference is None
               else float(np.mean(reference.argmax(1) == labels))}
    rows = []
    for fmt, precision, target in targets:
        progress(f"{fmt} {precision} -> {target}")
        rows.append({**_export_one(model, fmt, precision, target, opset, representative,
                                   int8_method, images, labels, reference, base_metadata,
                                   max_drop, allow_drop, check_progress, checked_on, batch),
                     **checked})
    # the model as seen from the report's folder: valid from any directory, and after the
    # run directory is moved as a whole
    report = {"model": Path(os.path.relpath(Path(model_path).resolve(), out_dir.resolve())).as_posix(),
              "out": str(out_dir), "flip_average": flip_average, "batch": batch, **checked,
              "calibration": calibration_result, "rows": rows}
    report_path = out_dir / "export_report.json"
    write_json(report_path, _with_earlier_rows(report_path, report))
    return report


def default_folder(flip_average: bool = False, batch: int | None = None) -> str:
    """The export folder's name beside the model, so that variants never mix.

    Example:
        >>> default_folder(), default_folder(True), default_folder(batch=8), default_folder(True, 1)
        ('export', 'export-flip', 'export-b8', 'export-flip-b1')
    """
    return "export" + ("-flip" if flip_average else "") + (f"-b{batch}" if batch else "")


def report_model(report_path: Path, report: dict | None = None) -> Path | None:
    """The ``.keras`` model an ``export_report.json`` belongs to (None if it names none):
    its ``model`` entry, relative to the report's folder; reports written before that held
    it relative to the directory ``export`` ran in, which their ``out`` entry tells.

    Example:
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


def _export_one(model, fmt, precision, target, opset, representative, int8_method, images, labels,
                reference, base_metadata, max_drop, allow_drop, check_progress,
                data_name: str | None, batch: int | None = None) -> dict:
    from edgel2.export import check as checks

    row = {"format": fmt, "precision": precision, "file": target.name,
           "size_mb": None, "accuracy": None, "agreement": None, "max_abs_diff": None,
           "export_s": None, "status": "failed", "reason": None}
    start = time.perf_counter()
    try:
        with atomic_path(target) as tmp:
            slower = _write(fmt, model, tmp, precision, opset, representative, int8_method, batch)
            result = None
            if images is not None:
                try:
                    logits = checks.run_file(tmp, images, on_batch=check_progress)
                except Exception as e:  # e.g. ConvInteger kernels missing in this ORT build
                    raise EdgeL2Error(f"the file does not run in its runtime: "
                                      f"{first_line(e)}") from None
                result = checks.compare(reference, logits, labels)
                row.update(accuracy=result["accuracy"], agreement=result["agreement"],
                           max_abs_diff=result["max_abs_diff"],
                           mean_abs_diff=result["mean_abs_diff"])
                failure = checks.verdict(result, precision, max_drop)
                if failure and not (allow_drop and precision != "fp32"):
                    raise EdgeL2Error(failure)
                row["reason"] = failure
            if slower is not None:
                from edgel2.export.onnx import SLOW_FACTOR

                row["slower_than_fp32"] = slower
                if slower > SLOW_FACTOR and not row["reason"]:
                    row["reason"] = (f"runs {slower:.1f}x slower than fp32 on this machine "
                                     "(activations quantized at run time): prefer int8 or fp32")
            if fmt == "onnx" and precision == "int8":
                from edgel2.export.onnx import integer_conv_share

                integer, total = integer_conv_share(tmp)
                row["integer_convs"] = f"{integer}/{total}"
            metadata = {**base_metadata, "format": fmt, "quantization": precision,
                        "accuracy": None if result is None else {
                            "top1": result["accuracy"], "keras_top1": result["reference_accuracy"],
                            "images": result["images"], "data": f"{data_name} test split"}}
            embed_metadata(fmt, tmp, metadata)
        row.update(status="ok", size_mb=target.stat().st_size / 2**20)
    except EdgeL2Error as e:
        row["reason"] = str(e)
    row["export_s"] = time.perf_counter() - start
    return row


def _write(fmt, model, path, precision, opset, representative, int8_method,
           batch: int | None = None) -> float | None:
    """Write the file; for a dynamic-range ONNX, how much slower than fp32 it runs here."""
    if fmt == "onnx":
        from edgel2.export.onnx import write_onnx

        return write_onnx(model, path, precision, opset, representative, int8_method, batch)
    else:
        from edgel2.export.tflite import write_tflite

        write_tflite(model, path, precision, representative, batch)
        return None


def onnx_metadata_value(value) -> str:
    """A metadata value as ONNX stores it: a string as it is, so that generic readers show
    it without quotes, unless it would read as JSON; anything else as JSON. So
    :func:`edgel2.runtime.modelfile.decode_onnx_metadata` gets back exactly what was written.

    Example:
        >>> [onnx_metadata_value(v) for v in ["edgel2 0.1.0", "1e5", 0.5, ["cat"]]]
        ['edgel2 0.1.0', '"1e5"', '0.5', '["cat"]']
    """
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value)


def embed_metadata(fmt: str, path: Path, metadata: dict, update: bool = False) -> None:
    """Write ``metadata`` into the exported ``fmt`` file at ``path``: ONNX ``metadata_props``
    (JSON values), or the zip appended to a TFLite flatbuffer. ``update`` changes only the
    keys in ``metadata`` and keeps the rest; otherwise they replace what was there."""
    if fmt == "onnx":
        from edgel2.export.onnx import set_metadata

        set_metadata(path, {k: onnx_metadata_value(v) for k, v in metadata.items()},
                     keep_others=update)
    else:
        from edgel2.export.tflite import pack_metadata
        from edgel2.runtime.modelfile import tflite_metadata

        pack_metadata(path, {**(tflite_metadata(path) if update else {}), **metadata})


def _validated(values: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    values = list(allowed) if "all" in values else list(values)
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise EdgeL2Error(f"unknown {what} {unknown[0] if unknown else '(none)'!r}; "
                          f"choose from {', '.join(allowed)} or all")
    return values


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
    """The report as a table people read at a glance."""
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
    if report["keras_accuracy"] is not None:
        lines.append(f"Keras fp32 top-1 {100 * report['keras_accuracy']:.2f} % on "
                     f"{report['check_images']} {report['data']} test images")
    return "\n".join(lines)
