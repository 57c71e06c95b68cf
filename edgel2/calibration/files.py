"""Calibration of exported files (``edgel2 export --calibrate``, ``edgel2 calibrate``).

The one-parameter map (:func:`edgel2.calibration.fit_calibration`: a temperature, or the
inverse of label smoothing) is fitted on the run's validation split when it has one, else on
one class-balanced half of the test split, and every figure is reported on images the fit did
not see (the test split, or its other half: :func:`edgel2.calibration.calibration_split`). It
is written into the file's metadata (``"temperature"`` and ``"unsmooth"``, with a
``"calibration"`` record of how they were fitted) only when
:func:`edgel2.calibration.calibration_refusal` finds nothing against it: enough images, a
parameter inside its search range and a sharpening within bounds, and a lower held-out NLL.
Otherwise the file keeps plain softmax and the record says why. The runtime applies it after
the logits. Why metadata and not the graph: see :mod:`edgel2.calibration`.

Examples:
    >>> report = calibrate_file("models/resnet18-int8.onnx")     # doctest: +SKIP
    >>> report["method"], round(report["after"]["ece"], 3)     # doctest: +SKIP
    ('unsmooth', 0.017)
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgel2.calibration.apply import calibrated_probabilities
from edgel2.calibration.fit import (
    CALIBRATION_SEED,
    calibration_figures,
    calibration_refusal,
    calibration_split,
    fit_calibration,
    reliability_bins,
)
from edgel2.errors import DataError, ModelError
from edgel2.utils import atomic_path, run_batches

if TYPE_CHECKING:
    from edgel2.data import Dataset

PLAIN_SOFTMAX = {"temperature": 1.0, "unsmooth": 0.0}


def fit_held_out(fit_logits: np.ndarray, fit_labels: np.ndarray, report_logits: np.ndarray,
                 report_labels: np.ndarray, fitted_on: str, reported_on: str) -> dict:
    """Fit the calibration on one set of logits and judge it on another: the figures before
    and after on the report images, and ``refused`` (None, or why the file keeps plain
    softmax: :func:`~edgel2.calibration.calibration_refusal`). ``temperature`` and
    ``unsmooth`` are what the file gets: the fit, or plain softmax when refused; ``fitted``
    keeps the fit either way.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> labels = np.repeat(np.arange(10), 30)
        >>> logits = np.eye(10)[labels] * 2 + rng.normal(size=(300, 10))
        >>> r = fit_held_out(logits[:150], labels[:150], logits[150:], labels[150:], "a", "b")
        >>> r["refused"], r["temperature"] == r["fitted"]["temperature"], r["after"]["images"]
        (None, True, 150)
        >>> fit_held_out(logits[:20], labels[:20], logits[20:], labels[20:], "a", "b")["refused"]
        'fitted on 20 images, fewer than the 100 a calibration needs'
    """
    fitted = fit_calibration(fit_logits, fit_labels)
    params = {"temperature": fitted["temperature"], "unsmooth": fitted["unsmooth"]}
    if len(report_labels):
        before = calibration_figures(report_logits, report_labels, 1.0)
        after = calibration_figures(report_logits, report_labels, **params)
        refused = calibration_refusal(fitted, len(fit_labels), before["nll"], after["nll"])
    else:  # a test split of one image a class: nothing left to judge the fit on
        before = after = None  # type: ignore[assignment]  # no figures: `refused` says why
        refused = (calibration_refusal(fitted, len(fit_labels), 1.0, 0.0)
                   or "no held-out images are left to judge it on")
    written = PLAIN_SOFTMAX if refused else params
    return {
        "method": "none" if refused else fitted["method"], **written, "refused": refused,
        "fitted": {"method": fitted["method"], **params},
        "fit_nll": {m: c["fit_nll"] for m, c in fitted["candidates"].items()},
        "fitted_on": {"images": int(len(fit_labels)), "seed": CALIBRATION_SEED,
                      "data": fitted_on},
        "reported_on": f"{reported_on} ({len(report_labels)} images)",
        "before": before, "fit_after": after,
        "after": before if refused else after,
    }


def calibrate_on(ds, logits_of: Callable[[np.ndarray], np.ndarray],
                 test_logits: np.ndarray | None = None) -> dict:
    """:func:`fit_held_out` for a model whose logits ``logits_of(images)`` gives: fitted on
    ``ds``'s validation split and reported on its test split when it has one (a run with
    ``--val-split`` or a ``val/`` folder); else fitted on one class-balanced half of the test
    split and reported on the other. ``test_logits``: the test split's, if the caller has them.
    """
    test_logits = np.asarray(logits_of(ds.x_test) if test_logits is None else test_logits,
                             np.float64)
    fit, report = fit_and_report_split(ds)
    if fit is None:
        val_logits = np.asarray(logits_of(ds.x_val), np.float64)
        return fit_held_out(val_logits, ds.y_val, test_logits, ds.y_test,
                            f"{ds.name} validation split", f"{ds.name} test split")
    return fit_held_out(test_logits[fit], ds.y_test[fit], test_logits[report], ds.y_test[report],
                        f"{ds.name} test split, class-balanced half 1 of 2",
                        f"{ds.name} test split, class-balanced half 2 of 2")


def fit_and_report_split(ds) -> tuple[np.ndarray | None, np.ndarray]:
    """Indices into ``ds``'s test split of the images a calibration is fitted on (None: it is
    fitted on the validation split) and of those it is reported on."""
    if ds.y_val is not None and len(ds.y_val):
        return None, np.arange(len(ds.y_test))
    return calibration_split(ds.y_test, CALIBRATION_SEED)


def keras_calibration(model, ds, on_batch: Callable[[int, int], None] | None = None,
                      logits: np.ndarray | None = None) -> dict:
    """:func:`calibrate_on` a Keras model (``logits``: its logits on ``ds``'s test split,
    if the caller has them)."""
    return calibrate_on(ds, lambda x: run_batches(model.predict_on_batch, x, 256, on_batch),
                        test_logits=logits)


def metadata_record(result: dict) -> dict:
    """What goes into a file's metadata: the parameters the runtime applies (plain softmax
    when the fit was refused), and how they were fitted or why they were refused."""
    record = {k: result[k] for k in ("method", "fitted_on", "reported_on")} | {
        "ece_before": result["before"] and result["before"]["ece"],
        "ece_after": result["after"] and result["after"]["ece"]}
    if result["refused"]:
        record["refused"] = result["refused"]
    return {"temperature": result["temperature"], "unsmooth": result["unsmooth"],
            "calibration": record}


def calibrate_file(path: str | os.PathLike, *, data: str | None = None, dataset: Dataset | None = None,
                   write: bool = True, plot: str | os.PathLike | None = None,
                   on_batch: Callable[[int, int], None] | None = None) -> dict:
    """Fit the calibration to an exported file's own logits and write it into its metadata.

    The file is rewritten atomically; the fit is refused (and nothing written) when it does not
    lower the held-out NLL.

    Args:
        path: An exported ``.onnx`` or ``.tflite`` file.
        data: The data to fit and measure on; None for the data the file's run recorded (its
            validation split fits, when it has one; else half of the test split).
        dataset: The data, already loaded.
        write: False only measures.
        plot: A PNG path for the reliability diagram before and after (the fit's, also when it
            was refused); None draws nothing.
        on_batch: Called with (done, total) after each batch of images.

    Returns:
        ``before`` and ``after`` (ECE, NLL and top-1 on the report images), ``temperature`` and
        ``unsmooth`` (what the file got), ``fitted``, ``refused`` (None, or why the file keeps
        plain softmax), where it was fitted and reported, and ``file``.

    Examples:
        >>> result = calibrate_file("runs/train/photos/export/photos-int8.onnx")   # doctest: +SKIP
        >>> result["before"]["ece"], result["after"]["ece"]                         # doctest: +SKIP
        (0.061, 0.018)
    """
    from edgel2.data import load_model_data
    from edgel2.export import embed_metadata
    from edgel2.runtime.auto import open_engine
    from edgel2.runtime.formats import REFERENCE_ENGINE
    from edgel2.runtime.modelfile import check_metadata, sniff_format

    path = Path(path)
    # the engine its exporter targets, the one export checks it on
    engine = open_engine(path, engine=REFERENCE_ENGINE[sniff_format(path)])
    info = check_metadata(engine.metadata, path, engine.input_shape, engine.input_dtype,
                          engine.output_shape)
    ds = dataset if dataset is not None else load_model_data(path, info.input_size[::-1],
                                                             data=data)
    if len(ds.class_names) != len(info.class_names):
        raise DataError(f"{path.name} has {len(info.class_names)} classes but the data has "
                        f"{len(ds.class_names)}")
    if ds.x_test.shape[1:3] != info.input_size[::-1]:
        raise DataError(f"the data's images are {ds.x_test.shape[2]}x{ds.x_test.shape[1]}, "
                        f"{path.name} takes {info.input_size[0]}x{info.input_size[1]}")
    def logits_of(images: np.ndarray) -> np.ndarray:
        logits = np.asarray(run_batches(engine.run, images, 100, on_batch), np.float64)
        if not np.isfinite(logits).all():
            raise ModelError(f"{path.name} produced non-finite logits on the {ds.name} images")
        return logits

    test_logits = logits_of(ds.x_test)
    result = {"file": str(path), **calibrate_on(ds, logits_of, test_logits)}
    if plot is not None and result["before"] is not None:
        from edgel2.plots import plot_reliability

        report = fit_and_report_split(ds)[1]
        fitted = result["fitted"]
        curves = {f"{label} (ECE {figures['ece']:.3f})":
                  reliability_bins(calibrated_probabilities(test_logits[report], t, a),
                                   ds.y_test[report])
                  for label, figures, t, a in (
                      ("softmax of the logits", result["before"], 1.0, 0.0),
                      (f"{'refused' if result['refused'] else 'calibrated'}: "
                       f"{describe(fitted)}", result["fit_after"], fitted["temperature"],
                       fitted["unsmooth"]))}
        plot_reliability(curves, plot, title=f"{path.name}\n{result['reported_on']}")
        result["plot"] = str(plot)
    if write:
        with atomic_path(path) as tmp:
            tmp.write_bytes(path.read_bytes())
            embed_metadata(sniff_format(path), tmp, metadata_record(result), update=True)
    return result


def describe(result: dict) -> str:
    """The map a result writes, in a few words.

    Examples:
        >>> describe({"method": "unsmooth", "temperature": 1.0, "unsmooth": 0.2049})
        'label smoothing 0.2049 undone'
        >>> describe({"method": "none", "temperature": 1.0, "unsmooth": 0.0})
        'plain softmax'
    """
    if result["method"] == "unsmooth":
        return f"label smoothing {result['unsmooth']:.4f} undone"
    if result["method"] == "none":
        return "plain softmax"
    return f"temperature {result['temperature']:.4f}"


def format_calibration(result: dict) -> str:
    """The before/after table people read, and the one line that says why a fit was refused."""
    fitted = result.get("fitted", result)
    rows = [("softmax of the logits", result["before"]),
            (f"{'fit, refused' if result.get('refused') else 'calibrated'} "
             f"({describe(fitted)})", result.get("fit_after", result["after"]))]
    width = max(len(label) for label, _ in rows)
    lines = [f"{'':<{width}} {'top-1 %':>8} {'confidence':>10} {'ECE':>7} {'NLL':>7}"]
    for label, f in rows:
        lines.append(f"{label:<{width}} " + (" ".join(f"{'-':>{w}}" for w in (8, 10, 7, 7))
                                             if f is None else
                     f"{100 * f['top1']:>8.2f} {f['mean_confidence']:>10.3f} "
                     f"{f['ece']:>7.4f} {f['nll']:>7.4f}"))
    lines.append(f"on the {result['reported_on']}; fitted on the {result['fitted_on']['data']} "
                 f"({result['fitted_on']['images']} images; {ECE_NOTE})")
    if result.get("refused"):
        lines.append(f"calibration not written: {result['refused']}; the file keeps plain softmax")
    return "\n".join(lines)


ECE_NOTE = "ECE over 15 equal-width confidence bins"
