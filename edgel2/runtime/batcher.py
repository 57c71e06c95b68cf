"""A dynamic micro-batcher for apps that get images one at a time (web handlers, camera loops).

Callers ``submit`` single images from any thread (or ``await submit_async`` from an event
loop) and get a future; one worker thread gathers what arrives within ``max_delay_ms`` (up to
``max_batch``) into one model call. Decoding runs in the caller's thread (or the event loop's
executor), so callers decode in parallel.

It holds up under real clients: a cancelled or timed-out request is dropped without touching
any other; an error in one batch (or in the ``on_batch`` callback) fails only that batch's
futures; the worker never dies while the batcher is open; and the queue is bounded
(``max_queue``), so a flood of callers gets :class:`BusyError` at once instead of unbounded
memory. The queue is fair: images submitted under different ``owner`` keys (one per HTTP
request in ``edgel2 serve``) are taken in turn, so a request of 64 images does not make a
request of one wait behind all of them.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Executor, Future
from numbers import Real
from typing import Any

import numpy as np

from edgel2.errors import BusyError, EngineError, OptionError, PredictionError, require_whole
from edgel2.runtime.classifier import NON_FINITE, Classifier, Prediction
from edgel2.runtime.preprocess import ImageLike

MAX_DELAY_MS = 10_000.0  # a longer wait to fill a batch is a typo, not a setting
# The defaults (edgel2 serve's too): batches of up to 32 images, the first waiting at most
# 2 ms for others, and at most 1024 images waiting before requests are refused.
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_DELAY_MS = 2.0
DEFAULT_MAX_QUEUE = 1024
log = logging.getLogger(__name__)


class _Delivering(threading.local):
    """Whether this thread is setting batch results (a worker, or an engine's callback thread):
    a future's done-callback that closes a batcher there must not wait for that thread."""

    active = False


_delivering = _Delivering()


@contextlib.contextmanager
def _delivering_results() -> Iterator[None]:
    """Mark this thread as the one whose futures' done-callbacks run (see :class:`_Delivering`)."""
    _delivering.active = True
    try:
        yield
    finally:
        _delivering.active = False


class Batcher:
    """Gather concurrent single-image requests into batches for one :class:`Classifier`.

    Results are the same as ``classifier.predict(image, top_k)[0]``. Requests are served
    owner by owner in turn, so one client's burst does not starve the others.

    Args:
        classifier: The model.
        max_batch: The most images per engine call.
        max_delay_ms: How long the first request of a batch waits for others.
        top_k: Labels per image.
        max_queue: Requests waiting for the model; past it, ``submit`` raises
            :class:`BusyError`.
        on_batch: Called with each batch's size (a metrics histogram).

    Examples:
        >>> with Batcher(Classifier("model-int8.onnx"), max_batch=32, max_delay_ms=2) as b:  # doctest: +SKIP
        ...     future = b.submit("cat.png")
        ...     future.result()
        [('cat', 0.91)]
        >>> await batcher.submit_async(png_bytes)     # in an async handler    # doctest: +SKIP
        [('cat', 0.91)]
    """

    def __init__(self, classifier: Classifier, max_batch: int = DEFAULT_MAX_BATCH,
                 max_delay_ms: float = DEFAULT_MAX_DELAY_MS, top_k: int = 1,
                 max_queue: int = DEFAULT_MAX_QUEUE,
                 on_batch: Callable[[int], None] | None = None):
        for name, value in (("max_batch", max_batch), ("top_k", top_k), ("max_queue", max_queue)):
            require_whole(name, value)
        if isinstance(max_delay_ms, bool) or not isinstance(max_delay_ms, (int, float, Real)) \
                or not math.isfinite(max_delay_ms) or not 0 <= max_delay_ms <= MAX_DELAY_MS:
            raise OptionError(f"max_delay_ms must be a number in 0..{MAX_DELAY_MS:g}, got "
                              f"{max_delay_ms!r}")
        self.classifier, self.max_batch, self.top_k = classifier, max_batch, top_k
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue = max_queue
        # owner -> its waiting (pixels, future, raw); owners are served in turn
        self._waiting: OrderedDict[Hashable, deque[tuple[np.ndarray, Future[Any], bool]]] = \
            OrderedDict()
        self._depth = 0
        self._closed = False
        self._changed = threading.Condition()
        self.batches_run = 0  # for tests and monitoring: how many model calls were made
        self.on_batch = on_batch  # called with each batch's size (a metrics histogram)
        self._worker = threading.Thread(target=self._loop, name="edgel2-batcher", daemon=True)
        self._worker.start()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the model now (for metrics)."""
        return self._depth

    @property
    def healthy(self) -> bool:
        """Whether requests can still be answered: open, and its worker alive (readiness)."""
        return not self._closed and self._worker.is_alive()

    def submit(self, image: ImageLike, owner: Hashable = None) -> Future[Prediction]:
        """Queue one image; the future holds its top-k, or the :class:`ImageError` its decoding
        raised, or the error its batch raised. Cancelling the future drops the request.
        Raises :class:`BusyError` when ``max_queue`` requests are waiting already. ``owner``:
        whose request it is (any hashable; None for a queue of its own), for fair turns."""
        try:
            pixels = self.classifier.preprocess(image)
        except Exception as e:  # noqa: BLE001 - reported per request, as predict would raise
            future: Future[Prediction] = Future()
            future.set_exception(e)
            return future
        return self.submit_pixels([pixels], owner)[0]

    async def submit_async(self, image: ImageLike, owner: Hashable = None,
                           executor: Executor | None = None) -> Prediction:
        """:meth:`submit` for an event loop: decodes in ``executor`` (default: the loop's),
        never blocks the loop, and cancelling the awaiting task (a client timeout, a
        disconnect) drops the request."""
        loop = asyncio.get_running_loop()
        pixels = await loop.run_in_executor(executor, self.classifier.preprocess, image)
        return await asyncio.wrap_future(self.submit_pixels([pixels], owner)[0])

    async def logits_async(self, pixels: np.ndarray, owner: Hashable = None) -> np.ndarray:
        """The raw logits of one uint8 ``[H, W, 3]`` image already at the model's input size
        (a tensor API, e.g. KServe v2), batched with everything else; non-finite logits are
        returned as they are. Cancelling drops the request, as for :meth:`submit_async`."""
        return await asyncio.wrap_future(self.submit_pixels([pixels], owner, raw=True)[0])

    def submit_pixels(self, images: list[np.ndarray], owner: Hashable = None,
                      raw: bool = False) -> list[Future[Any]]:
        """Queue images already decoded to the model's input size, all or none: one future
        each (its top-k, or its logits if ``raw``), or :class:`BusyError` with nothing queued
        when they do not all fit. A server admits a whole request or refuses it, so a refused
        request never costs the model any work."""
        futures: list[Future[Any]] = [Future() for _ in images]
        with self._changed:
            if self._closed:
                raise EngineError("the batcher is closed")
            if self._depth + len(images) > self.max_queue:
                raise BusyError(f"busy: {self.max_queue} requests are waiting; retry later")
            waiting = self._waiting.setdefault(owner, deque())
            waiting.extend(zip(images, futures, [raw] * len(images)))
            self._depth += len(images)
            self._changed.notify()
        return futures

    def _loop(self) -> None:
        stop = False
        while not stop:
            items, stop = self._gather()
            try:
                self._run(items)
            except Exception:  # noqa: BLE001 - _run already failed its futures; stay alive
                log.exception("edgel2 batcher: a batch failed outside the model call")

    def _take(self, limit: int) -> list[Any]:
        """Up to ``limit`` waiting requests, one per owner in turn (called holding the lock)."""
        items: list[Any] = []
        while self._waiting and len(items) < limit:
            owner, waiting = next(iter(self._waiting.items()))
            items.append(waiting.popleft())
            self._waiting.pop(owner)
            if waiting:  # to the back of the line with what it has left
                self._waiting[owner] = waiting
        self._depth -= len(items)
        return items

    def _gather(self) -> tuple[list[Any], bool]:
        """The next batch: what arrives within max_delay of the first request, up to max_batch;
        and whether the batcher is closing with nothing left to run."""
        with self._changed:
            while not self._depth and not self._closed:
                self._changed.wait()
            if not self._depth:
                return [], True
            deadline = time.monotonic() + self.max_delay
            while self._depth < self.max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._changed.wait(remaining):
                    break
            return self._take(self.max_batch), False

    def _run(self, items: list[Any]) -> None:
        # A future cancelled while queued is dropped here; once running it can no longer be
        # cancelled, so setting its result later cannot fail.
        live = [item for item in items if item[1].set_running_or_notify_cancel()]
        if not live:
            return
        try:
            if self.on_batch is not None:
                self.on_batch(len(live))
            # an engine with several streams (OpenVINO) returns once one is free, so the next
            # batch is gathered while this one runs; the others call back at once
            self.classifier.engine.submit(np.stack([item[0] for item in live]),
                                          lambda logits: self._finish(live, logits))
        except Exception as e:  # noqa: BLE001 - fails this batch only
            self._finish(live, e)

    def _finish(self, live: list[Any], logits: np.ndarray | Exception) -> None:
        try:
            if isinstance(logits, Exception):
                raise logits
            probabilities, scores = self.classifier.split(logits, len(live))
            predictions = self.classifier.ranked(probabilities, self.top_k, scores)
        except Exception as e:  # noqa: BLE001 - fails this batch only
            with _delivering_results():
                for _, future, _ in live:
                    future.set_exception(e)
            return
        self.batches_run += 1
        with _delivering_results():
            for (_, future, raw), row, prediction in zip(live, logits, predictions):
                if raw:
                    future.set_result(row)
                elif prediction is None:
                    future.set_exception(PredictionError(NON_FINITE))
                else:
                    future.set_result(prediction)

    def close(self) -> None:
        """Finish what was submitted, then stop the worker. Called from the worker or an
        engine's callback thread (a future's done-callback), it only marks the batcher closed:
        waiting there for the batches in flight would wait for itself."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
        if threading.current_thread() is not self._worker and not _delivering.active:
            self._worker.join()
            self.classifier.engine.wait()  # batches still running on other streams

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
