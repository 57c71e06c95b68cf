"""Parity of an exported file with the Keras model it came from, on held-out test images."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgel2.runtime.auto import open_engine
from edgel2.runtime.formats import REFERENCE_ENGINE
from edgel2.runtime.modelfile import sniff_format
from edgel2.utils import run_batches

# fp32 exports must match Keras to float rounding: logits within this fraction of their scale.
FP32_TOLERANCE = 1e-3


def run_file(path: Path, images: np.ndarray, batch_size: int = 100,
             on_batch: Callable[[int, int], None] | None = None,
             unknown: bool = False) -> np.ndarray:
    """Logits of the exported file at ``path`` on uint8 ``images``, with its unknown score as
    a last column if ``unknown``; ``on_batch(done, total)`` after every batch (a progress
    bar)."""
    engine = open_engine(path, engine=REFERENCE_ENGINE[sniff_format(path)])
    engine.with_unknown = unknown and engine.has_unknown
    return run_batches(engine.run, images, batch_size, on_batch)


def compare(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy of both, top-1 agreement and |delta logit| statistics.

    Examples:
        >>> ref = np.array([[2.0, 1.0], [0.0, 1.0]])
        >>> r = compare(ref, ref + 0.5 * np.array([[0, 1], [0, 0]]), np.array([0, 0]))
        >>> r["reference_accuracy"], r["accuracy"], r["agreement"], r["max_abs_diff"]
        (0.5, 0.5, 1.0, 0.5)
    """
    diff = np.abs(logits.astype(np.float64) - reference)
    predicted, expected = logits.argmax(1), reference.argmax(1)
    return {"images": int(len(labels)),
            "reference_accuracy": float(np.mean(expected == labels)),
            "accuracy": float(np.mean(predicted == labels)),
            "agreement": float(np.mean(predicted == expected)),
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "logit_scale": float(np.abs(reference).max())}


def verdict(result: dict, precision: str, max_drop: float) -> str | None:
    """Why the file fails its check, or None if it passes.

    fp32 must agree with Keras to float rounding; a quantized file may lose at most
    ``max_drop`` points of top-1 accuracy.
    """
    if precision == "fp32":
        limit = FP32_TOLERANCE * max(1.0, result["logit_scale"])
        if result["max_abs_diff"] > limit:
            return (f"fp32 logits differ from Keras by up to {result['max_abs_diff']:.3g} "
                    f"(limit {limit:.3g}); agreement {100 * result['agreement']:.1f} %")
        return None
    drop = 100 * (result["reference_accuracy"] - result["accuracy"])
    if drop > max_drop:
        return (f"top-1 {100 * result['accuracy']:.2f} % is {drop:.2f} points below Keras "
                f"({100 * result['reference_accuracy']:.2f} %); limit {max_drop:g}")
    return None
