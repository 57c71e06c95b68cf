"""Calibration of exported files (``edgel2 export --calibrate``, ``edgel2 calibrate``).

The one-parameter map (:func:`edgel2.calibration.fit_calibration`: a temperature, or the
inverse of label smoothing) is fitted on one class-balanced half of the test split and every figure is
reported on the other half (:func:`edgel2.calibration.calibration_split`), so no reported
number comes from images the fit saw. It is written into the file's metadata
(``"temperature"`` and ``"unsmooth"``, with a ``"calibration"`` record of how they were
fitted); the runtime applies it after the logits. Why metadata and not the graph: see
:mod:`edgel2.calibration`.

Example:
    >>> report = calibrate_file("models/resnet18-int8.onnx")     # doctest: +SKIP
    >>> report["method"], round(report["after"]["ece"], 3)     # doctest: +SKIP
    ('unsmooth', 0.017)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from edgel2.calibration import (CALIBRATION_SEED, calibration_figures, calibration_split,
                                fit_calibration, reliability_bins)
from edgel2.runtime.classifier import calibrated_probabilities
from edgel2.errors import DataError, ModelError
from edgel2.export.check import run_batches
from edgel2.utils import atomic_path


def fit_on_test_half(logits: np.ndarray, labels: np.ndarray, data_name: str) -> dict:
    """Fit the calibration to the logits of the test split's first half; figures before and
    after on its second half (and on the whole split, half of which the fit saw).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> labels = np.repeat(np.arange(10), 20)
        >>> logits = np.eye(10)[labels] * 2 + rng.normal(size=(200, 10))
        >>> r = fit_on_test_half(logits, labels, "toy")
        >>> r["fitted_on"]["images"], r["after"]["images"], r["after"]["top1"] == r["before"]["top1"]
        (100, 100, True)
    """
    fit, report = calibration_split(labels, CALIBRATION_SEED)
    fitted = fit_calibration(logits[fit], labels[fit])
    params = {"temperature": fitted["temperature"], "unsmooth": fitted["unsmooth"]}
    return {
        "method": fitted["method"], **params, "fit_nll": {
            m: c["fit_nll"] for m, c in fitted["candidates"].items()},
        "fitted_on": {"images": int(len(fit)), "seed": CALIBRATION_SEED,
                      "data": f"{data_name} test split, class-balanced half 1 of 2"},
        "reported_on": f"{data_name} test split, class-balanced half 2 of 2 ({len(report)} images)",
        "before": calibration_figures(logits[report], labels[report], 1.0),
        "after": calibration_figures(logits[report], labels[report], **params),
        "whole_split_before": calibration_figures(logits, labels),
        "whole_split_after": calibration_figures(logits, labels, **params),
    }


def keras_calibration(model, ds, on_batch: Callable[[int, int], None] | None = None,
                      logits: np.ndarray | None = None) -> dict:
    """:func:`fit_on_test_half` on a Keras model's logits over ``ds``'s test split
    (``logits``, if the caller has them already)."""
    if logits is None:
        logits = run_batches(lambda b: model.predict_on_batch(b), ds.x_test, 256, on_batch)
    return fit_on_test_half(np.asarray(logits, np.float64), ds.y_test, ds.name)


def metadata_record(result: dict) -> dict:
    """What goes into a file's metadata: the parameters the runtime applies, and how they were
    fitted."""
    return {"temperature": result["temperature"], "unsmooth": result["unsmooth"],
            "calibration": {k: result[k] for k in ("method", "fitted_on", "reported_on")}
            | {"ece_before": result["before"]["ece"], "ece_after": result["after"]["ece"]}}


def calibrate_file(path: str | os.PathLike, *, data: str | None = None, dataset=None,
                   write: bool = True, plot: str | os.PathLike | None = None,
                   on_batch: Callable[[int, int], None] | None = None) -> dict:
    """Fit the calibration to an exported file's own logits on ``data``'s test split, write it
    into the file's metadata (atomically; ``write=False`` only measures) and, if ``plot``
    names a PNG, draw the reliability diagram before and after. Returns
    :func:`fit_on_test_half`'s figures plus ``file``.
    """
    from edgel2.data import load_dataset_for
    from edgel2.export import embed_metadata
    from edgel2.runtime.engines import REFERENCE_ENGINE, open_engine
    from edgel2.runtime.modelfile import check_metadata, sniff_format

    path = Path(path)
    # the engine its exporter targets, the one export checks it on
    engine = open_engine(path, engine=REFERENCE_ENGINE[sniff_format(path)])
    info = check_metadata(engine.metadata, path, engine.input_shape, engine.input_dtype,
                          engine.output_shape)
    ds = dataset if dataset is not None else load_dataset_for(data, info.input_size[::-1])
    if len(ds.class_names) != len(info.class_names):
        raise DataError(f"{path.name} has {len(info.class_names)} classes but the data has "
                        f"{len(ds.class_names)}")
    if ds.x_test.shape[1:3] != info.input_size[::-1]:
        raise DataError(f"the data's images are {ds.x_test.shape[2]}x{ds.x_test.shape[1]}, "
                        f"{path.name} takes {info.input_size[0]}x{info.input_size[1]}")
    logits = np.asarray(run_batches(engine.run, ds.x_test, 100, on_batch), np.float64)
    if not np.isfinite(logits).all():
        raise ModelError(f"{path.name} produced non-finite logits on the test images")
    result = {"file": str(path), **fit_on_test_half(logits, ds.y_test, ds.name)}
    if plot is not None:
        from edgel2.plots import plot_reliability

        _, report = calibration_split(ds.y_test, CALIBRATION_SEED)
        curves = {f"{label} (ECE {result[key]['ece']:.3f})":
                  reliability_bins(calibrated_probabilities(logits[report], t, a), ds.y_test[report])
                  for label, key, t, a in (("softmax of the logits", "before", 1.0, 0.0),
                                           (f"calibrated: {describe(result)}", "after",
                                            result["temperature"], result["unsmooth"]))}
        plot_reliability(curves, plot, title=f"{path.name}\n{result['reported_on']}")
        result["plot"] = str(plot)
    if write:
        with atomic_path(path) as tmp:
            tmp.write_bytes(path.read_bytes())
            embed_metadata(sniff_format(path), tmp, metadata_record(result), update=True)
    return result


def describe(result: dict) -> str:
    """The fitted map in a few words.

    Example:
        >>> describe({"method": "unsmooth", "temperature": 1.0, "unsmooth": 0.2049})
        'label smoothing 0.2049 undone'
    """
    if result["method"] == "unsmooth":
        return f"label smoothing {result['unsmooth']:.4f} undone"
    return f"temperature {result['temperature']:.4f}"


def format_calibration(result: dict) -> str:
    """The before/after table people read."""
    rows = [("softmax of the logits", result["before"]),
            (f"calibrated ({describe(result)})", result["after"])]
    width = max(len(label) for label, _ in rows)
    lines = [f"{'':<{width}} {'top-1 %':>8} {'confidence':>10} {'ECE':>7} {'NLL':>7}"]
    for label, f in rows:
        lines.append(f"{label:<{width}} {100 * f['top1']:>8.2f} {f['mean_confidence']:>10.3f} "
                     f"{f['ece']:>7.4f} {f['nll']:>7.4f}")
    lines.append(f"on the {result['reported_on']}; fitted on the other "
                 f"{result['fitted_on']['images']} images ({ECE_NOTE})")
    return "\n".join(lines)


ECE_NOTE = "ECE over 15 equal-width confidence bins"
