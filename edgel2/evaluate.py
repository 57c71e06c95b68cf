"""Evaluation of a trained ``.keras`` model: top-1, per-class accuracy, confusion matrix."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import keras
import numpy as np

import edgel2.augment  # noqa: F401  (registers the custom layers for loading)
import edgel2.model  # noqa: F401
from edgel2.data import Dataset
from edgel2.errors import EdgeL2Error
from edgel2.plots import plot_confusion
from edgel2.utils import write_json


def load_model(path: str | os.PathLike) -> keras.Model:
    """Load a ``.keras`` file saved by edgel2, with one clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise EdgeL2Error(f"model file does not exist: {path}")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise EdgeL2Error(f"not a Keras model file (.keras zip): {path}")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for corrupt archives
        raise EdgeL2Error(f"cannot load {path}: {str(e).splitlines()[0]}") from None


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns.

    Example:
        >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2).tolist()
        [[1, 0], [1, 1]]
    """
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def evaluate(model: keras.Model, dataset: Dataset, batch_size: int = 256,
             verbose: int = 1) -> dict:
    """Top-1 accuracy, per-class accuracy and the confusion matrix on the test split.

    Example:
        >>> report = evaluate(load_model("runs/train/exp/model.keras"), load_dataset())  # doctest: +SKIP
        >>> report["accuracy"]                                                             # doctest: +SKIP
        0.9312
    """
    if model.output.shape[-1] != dataset.num_classes:
        raise EdgeL2Error(f"model predicts {model.output.shape[-1]} classes but the data has "
                          f"{dataset.num_classes}")
    logits = model.predict(dataset.x_test, batch_size=batch_size, verbose=verbose)
    predicted = np.argmax(logits, axis=-1)
    matrix = confusion_matrix(dataset.y_test, predicted, dataset.num_classes)
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    return {
        "accuracy": float(np.mean(predicted == dataset.y_test)),
        "images": int(len(dataset.y_test)),
        "per_class": {name: float(acc) for name, acc in zip(dataset.class_names, per_class)},
        "confusion": matrix.tolist(),
        "class_names": list(dataset.class_names),
        "data": {"name": dataset.name, "source": dataset.source, "fingerprint": dataset.fingerprint},
    }


def save_report(report: dict, out_dir: str | os.PathLike, title: str = "") -> dict[str, Path]:
    """Write ``eval.json`` and ``confusion.png`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    paths = {"json": write_json(out_dir / "eval.json", report),
             "png": plot_confusion(np.array(report["confusion"]), report["class_names"],
                                   out_dir / "confusion.png",
                                   title=title or f"{report['data']['name']} top-1 "
                                                  f"{100 * report['accuracy']:.2f} %")}
    return paths
