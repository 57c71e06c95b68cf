"""``Classifier``: an exported edgel2 model behind one call, for apps and ``edgel2 infer``."""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgel2.calibration.apply import calibrated_probabilities
from edgel2.errors import ImageError, ModelError, PredictionError, first_line, require_whole
from edgel2.runtime.auto import open_engine
from edgel2.runtime.engines import Engine
from edgel2.runtime.modelfile import check_metadata, file_precision
from edgel2.runtime.preprocess import ImageLike, load_image
from edgel2.runtime.probe import LATENCY

NON_FINITE = "the model produced non-finite logits"


class Prediction(list[tuple[str, float]]):
    """Top-k ``(label, probability)`` of one image, best first: a list, with what the file's
    unknown score says of the image (both None for a file without it, or with it turned off).

    Args:
        ranked: ``(label, probability)`` pairs, best first.
        unknown_score: The image's unknown score, or None.
        unknown: Whether the score is over the file's threshold, or None.

    Attributes:
        unknown: True when the image scores above the file's threshold: it is probably none
            of the classes (the labels are still given).
        unknown_score: The score itself (higher is more unknown; see the file's metadata).

    Examples:
        >>> p = Prediction([("cat", 0.91)], unknown_score=7.5, unknown=True)
        >>> p == [("cat", 0.91)], p.unknown, p[0][0]
        (True, True, 'cat')
    """

    def __init__(self, ranked: Sequence[tuple[str, float]] = (),
                 unknown_score: float | None = None, unknown: bool | None = None):
        super().__init__(ranked)
        self.unknown_score, self.unknown = unknown_score, unknown

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (Ray, process pools) keep the attributes
        return (Prediction, (list(self), self.unknown_score, self.unknown))


@dataclass
class FileResult:
    """One input of a stream: its top-k predictions, or the reason it failed.

    Examples:
        >>> FileResult("cat.png", Prediction([("cat", 0.91)])).error is None
        True
    """

    source: str
    prediction: Prediction | None = None
    error: str | None = None


