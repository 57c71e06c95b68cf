"""A dynamic micro-batcher for apps that get images one at a time (web handlers, camera loops).

Callers ``submit`` single images from any thread and get a future; one worker thread
gathers what arrives within ``max_delay_ms`` (up to ``max_batch``) into one model call.
Decoding runs in the caller's thread, so callers decode in parallel.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

import numpy as np

from edgel2.runtime.classifier import Classifier, Prediction
from edgel2.runtime.preprocess import ImageLike

_STOP = object()


class Batcher:
    """Gather concurrent single-image requests into batches for one :class:`Classifier`.

    Results are the same as ``classifier.predict(image, top_k)[0]``.

    Example:
        >>> with Batcher(Classifier("model-int8.onnx"), max_batch=32, max_delay_ms=2) as b:  # doctest: +SKIP
        ...     future = b.submit("cat.png")
        ...     future.result()
        [('cat', 0.91)]
    """

    def __init__(self, classifier: Classifier, max_batch: int = 32, max_delay_ms: float = 2.0,
                 top_k: int = 1):
        if max_batch < 1 or max_delay_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_delay_ms >= 0")
        self.classifier, self.max_batch, self.top_k = classifier, max_batch, top_k
        self.max_delay = max_delay_ms / 1000.0
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()  # no request may slip in behind the stop marker
        self.batches_run = 0  # for tests and monitoring: how many model calls were made
        self._worker = threading.Thread(target=self._loop, name="edgel2-batcher", daemon=True)
        self._worker.start()

    def submit(self, image: ImageLike) -> "Future[Prediction]":
        """Queue one image; the future holds its top-k or the exception its decoding raised."""
        future: Future = Future()
        try:
            pixels = self.classifier.preprocess(image)
        except Exception as e:  # report per request, like predict would raise
            future.set_exception(e)
            return future
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.put((pixels, future))
        return future

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            items = [first]
            deadline = time.perf_counter() + self.max_delay
            stop = False
            while len(items) < self.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    item = self._queue.get(timeout=max(remaining, 0)) if remaining > 0 \
                        else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                items.append(item)
            self._run(items)
            if stop:
                return

    def _run(self, items: list) -> None:
        try:
            probabilities = self.classifier.probabilities(np.stack([p for p, _ in items]))
            predictions = self.classifier.top_k(probabilities, self.top_k)
        except Exception as e:
            for _, future in items:
                future.set_exception(e)
            return
        self.batches_run += 1
        for (_, future), prediction in zip(items, predictions):
            future.set_result(prediction)

    def close(self) -> None:
        """Finish what was submitted, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._worker.join()

    def __enter__(self) -> "Batcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
