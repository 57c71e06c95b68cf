"""Evaluation of a model on a test split: top-1, per-class accuracy, confusion matrix.

The model is a trained ``.keras`` file (Keras) or an exported ``.onnx``/``.tflite`` file (the
runtime, no TensorFlow, on the engine the user picks), and both give the same report, the way
Ultralytics' ``val`` takes any exported format.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgel2.data import Dataset
from edgel2.errors import EdgeL2Error
from edgel2.plots import plot_confusion
from edgel2.runtime.modelfile import file_precision
from edgel2.utils import write_json

OnBatch = Callable[[int, int], None]  # called with (images done, images in all)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns.

    Examples:
        >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2).tolist()
        [[1, 0], [1, 1]]
    """
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def evaluate(model: Any, dataset: Dataset, batch_size: int = 256,
             on_batch: OnBatch | None = None) -> dict:
    """Top-1 accuracy, per-class accuracy and the confusion matrix of a Keras model.

    Args:
        model: A Keras model that maps uint8 images to logits.
        dataset: The data whose test split is used.
        batch_size: Images per ``predict_on_batch``.
        on_batch: Called with (done, total) after each batch.

    Returns:
        ``accuracy``, ``per_class``, ``confusion``, ``class_names``, ``images`` and ``data``.

    Examples:
        >>> report = evaluate(load_model("runs/train/exp/model.keras"), load_dataset())  # doctest: +SKIP
        >>> report["accuracy"]                                                             # doctest: +SKIP
        0.9312
    """
    from edgel2.utils import run_batches

    _check_classes(model.output.shape[-1], dataset)
    logits = run_batches(model.predict_on_batch, dataset.x_test, batch_size, on_batch)
    return report_from_logits(logits, dataset)


def evaluate_file(path: str | os.PathLike, dataset: Dataset, *, engine: str = "auto",
                  batch_size: int = 64, threads: int | None = None,
                  on_batch: OnBatch | None = None) -> dict:
    """:func:`evaluate` for an exported file, through the runtime.

    Args:
        path: An exported ``.onnx`` or ``.tflite`` file.
        dataset: The data whose test split is used, at the file's input size.
        engine: ``auto`` or an engine's name.
        batch_size: Images per engine call.
        threads: The engine's threads (None: every core).
        on_batch: Called with (done, total) after each batch.

    Returns:
        :func:`evaluate`'s report, plus ``model`` (the file, its format, precision and engine)
        and ``calibration`` (ECE and NLL of the probabilities the runtime gives, see
        :mod:`edgel2.calibration`).

    Examples:
        >>> evaluate_file("models/resnet18-int8.onnx", load_dataset())["accuracy"]   # doctest: +SKIP
        0.9255
    """
    from edgel2.calibration import calibration_figures
    from edgel2.runtime import Classifier
    from edgel2.runtime.probe import THROUGHPUT
    from edgel2.utils import run_batches

    classifier = Classifier(path, engine=engine, threads=threads, batch_size=batch_size,
                            workload=THROUGHPUT)
    _check_classes(len(classifier.class_names), dataset)
    width, height = classifier.input_size
    if dataset.x_test.shape[1:3] != (height, width):
        raise EdgeL2Error(f"the test images are {dataset.x_test.shape[2]}x"
                          f"{dataset.x_test.shape[1]} but {Path(path).name} takes "
                          f"{width}x{height}; pass `image_size` {width}")
    logits = run_batches(classifier.engine.run, dataset.x_test, batch_size, on_batch)
    report = report_from_logits(logits, dataset)
    report["model"] = {"file": str(path), "format": classifier.metadata.get("format"),
                       "precision": file_precision(classifier.metadata),
                       "engine": classifier.engine.name}
    if np.isfinite(logits).all():
        report["calibration"] = calibration_figures(logits, dataset.y_test,
                                                    classifier.temperature, classifier.unsmooth)
    return report