class Classifier:
    """Classify images with an exported edgel2 model (``.onnx``, or ``.tflite`` with LiteRT).

    Class names, input size, layout and calibration come from the model's own metadata.
    ``self.providers`` says what the session really uses; ``self.engine.name`` which engine
    runs and ``self.engine.choice`` what was measured to choose it (:meth:`reasons`).
    Thread-safe: one instance can serve many threads.

    Args:
        path: A model file, or a folder holding one model's ONNX and TFLite files (an export
            folder, ``models/``), either of which ``auto`` may run; None for the shipped pair
            (:func:`~edgel2.runtime.shipped.shipped_models`).
        providers: ONNX Runtime's: ``"auto"`` (TensorRT, then CUDA, then CPU), a name
            (``cpu``, ``cuda``, ``tensorrt``) or a list. Asking for a GPU that is not there
            warns (:class:`ProviderFallbackWarning`).
        threads: The engine's threads; None for every core.
        batch_size: Images per engine call in :meth:`predict_files`.
        strict: Raise instead of warning when a provider asked for is not used.
        engine: ``auto``, ``onnxruntime``, ``openvino`` or ``litert``. On a CPU ``auto`` runs
            the engine and settings measured fastest on this machine for ``workload``
            (:func:`~edgel2.runtime.auto.open_engine`).
        compute_dtype: ``fp32``, or ``bf16`` for OpenVINO to compute float layers in bfloat16.
        workload: ``latency`` (one image at a time, as :meth:`predict` and a server call it)
            or ``throughput`` (batches of ``batch_size``, as :meth:`predict_files` calls it).
        probe: Whether ``auto`` measures; None reads ``EDGEL2_ENGINE_PROBE``.
        unknown: Say which images are probably none of the classes, by the unknown score and
            threshold inside the file (``edgel2 export`` writes them); False, or a file
            without them, leaves ``Prediction.unknown`` None.

    Examples:
        >>> clf = Classifier("models/")                                  # doctest: +SKIP
        >>> clf.predict("cat.png", top_k=2)                              # doctest: +SKIP
        [[('cat', 0.91), ('dog', 0.05)]]
        >>> clf                                                          # doctest: +SKIP
        Classifier(resnet18-int8.tflite (int8) on litert: LiteRT (CPU); auto: ...)
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, providers: str | Sequence[str] | None = "auto",
                 threads: int | None = None, batch_size: int = 64, strict: bool = False,
                 engine: str = "auto", compute_dtype: str = "fp32", workload: str = LATENCY,
                 probe: bool | None = None, unknown: bool = True):
        require_whole("batch_size", batch_size)
        if path is None:
            from edgel2.runtime.shipped import shipped_models

            path = shipped_models()
        self.engine: Engine = open_engine(path, providers, threads, strict, engine, compute_dtype,
                                          workload, batch_size, probe)
        path = self.engine.path
        info = check_metadata(self.engine.metadata, path, self.engine.input_shape,
                              self.engine.input_dtype, self.engine.output_shape)
        self.path = path
        self.workload = workload
        self.metadata = self.engine.metadata
        self.class_names: list[str] = info.class_names
        self.input_size = info.input_size
        # from the file's calibration (edgel2 export --calibrate, edgel2 calibrate)
        self.temperature, self.unsmooth = info.temperature, info.unsmooth
        # the score is fetched when asked for and the file has it; its threshold may be None
        self.engine.with_unknown = unknown and self.engine.has_unknown
        self.unknown_threshold = info.unknown_threshold if self.engine.with_unknown else None
        self.batch_size = batch_size
        self.providers = self.engine.providers
        self._first_run()

    def _first_run(self) -> None:
        """Run one black image when the file is opened: a file that loads but cannot run
        (a hostile or damaged graph, a kernel the engine lacks) is a :class:`ModelError` now,
        not a traceback on the first request."""
        width, height = self.input_size
        try:
            logits = self.engine.run(np.zeros((1, height, width, 3), np.uint8))
        except Exception as e:  # noqa: BLE001 - whatever the engine raised
            raise ModelError(f"{self.path.name} loads but fails on its first run: "
                             f"{first_line(e)}") from None
        expected = (1, self._columns)
        if getattr(logits, "shape", None) != expected:
            raise ModelError(f"{self.path.name}: its first run gave logits of shape "
                             f"{getattr(logits, 'shape', None)}, not {expected}")

    @property
    def name(self) -> str:
        """The model's name: the run's name and the file's precision from its metadata
        (``photos-int8``), as ``edgel2 export`` names the file; else the file's stem."""
        name, precision = self.metadata.get("name"), file_precision(self.metadata)
        if isinstance(name, str) and name and isinstance(precision, str) and precision:
            return f"{name}-{precision}"
        return self.path.stem

    def describe(self, why: bool = False) -> str:
        """What runs: the file, its precision and the engine, in a few words
        (``model-int8.onnx (int8) on openvino: OpenVINO CPU``); with ``why``, also
        :meth:`reasons`."""
        precision = file_precision(self.metadata)
        text = (f"{self.path.name}" + (f" ({precision})" if isinstance(precision, str) else "")
                + f" on {self.engine.name}: {', '.join(self.providers)}")
        return "; ".join([text, *self.reasons()]) if why else text

    def reasons(self) -> list[str]:
        """Why this engine runs, a line each: what ``auto`` measured to choose it, and the
        engines it skipped (and why); none for an engine asked for by name."""
        lines = [f"auto for {self.workload}: {self.engine.choice}"] if self.engine.choice else []
        return lines + ([f"auto skipped {self.engine.fallback}"] if self.engine.fallback else [])

    def __repr__(self) -> str:
        return f"Classifier({self.describe(why=True)})"

    # --- arrays in, probabilities out ---------------------------------------------------

    @property
    def _columns(self) -> int:
        """What the engine returns per image: the logits, and the unknown score if fetched."""
        return len(self.class_names) + self.engine.with_unknown

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities for a uint8 NHWC batch already at the model's input size; all
        NaN in the rows whose logits were not finite."""
        return self._scored(batch)[0]

    def unknown_scores(self, batch: np.ndarray) -> np.ndarray:
        """The file's unknown score (higher: less like the classes) for a uint8 NHWC batch at
        the model's input size; NaN for every image when the file has none (or ``unknown``
        is off)."""
        return self._scored(batch)[1]

    def _scored(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        width, height = self.input_size
        if batch.dtype != np.uint8 or batch.shape[1:] != (height, width, 3):
            raise ImageError(f"a batch must be uint8 [N, {height}, {width}, 3], got "
                             f"{batch.dtype} {list(batch.shape)}")
        outs = [self.split(self.engine.run(batch[i:i + self.batch_size]),
                           len(batch[i:i + self.batch_size]))
                for i in range(0, len(batch), self.batch_size)]
        if not outs:
            return np.zeros((0, len(self.class_names)), np.float32), np.zeros(0, np.float32)
        return np.concatenate([p for p, _ in outs]), np.concatenate([u for _, u in outs])

    def split(self, outputs: np.ndarray, images: int) -> tuple[np.ndarray, np.ndarray]:
        """The engine's outputs for ``images`` images as (calibrated probabilities, unknown
        scores): :func:`calibrated_probabilities` with the file's temperature and
        unsmoothing, after checking their shape; the scores NaN when not fetched."""
        if outputs.shape != (images, self._columns):
            raise ModelError(f"{self.path.name} returned outputs of shape "
                             f"{list(outputs.shape)} for {images} images of "
                             f"{len(self.class_names)} classes")
        classes = len(self.class_names)
        scores = outputs[:, classes] if self.engine.with_unknown else np.full(images, np.nan)
        return (calibrated_probabilities(outputs[:, :classes], self.temperature,
                                         self.unsmooth).astype(np.float32),
                scores.astype(np.float32))

    def to_probabilities(self, outputs: np.ndarray, images: int) -> np.ndarray:
        """The calibrated probabilities of the engine's outputs for ``images`` images
        (:meth:`split`)."""
        return self.split(outputs, images)[0]

    def ranked(self, probabilities: np.ndarray, k: int = 1,
               unknown_scores: np.ndarray | None = None) -> list[Prediction | None]:
        """Top-k (label, probability) per row, best first, with the unknown score and verdict
        when ``unknown_scores`` are given and the file has a threshold; None for a row that
        is not finite (see :data:`NON_FINITE`). ``k`` is clamped to the class count."""
        k = max(1, min(k, len(self.class_names)))
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        if unknown_scores is None:
            unknown_scores = np.full(len(probabilities), np.nan)
        return [Prediction([(self.class_names[j], float(p[j])) for j in row],
                           *self.verdict(float(u))) if np.isfinite(p).all()
                else None for row, p, u in zip(order, probabilities, unknown_scores)]

    def verdict(self, score: float) -> tuple[float | None, bool | None]:
        """``(score, unknown)`` for one image's unknown score: ``unknown`` is whether it is
        over the file's threshold (None without a threshold); both None for a NaN score
        (none fetched)."""
        if not np.isfinite(score):
            return None, None
        return score, None if self.unknown_threshold is None else score > self.unknown_threshold

    def top_k(self, probabilities: np.ndarray, k: int = 1,
              unknown_scores: np.ndarray | None = None) -> list[Prediction]:
        """Like :meth:`ranked`, but raises :class:`PredictionError` for a non-finite row."""
        predictions = self.ranked(probabilities, k, unknown_scores)
        bad = [i for i, p in enumerate(predictions) if p is None]
        if bad:
            raise PredictionError(f"{NON_FINITE} for image {bad[0]}"
                                  + (f" and {len(bad) - 1} more" if len(bad) > 1 else ""))
        return predictions  # type: ignore[return-value]

    # --- anything in ------------------------------------------------------------------------

    def preprocess(self, image: ImageLike) -> np.ndarray:
        """One image (path, bytes, PIL image, HWC uint8 array) -> uint8 ``[H, W, 3]``."""
        return load_image(image, self.input_size)

    def predict(self, images: Any, top_k: int = 1) -> list[Prediction]:
        """Top-k (label, probability) per image.

        Args:
            images: A path, bytes, PIL image or HWC uint8 array; an NHWC uint8 batch; or a
                list of any of these.
            top_k: Labels per image, best first (at most the class count).

        Returns:
            One :class:`Prediction` (a list of ``(label, probability)``, the probabilities
            calibrated as the file says, with ``unknown`` and ``unknown_score``) per image.

        Raises:
            ImageError: An image that cannot be used.
            PredictionError: The model's logits for an image are not finite.

        Examples:
            >>> Classifier().predict(["cat.png", "ship.jpg"], top_k=2)   # doctest: +SKIP
            [[('cat', 0.91), ('dog', 0.05)], [('ship', 0.97), ('airplane', 0.02)]]
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:
            batch = images if images.shape[1:3] == self.input_size[::-1] else \
                np.stack([self.preprocess(im) for im in images])
        else:
            items = images if isinstance(images, (list, tuple)) else [images]
            batch = np.stack([self.preprocess(im) for im in items]) if items else \
                np.zeros((0, *self.input_size[::-1], 3), np.uint8)
        probabilities, scores = self._scored(batch)
        return self.top_k(probabilities, top_k, scores)

    def predict_files(self, sources: Iterable[ImageLike], top_k: int = 1,
                      workers: int | None = None, prefetch: int = 4) -> Iterator[FileResult]:
        """Stream results over many inputs, in order: decoding and resizing run on a thread
        pool ``prefetch`` batches ahead of the model, which runs ``batch_size`` images a call.

        Args:
            sources: Paths, bytes, PIL images or arrays, any number (read lazily).
            top_k: Labels per image, best first.
            workers: Decoding threads (default: one per CPU).
            prefetch: Batches decoded ahead of the model.

        Returns:
            A :class:`FileResult` per source, in order; a bad file (or one whose logits are
            not finite) has ``error`` set and the others go on.

        Examples:
            >>> clf = Classifier(workload="throughput")                     # doctest: +SKIP
            >>> for r in clf.predict_files(glob.glob("photos/*.jpg")):      # doctest: +SKIP
            ...     print(r.source, r.error or r.prediction[0])
        """
        workers = workers or os.cpu_count() or 1
        chunks = _chunks(sources, self.batch_size)

        def decode(source: ImageLike) -> tuple[np.ndarray | None, str | None]:
            try:
                return self.preprocess(source), None
            except ImageError as e:
                return None, str(e)

        with ThreadPoolExecutor(workers) as pool:
            pending: deque[tuple[list[Any], list[Future[Any]]]] = deque()

            def submit_next() -> None:
                chunk = next(chunks, None)
                if chunk is not None:
                    pending.append((chunk, [pool.submit(decode, s) for s in chunk]))

            def decoded_batches() -> Iterator[tuple[Any, np.ndarray | None]]:
                # (chunk, decoded, indices of good images), their batch
                for _ in range(prefetch):
                    submit_next()
                while pending:
                    chunk, futures = pending.popleft()
                    submit_next()
                    decoded = [f.result() for f in futures]
                    good = [i for i, (pixels, _) in enumerate(decoded) if pixels is not None]
                    batch = np.stack([decoded[i][0] for i in good]) if good else None
                    yield (chunk, decoded, good), batch

            # the engine may keep several batches in flight (OpenVINO's streams)
            for (chunk, decoded, good), logits in self.engine.run_stream(decoded_batches()):
                if logits is None:
                    predictions: list[Prediction | None] = []
                else:
                    probabilities, scores = self.split(logits, len(good))
                    predictions = self.ranked(probabilities, top_k, scores)
                by_index = dict(zip(good, predictions))
                for i, source in enumerate(chunk):
                    prediction = by_index.get(i)
                    error = decoded[i][1] or (NON_FINITE if prediction is None else None)
                    yield FileResult(_name(source), prediction, error)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _name(source: object) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__}>"
