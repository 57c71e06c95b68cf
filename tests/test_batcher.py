"""The micro-batcher under real clients: cancelled and timed-out requests are dropped without
harming any other, a failing batch fails only its own futures, the worker survives all of
it, the queue is bounded, and async handlers can await it. Timing is steered with events,
never sleeps."""
from __future__ import annotations

import asyncio
import math
import random
import threading

import numpy as np
import pytest

from edgel2.errors import BusyError, OptionError
from edgel2.runtime import Batcher, Classifier

IMAGES = [np.random.default_rng(i).integers(1, 256, (8, 8, 3), dtype=np.uint8) for i in range(64)]


class Gate:
    """Wraps an engine's run: the first call signals ``entered`` and waits for ``open``, so a
    test knows a batch is inside the model and can queue, cancel or fill behind it."""

    def __init__(self, engine, fail_first: bool = False):
        self.run_model, self.fail_first = engine.run, fail_first
        self.entered, self.open, self.calls = threading.Event(), threading.Event(), 0

    def __call__(self, batch):
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.open.wait(60), "the test never opened the gate"
            if self.fail_first:
                raise RuntimeError("the model failed on this batch")
        return self.run_model(batch)


@pytest.fixture
def classifier(tiny_onnx):
    """On ONNX Runtime, whose batches run in the worker thread: the gates below can hold them."""
    return Classifier(tiny_onnx, engine="onnxruntime")


def _gated(classifier, **kwargs) -> Gate:
    gate = Gate(classifier.engine, **kwargs)
    classifier.engine.run = gate
    return gate


def test_a_cancelled_request_is_dropped_and_every_other_one_answered(classifier):
    expected = classifier.predict(IMAGES[:4])
    gate = _gated(classifier)
    with Batcher(classifier, max_batch=1, max_delay_ms=0) as batcher:
        first = batcher.submit(IMAGES[0])
        assert gate.entered.wait(60)
        queued = [batcher.submit(image) for image in IMAGES[1:4]]
        assert queued[0].cancel()  # still waiting: cancelling it succeeds
        gate.open.set()
        assert first.result(60) == expected[0]
        assert [f.result(60) for f in queued[1:]] == expected[2:]
        assert queued[0].cancelled()
        assert batcher.submit(IMAGES[0]).result(60) == expected[0]  # the worker lives on
        assert batcher.batches_run == 4  # the cancelled request never reached the model


def test_an_error_in_one_batch_fails_only_that_batchs_futures(classifier):
    gate = _gated(classifier, fail_first=True)
    with Batcher(classifier, max_batch=1, max_delay_ms=0) as batcher:
        failing = batcher.submit(IMAGES[0])
        assert gate.entered.wait(60)
        later = batcher.submit(IMAGES[1])
        gate.open.set()
        with pytest.raises(RuntimeError, match="the model failed on this batch"):
            failing.result(60)
        assert later.result(60) == classifier.predict(IMAGES[1])[0]


def test_a_full_queue_answers_busy_at_once(classifier):
    gate = _gated(classifier)
    with Batcher(classifier, max_batch=1, max_delay_ms=0, max_queue=2) as batcher:
        running = batcher.submit(IMAGES[0])
        assert gate.entered.wait(60)  # the first request has left the queue
        waiting = [batcher.submit(IMAGES[1]), batcher.submit(IMAGES[2])]
        with pytest.raises(BusyError, match="busy: 2 requests are waiting; retry later"):
            batcher.submit(IMAGES[3])
        assert batcher.queue_depth == 2
        gate.open.set()
        assert [f.result(60) for f in [running, *waiting]] == classifier.predict(IMAGES[:3])


@pytest.mark.parametrize("options, message", [
    ({"max_delay_ms": math.inf}, "max_delay_ms must be a number in 0..10000, got inf"),
    ({"max_delay_ms": math.nan}, "max_delay_ms must be a number in 0..10000, got nan"),
    ({"max_delay_ms": -1}, "max_delay_ms must be a number in 0..10000, got -1"),
    ({"max_delay_ms": 1e13}, "max_delay_ms must be a number in 0..10000, got 10000000000000.0"),
    ({"max_batch": 0}, "max_batch must be a whole number >= 1, got 0"),
    ({"max_queue": 0}, "max_queue must be a whole number >= 1, got 0"),
    ({"top_k": 2.5}, "top_k must be a whole number >= 1, got 2.5"),
])
def test_options_that_would_kill_the_worker_are_refused(classifier, options, message):
    with pytest.raises(OptionError) as error:
        Batcher(classifier, **options)
    assert str(error.value) == message


