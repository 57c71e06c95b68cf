"""Evaluation of a model on a test split: top-1, per-class accuracy, confusion matrix.

The model is a trained ``.keras`` file (Keras) or an exported ``.onnx``/``.tflite`` file (the
runtime, no TensorFlow, on the engine the user picks), and both give the same report, the way
Ultralytics' ``val`` takes any exported format.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
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
             on_batch: OnBatch | None = None, ood: Sequence[str | os.PathLike] = ()) -> dict:
    """Top-1 accuracy, per-class accuracy and the confusion matrix of a Keras model.

    Args:
        model: A Keras model that maps uint8 images to logits.
        dataset: The data whose test split is used.
        batch_size: Images per ``predict_on_batch``.
        on_batch: Called with (done, total) after each batch.
        ood: Folders of images of none of the classes: the unknown score ``edgel2 export``
            would write is fitted and thresholded as export does
            (:func:`edgel2.unknown.fit.fit_unknown`, the default share kept) and measured on
            them in float32 (:func:`unknown_report`).

    Returns:
        ``accuracy``, ``per_class``, ``confusion``, ``class_names``, ``images`` and ``data``;
        with ``ood``, ``unknown``.

    Examples:
        >>> report = evaluate(load_model("runs/train/exp/model.keras"), load_dataset())  # doctest: +SKIP
        >>> report["accuracy"]                                                             # doctest: +SKIP
        0.9312
    """
    from edgel2.utils import run_batches

    classes = model.output.shape[-1]
    _check_classes(classes, dataset)
    if not ood:
        logits = run_batches(model.predict_on_batch, dataset.x_test, batch_size, on_batch)
        return report_from_logits(logits, dataset)
    from edgel2.unknown.fit import UNKNOWN_IMAGES, fit_unknown
    from edgel2.unknown.head import OUTPUT, with_unknown_score
    from edgel2.unknown.scores import DEFAULT_KEEP, threshold_for

    # the folders first: a bad one is one line before any pass over the images
    sets = load_ood_sets(ood, (dataset.x_test.shape[2], dataset.x_test.shape[1]))
    fit = fit_unknown(model, dataset, UNKNOWN_IMAGES, DEFAULT_KEEP, lambda _: None, on_batch)
    scored = with_unknown_score(model, fit.head)

    def run(images: np.ndarray) -> np.ndarray:
        out = scored.predict_on_batch(images)
        return np.concatenate([out["logits"], out[OUTPUT]], axis=1)

    threshold = threshold_for(run_batches(run, fit.threshold_images, batch_size)[:, -1],
                              DEFAULT_KEEP)
    outputs = run_batches(run, dataset.x_test, batch_size, on_batch)  # logits and scores at once
    report = report_from_logits(outputs[:, :classes], dataset)
    report["unknown"] = unknown_report(
        outputs[:, classes], outputs[:, :classes].argmax(1) == dataset.y_test,
        {name: run_batches(run, images, batch_size)[:, -1] for name, images in sets.items()},
        threshold)
    return report


def evaluate_file(path: str | os.PathLike, dataset: Dataset, *, engine: str = "auto",
                  batch_size: int = 64, threads: int | None = None,
                  on_batch: OnBatch | None = None,
                  ood: Sequence[str | os.PathLike] = ()) -> dict:
    """:func:`evaluate` for an exported file, through the runtime.

    Args:
        path: An exported ``.onnx`` or ``.tflite`` file.
        dataset: The data whose test split is used, at the file's input size.
        engine: ``auto`` or an engine's name.
        batch_size: Images per engine call.
        threads: The engine's threads (None: every core).
        on_batch: Called with (done, total) after each batch.
        ood: Folders of images of none of the classes (:func:`unknown_report`).

    Returns:
        :func:`evaluate`'s report, plus ``model`` (the file, its format, precision and engine),
        ``calibration`` (ECE and NLL of the probabilities the runtime gives, see
        :mod:`edgel2.calibration`) and, for a file with the unknown score, ``unknown``.

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
    if ood and not classifier.engine.with_unknown:
        raise EdgeL2Error(f"{Path(path).name} has no unknown score (export it again with "
                          "edgel2 export, which adds it): `ood` cannot be measured")
    # the folders first: a bad one is one line before any pass over the images
    sets = load_ood_sets(ood, classifier.input_size)
    outputs = run_batches(classifier.engine.run, dataset.x_test, batch_size, on_batch)
    classes = len(classifier.class_names)
    logits = outputs[:, :classes]
    report = report_from_logits(logits, dataset)
    report["model"] = {"file": str(path), "format": classifier.metadata.get("format"),
                       "precision": file_precision(classifier.metadata),
                       "engine": classifier.engine.name}
    if np.isfinite(logits).all():
        report["calibration"] = calibration_figures(logits, dataset.y_test,
                                                    classifier.temperature, classifier.unsmooth)
    if classifier.engine.with_unknown:
        report["unknown"] = unknown_report(
            outputs[:, classes], logits.argmax(1) == dataset.y_test,
            {name: run_batches(classifier.engine.run, images, batch_size, on_batch)[:, -1]
             for name, images in sets.items()},
            classifier.unknown_threshold)
    return report


