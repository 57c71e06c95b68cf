"""A dynamic micro-batcher for apps that get images one at a time (web handlers, camera loops).

Callers ``submit`` single images from any thread (or ``await submit_async`` from an event
loop) and get a future; one worker thread gathers what arrives within ``max_delay_ms`` (up to
``max_batch``) into one model call. Decoding runs in the caller's thread (or the event loop's
executor), so callers decode in parallel.

It holds up under real clients: a cancelled or timed-out request is dropped without touching
any other; an error in one batch fails only that batch's futures; the worker never dies while
the batcher is open; and the queue is bounded (``max_queue``), so a flood of callers gets
:class:`BusyError` at once instead of unbounded memory.
"""
from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from numbers import Real
from typing import Callable

import numpy as np

from edgel2.errors import BusyError, EngineError, OptionError, PredictionError, require_whole
from edgel2.runtime.classifier import NON_FINITE, Classifier, Prediction
from edgel2.runtime.preprocess import ImageLike

_STOP = object()
log = logging.getLogger(__name__)


class Batcher:
    """Gather concurrent single-image requests into batches for one :class:`Classifier`.

    Results are the same as ``classifier.predict(image, top_k)[0]``. ``max_queue`` bounds the
    requests waiting for the model; past it, ``submit`` raises :class:`BusyError`.

    Example:
        >>> with Batcher(Classifier("model-int8.onnx"), max_batch=32, max_delay_ms=2) as b:  # doctest: +SKIP
        ...     future = b.submit("cat.png")
        ...     future.result()
        [('cat', 0.91)]
        >>> await batcher.submit_async(png_bytes)     # in an async handler    # doctest: +SKIP
        [('cat', 0.91)]
    """

    def __init__(self, classifier: Classifier, max_batch: int = 32, max_delay_ms: float = 2.0,
                 top_k: int = 1, max_queue: int = 1024,
                 on_batch: Callable[[int], None] | None = None):
        for name, value in (("max_batch", max_batch), ("top_k", top_k), ("max_queue", max_queue)):
            require_whole(name, value)
        if isinstance(max_delay_ms, bool) or not isinstance(max_delay_ms, Real) \
                or not math.isfinite(max_delay_ms) or max_delay_ms < 0:
            raise OptionError(f"max_delay_ms must be a finite number >= 0, got {max_delay_ms!r}")
        self.classifier, self.max_batch, self.top_k = classifier, max_batch, top_k
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._lock = threading.Lock()  # no request may slip in behind the stop marker
        self.batches_run = 0  # for tests and monitoring: how many model calls were made
        self.on_batch = on_batch  # called with each batch's size (a metrics histogram)
        self._worker = threading.Thread(target=self._loop, name="edgel2-batcher", daemon=True)
        self._worker.start()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the model now (for metrics)."""
        return self._queue.qsize()

    def submit(self, image: ImageLike) -> "Future[Prediction]":
        """Queue one image; the future holds its top-k, or the :class:`ImageError` its decoding
        raised, or the error its batch raised. Cancelling the future drops the request.
        Raises :class:`BusyError` when ``max_queue`` requests are waiting already."""
        future: Future = Future()
        try:
            pixels = self.classifier.preprocess(image)
        except Exception as e:  # noqa: BLE001 - reported per request, as predict would raise
            future.set_exception(e)
            return future
        self._enqueue(pixels, future)
        return future

    async def submit_async(self, image: ImageLike) -> Prediction:
        """:meth:`submit` for an event loop: decodes in the loop's default executor, never
        blocks the loop, and cancelling the awaiting task (a client timeout, a disconnect)
        drops the request."""
        loop = asyncio.get_running_loop()
        pixels = await loop.run_in_executor(None, self.classifier.preprocess, image)
        future: Future = Future()
        self._enqueue(pixels, future)
        return await asyncio.wrap_future(future)

    async def logits_async(self, pixels: np.ndarray) -> np.ndarray:
        """The raw logits of one uint8 ``[H, W, 3]`` image already at the model's input size
        (a tensor API, e.g. KServe v2), batched with everything else; non-finite logits are
        returned as they are. Cancelling drops the request, as for :meth:`submit_async`."""
        future: Future = Future()
        self._enqueue(pixels, future, raw=True)
        return await asyncio.wrap_future(future)

    def _enqueue(self, pixels: np.ndarray, future: Future, raw: bool = False) -> None:
        with self._lock:
            if self._closed:
                raise EngineError("the batcher is closed")
            try:
                self._queue.put_nowait((pixels, future, raw))
            except queue.Full:
                raise BusyError(f"busy: {self.max_queue} requests are waiting; retry later") from None

    def _loop(self) -> None:
        stop = False
        while not stop:
            items, stop = self._gather()
            try:
                self._run(items)
            except Exception:  # noqa: BLE001 - _run already failed its futures; stay alive
                log.exception("edgel2 batcher: a batch failed outside the model call")

    def _gather(self) -> tuple[list, bool]:
        """The next batch: what arrives within max_delay of the first request, up to max_batch;
        and whether the stop marker came."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        items = [first]
        deadline = time.monotonic() + self.max_delay
        while len(items) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return items, True
            items.append(item)
        return items, False

    def _run(self, items: list) -> None:
        # A future cancelled while queued is dropped here; once running it can no longer be
        # cancelled, so setting its result later cannot fail.
        live = [item for item in items if item[1].set_running_or_notify_cancel()]
        if not live:
            return
        if self.on_batch is not None:
            self.on_batch(len(live))
        try:
            # an engine with several streams (OpenVINO) returns once one is free, so the next
            # batch is gathered while this one runs; the others call back at once
            self.classifier.engine.submit(np.stack([item[0] for item in live]),
                                          lambda logits: self._finish(live, logits))
        except Exception as e:  # noqa: BLE001 - fails this batch only
            self._finish(live, e)

    def _finish(self, live: list, logits: np.ndarray | Exception) -> None:
        try:
            if isinstance(logits, Exception):
                raise logits
            probabilities = self.classifier.to_probabilities(logits, len(live))
            predictions = self.classifier.ranked(probabilities, self.top_k)
        except Exception as e:  # noqa: BLE001 - fails this batch only
            for _, future, _ in live:
                future.set_exception(e)
            return
        self.batches_run += 1
        for (_, future, raw), row, prediction in zip(live, logits, predictions):
            if raw:
                future.set_result(row)
            elif prediction is None:
                future.set_exception(PredictionError(NON_FINITE))
            else:
                future.set_result(prediction)

    def close(self) -> None:
        """Finish what was submitted, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)  # blocks only while a full queue drains
        self._worker.join()
        self.classifier.engine.wait()  # batches still running on other streams

    def __enter__(self) -> "Batcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