def test_async_submit_answers_and_a_client_timeout_drops_only_its_request(classifier):
    expected = classifier.predict(IMAGES[:3])
    gate = _gated(classifier)

    async def clients(batcher):
        first = asyncio.ensure_future(batcher.submit_async(IMAGES[0]))
        await asyncio.get_running_loop().run_in_executor(None, gate.entered.wait, 60)
        with pytest.raises(asyncio.TimeoutError):  # queued behind the gate: it times out
            await asyncio.wait_for(batcher.submit_async(IMAGES[1]), timeout=0.2)
        third = batcher.submit(IMAGES[2])  # queued behind the timed-out one, for certain
        gate.open.set()
        return await first, await asyncio.wrap_future(third)

    with Batcher(classifier, max_batch=1, max_delay_ms=0) as batcher:
        assert asyncio.run(clients(batcher)) == (expected[0], expected[2])
        assert batcher.batches_run == 2  # the timed-out request was dropped, not run


def test_64_threads_with_random_cancels_get_the_same_answers_as_predict(classifier):
    expected = classifier.predict(IMAGES, top_k=2)
    rng = random.Random(0)
    plan = [[(i, rng.random() < 0.1) for i in rng.sample(range(64), 16)] for _ in range(64)]
    outcomes: list[tuple[int, object]] = []
    lock = threading.Lock()

    def caller(requests):
        futures = []
        for index, cancel in requests:
            future = batcher.submit(IMAGES[index])
            if cancel:
                future.cancel()
            futures.append((index, future))
        for index, future in futures:
            result = "cancelled" if future.cancelled() else future.result(60)
            with lock:
                outcomes.append((index, result))

    with Batcher(classifier, max_batch=16, max_delay_ms=1, top_k=2) as batcher:
        threads = [threading.Thread(target=caller, args=(p,)) for p in plan]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
    assert len(outcomes) == 64 * 16
    answered = [(i, r) for i, r in outcomes if r != "cancelled"]
    assert answered and all(r == expected[i] for i, r in answered)


def test_with_openvino_streams_batches_overlap_and_answers_stay_the_same(tiny_onnx):
    pytest.importorskip("openvino")
    clf = Classifier(tiny_onnx, engine="openvino")
    expected = clf.predict(IMAGES, top_k=2)
    with Batcher(clf, max_batch=4, max_delay_ms=0, top_k=2) as batcher:
        futures = [batcher.submit(image) for image in IMAGES]  # submitted via the async queue
        answers = [f.result(60) for f in futures]
    assert answers == expected
    assert batcher.batches_run >= len(IMAGES) // 4


def test_an_on_batch_callback_that_raises_fails_that_batch_and_nothing_else(classifier):
    calls = []

    def on_batch(size):
        calls.append(size)
        if len(calls) == 1:
            raise RuntimeError("the metrics hook broke")

    with Batcher(classifier, max_batch=1, max_delay_ms=0, on_batch=on_batch) as batcher:
        with pytest.raises(RuntimeError, match="the metrics hook broke"):
            batcher.submit(IMAGES[0]).result(60)  # failed, not pending forever
        assert batcher.submit(IMAGES[1]).result(60) == classifier.predict(IMAGES[1])[0]
        assert batcher.healthy


def test_owners_take_turns_so_a_large_request_does_not_hold_up_a_small_one(classifier):
    gate = _gated(classifier)
    order = []
    with Batcher(classifier, max_batch=1, max_delay_ms=0) as batcher:
        running = batcher.submit(IMAGES[0], owner="warm-up")
        assert gate.entered.wait(60)
        large = [batcher.submit(image, owner="large") for image in IMAGES[1:9]]
        small = batcher.submit(IMAGES[9], owner="small")
        for name, futures in (("large", large), ("small", [small])):
            for future in futures:
                future.add_done_callback(lambda _, name=name: order.append(name))
        gate.open.set()
        [f.result(60) for f in [running, *large, small]]
    # one image of the large request, then the small request's: it waited for one, not eight
    assert order[:2] == ["large", "small"]


def test_readiness_follows_the_batcher(classifier):
    batcher = Batcher(classifier)
    assert batcher.healthy
    batcher.close()
    assert not batcher.healthy


def test_closing_from_a_done_callback_does_not_deadlock_the_engine(tiny_onnx):
    pytest.importorskip("openvino")
    classifier = Classifier(tiny_onnx, engine="openvino")
    start_model, submit = threading.Event(), classifier.engine.submit

    def held_submit(batch, done):  # the batch starts once the callback below is in place
        assert start_model.wait(60)
        submit(batch, done)

    classifier.engine.submit = held_submit
    batcher = Batcher(classifier, max_batch=4, max_delay_ms=1)
    closed = threading.Event()

    def close_from_callback(_):
        batcher.close()  # in OpenVINO's callback thread
        closed.set()

    future = batcher.submit(IMAGES[0])
    future.add_done_callback(close_from_callback)
    start_model.set()
    assert closed.wait(60), "close() inside a done-callback hung"
    assert future.result(60) == classifier.predict(IMAGES[0])[0]
    with Batcher(classifier, max_batch=4, max_delay_ms=1) as later:  # the engine still works
        assert later.submit(IMAGES[1]).result(60) == classifier.predict(IMAGES[1])[0]