def format_unknown(report: dict) -> str:
    """:func:`unknown_report` as a table: a row per out-of-distribution set, then the share
    of test images kept and their top-1.

    Examples:
        >>> print(format_unknown({"threshold": 2.0, "images": 10, "kept": 0.9, "top1": 0.8,
        ...     "kept_top1": 0.85, "sets": {"noise": {"images": 5, "auroc": 0.99,
        ...     "fpr95": 0.0, "flagged": 1.0}}}))
        unknown   images   AUROC   FPR95  flagged
        noise          5   0.990   0.000   100.0%
        kept 90.0% of 10 test images (threshold 2); top-1 of those kept 85.00 % (all: 80.00 %)
    """
    lines = [f"{'unknown':<8}{'images':>8}{'AUROC':>8}{'FPR95':>8}{'flagged':>9}"]
    for name, row in report["sets"].items():
        flagged = "-" if row["flagged"] is None else f"{100 * row['flagged']:.1f}%"
        lines.append(f"{name[:8]:<8}{row['images']:>8}{row['auroc']:>8.3f}{row['fpr95']:>8.3f}"
                     f"{flagged:>9}")
    if report["kept"] is not None:
        lines.append(f"kept {100 * report['kept']:.1f}% of {report['images']} test images "
                     f"(threshold {report['threshold']:.4g}); top-1 of those kept "
                     f"{100 * report['kept_top1']:.2f} % (all: {100 * report['top1']:.2f} %)")
    return "\n".join(lines if report["sets"] or report["kept"] is not None else lines[1:])


def load_ood_sets(folders: Sequence[str | os.PathLike], size: tuple[int, int]
                  ) -> dict[str, np.ndarray]:
    """Each folder of images of none of the classes (``--ood``), decoded and resized to
    ``size`` (width, height) as the runtime does, by its name. A folder holding only folders
    (the probe ``scripts/tools/make_ood_probe.py`` writes) is one set per subfolder.

    Raises:
        EdgeL2Error: A folder that does not exist, cannot be read or holds no images, or an
            image that cannot be decoded (named).
    """
    from edgel2.errors import ImageError
    from edgel2.runtime.io import expand_paths
    from edgel2.runtime.preprocess import IMAGE_SUFFIXES, load_image

    def images_in(folder: Path) -> list[str]:
        """Image files under ``folder``, found as ``edgel2 infer`` finds them."""
        found = expand_paths([str(folder)])
        unreadable = [e for e in found if not isinstance(e, str)]
        if unreadable:
            raise EdgeL2Error(f"`ood` folder {unreadable[0].source}: {unreadable[0].error}")
        return [e for e in found if isinstance(e, str)]

    def decoded(file: str) -> np.ndarray:
        try:
            return load_image(file, size)
        except ImageError as e:
            raise ImageError(f"`ood` image {file}: {e}") from None

    sets: dict[str, np.ndarray] = {}
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise EdgeL2Error(f"`ood` folder does not exist: {root}")
        own = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        parts = [root] if own else sorted(p for p in root.iterdir() if p.is_dir()) or [root]
        for part in parts:
            files = images_in(part)
            if not files:
                raise EdgeL2Error(f"`ood` folder {part} holds no images")
            name = part.name if part.name not in sets else str(part)
            sets[name] = np.stack([decoded(f) for f in files])
    return sets


def unknown_report(known: np.ndarray, correct: np.ndarray, ood: dict[str, np.ndarray],
                   threshold: float | None) -> dict:
    """How well the unknown score tells the test images from each out-of-distribution set.

    Args:
        known: The score of every test image.
        correct: Whether each test image is classified right.
        ood: The scores of each out-of-distribution set, by name.
        threshold: The file's threshold (None: the share flagged is not reported).

    Returns:
        ``kept`` (share of test images under the threshold), ``kept_top1`` (top-1 of those)
        and ``top1``; per set ``auroc``, ``fpr95`` (share of the set kept at the threshold
        that keeps 95 % of the test images) and ``flagged`` (share over the file's threshold).

    Examples:
        >>> r = unknown_report(np.arange(100.0), np.ones(100, bool), {"noise": np.full(5, 500.0)}, 94.5)
        >>> r["kept"], r["sets"]["noise"]["auroc"], r["sets"]["noise"]["flagged"]
        (0.95, 1.0, 1.0)
    """
    from edgel2.unknown.scores import auroc, fpr_at

    kept = known <= threshold if threshold is not None else np.ones(len(known), bool)
    report: dict[str, Any] = {
        "threshold": threshold, "images": int(len(known)),
        "kept": None if threshold is None else float(kept.mean()),
        "top1": float(correct.mean()),
        "kept_top1": float(correct[kept].mean()) if kept.any() else None, "sets": {}}
    for name, scores in ood.items():
        report["sets"][name] = {
            "images": int(len(scores)), "auroc": auroc(known, scores),
            "fpr95": fpr_at(known, scores, 0.95),
            "flagged": None if threshold is None else float(np.mean(scores > threshold))}
    return report


def evaluate_path(model: str | os.PathLike, *, data: str | os.PathLike | None = None,
                  test_split: float | None = None, image_size: int | None = None,
                  engine: str = "auto", threads: int | None = None,
                  batch_size: int | None = None, backend: str | None = None,
                  on_batch: OnBatch | None = None,
                  ood: Sequence[str | os.PathLike] = ()) -> dict:
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
        ood: Folders of images of none of the classes, to measure the unknown score on
            (AUROC, FPR95 and the share flagged, per folder): an exported file's own, or for a
            ``.keras`` model the one export would write (:func:`evaluate`).

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
                             batch_size=batch_size or 64, on_batch=on_batch, ood=ood)
    from edgel2.backend import use_backend

    use_backend(backend)
    from edgel2.checkpoint import load_model

    keras_model = load_model(path)
    dataset = load_model_data(path, tuple(keras_model.input.shape[1:3]), data=data,
                              test_split=test_split, image_size=image_size)
    return evaluate(keras_model, dataset, batch_size=batch_size or 256, on_batch=on_batch,
                    ood=ood)


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