def evaluate_path(model: str | os.PathLike, *, data: str | os.PathLike | None = None,
                  test_split: float | None = None, image_size: int | None = None,
                  engine: str = "auto", threads: int | None = None,
                  batch_size: int | None = None, backend: str | None = None,
                  on_batch: OnBatch | None = None) -> dict:
    """What ``edgel2 eval`` does: evaluate a ``.keras`` model or an exported file on a test split.

    The model is opened before the data loads, so a bad file or a missing extra is one line at
    once, not after decoding 60,000 images.

    Args:
        model: A ``.keras`` model (:func:`evaluate`) or an exported ``.onnx``/``.tflite`` file
            (:func:`evaluate_file`).
        data: The data whose test split is used; None for the data the model was trained on
            (:func:`edgel2.data.load_model_data`).
        test_split: The test fraction of a folder of bare class subfolders.
        image_size: Resize the images to this side.
        engine: For an exported file: ``auto`` or an engine's name.
        threads: For an exported file: the engine's threads (None: every core).
        batch_size: Images per call; None for 256 (``.keras``) or 64 (exported).
        backend: For ``.keras``: the Keras backend (None: as configured).
        on_batch: Called with (done, total) after each batch, for a progress bar.

    Returns:
        The report: ``accuracy``, ``per_class``, ``confusion``, ``class_names``, ``images``,
        ``data``; for an exported file also ``model`` (file, format, precision, engine) and
        ``calibration`` (ECE and NLL of the runtime's probabilities).

    Examples:
        >>> evaluate_path("runs/train/photos/model.keras")["accuracy"]     # doctest: +SKIP
        0.9375
    """
    from edgel2.data import load_model_data

    path = Path(model)
    if not path.is_file():
        raise EdgeL2Error(f"model file does not exist: {path}")
    if path.suffix.lower() != ".keras":
        from edgel2.runtime.modelfile import read_metadata, sniff_format

        sniff_format(path)
        size = tuple(read_metadata(path)["input"]["shape"][1:3])
        dataset = load_model_data(path, size, data=data, test_split=test_split,
                                  image_size=image_size)
        return evaluate_file(path, dataset, engine=engine, threads=threads,
                             batch_size=batch_size or 64, on_batch=on_batch)
    from edgel2.backend import use_backend

    use_backend(backend)
    from edgel2.checkpoint import load_model

    keras_model = load_model(path)
    dataset = load_model_data(path, tuple(keras_model.input.shape[1:3]), data=data,
                              test_split=test_split, image_size=image_size)
    return evaluate(keras_model, dataset, batch_size=batch_size or 256, on_batch=on_batch)


def default_report_folder(model: str | os.PathLike) -> Path:
    """Where ``edgel2 eval`` writes its report: ``eval/`` beside a ``.keras`` model,
    ``eval/FILE-NAME/`` beside an exported file.

    Examples:
        >>> default_report_folder("runs/x/model.keras").as_posix(), default_report_folder("e/m.onnx").as_posix()
        ('runs/x/eval', 'e/eval/m.onnx')
    """
    path = Path(model)
    return path.parent / "eval" if path.suffix.lower() == ".keras" else path.parent / "eval" / path.name


def report_from_logits(logits: np.ndarray, dataset: Dataset) -> dict:
    """The evaluation report of logits over ``dataset``'s test split (any source).

    Examples:
        >>> x = np.zeros((3, 1, 1, 3), np.uint8)
        >>> ds = Dataset(x, np.zeros(3, int), x, np.array([0, 1, 1]), ["a", "b"], name="toy")
        >>> r = report_from_logits(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]), ds)
        >>> r["accuracy"], r["per_class"], r["confusion"]
        (0.6666666666666666, {'a': 1.0, 'b': 0.5}, [[1, 0], [1, 1]])
    """
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


def _check_classes(count: int, dataset: Dataset) -> None:
    if count != dataset.num_classes:
        raise EdgeL2Error(f"model predicts {count} classes but the data has "
                          f"{dataset.num_classes}")


def save_report(report: dict, out_dir: str | os.PathLike, title: str = "") -> dict[str, Path | None]:
    """Write ``eval.json`` and ``confusion.png`` into ``out_dir``; return their paths (the PNG
    is None without matplotlib, as on the runtime-only install that evaluates exported files).
    """
    out_dir = Path(out_dir)
    paths: dict[str, Path | None] = {"json": write_json(out_dir / "eval.json", report), "png": None}
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return paths
    paths["png"] = plot_confusion(np.array(report["confusion"]), report["class_names"],
                                  out_dir / "confusion.png",
                                  title=title or f"{report['data']['name']} top-1 "
                                                 f"{100 * report['accuracy']:.2f} %")
    return paths
