"""The HTTP server's application: Starlette routes over one :class:`Classifier` and its
:class:`Batcher`.

Why Starlette on uvicorn: Starlette is the small ASGI toolkit FastAPI is built on; seven
routes need neither pydantic models nor generated OpenAPI, so the extra stays at four
pure-Python packages (starlette, uvicorn, python-multipart, prometheus-client). uvicorn is the
reference ASGI server and handles SIGTERM gracefully (stop accepting, finish in-flight
requests, then the lifespan shutdown closes the batcher).

The event loop never waits on the model or on a large body: images are decoded, and JSON
bodies parsed, in a bounded pool of threads, one item at a time per request so that requests
take turns; the batcher's worker thread runs the model, again taking requests in turn; handlers
only await. One client cannot take the server down: every byte of every body counts against
``max_body_mb`` however it is framed (chunked, multipart), a request carries at most
``max_images`` images and ``max_request_mpx`` megapixels (read from the headers before
anything is decoded), a request is admitted to the model's queue whole or refused whole, and
the work of a request whose client went away is dropped. Header size and slow or idle clients
are bounded by the connection itself (:mod:`edgel2.serve.protocol`). Every error body is
JSON, ``{"error": message}``, the KServe v2 shape.
"""
from __future__ import annotations

import asyncio
import contextlib
import html
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from edgel2 import __version__
from edgel2.errors import BusyError, ImageError, PredictionError
from edgel2.runtime import Batcher, Classifier
from edgel2.runtime.formats import FILE_FORMATS
from edgel2.runtime.modelfile import UNKNOWN_OUTPUT, file_precision
from edgel2.runtime.preprocess import pixel_count
from edgel2.serve.config import ServeConfig, open_model
from edgel2.serve.page import PAGE
from edgel2.serve.reading import (
    BodyLimit,
    TooLarge,
    TooMany,
    disconnected,
    error_response,
    refuse_declared_over,
    uploaded_files,
    v2_request,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _Metrics:
    """Prometheus metrics in a registry of the app's own (several apps in one process, as in
    tests, do not collide)."""

    def __init__(self, batcher: Batcher):
        self.registry = CollectorRegistry()
        self.requests = Counter("edgel2_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("edgel2_request_seconds", "Request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("edgel2_batch_size", "Images per model call",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.images = Counter("edgel2_images", "Images classified", registry=self.registry)
        self.unknown = Counter("edgel2_unknown_images",
                               "Images classified as none of the classes (over the model "
                               "file's unknown threshold)", registry=self.registry)
        self.in_flight = Gauge("edgel2_in_flight", "Requests being served, by route",
                               ["route"], registry=self.registry)
        queue = Gauge("edgel2_queue_depth", "Images waiting for the model",
                      registry=self.registry)
        queue.set_function(lambda: batcher.queue_depth)


def create_app(config: ServeConfig, classifier: Classifier | None = None) -> ASGIApp:
    """The ASGI app of ``edgel2 serve``: KServe v2 and plain endpoints, metrics, the page.

    Args:
        config: Every serving knob (:class:`~edgel2.serve.config.ServeConfig`), validated here.
        classifier: The model, already opened; None opens one from ``config`` (the model,
            engine, workload and threads).

    Returns:
        A Starlette app; its lifespan starts and stops the model's Batcher.

    Examples:
        >>> app = create_app(ServeConfig(model="models/resnet18-int8.onnx"))  # doctest: +SKIP
        >>> import uvicorn; uvicorn.run(app, port=8000)                       # doctest: +SKIP
    """
    config.validate()
    if classifier is None:
        classifier = open_model(config)
    name = config.name or classifier.name
    classes = len(classifier.class_names)
    scored = int(classifier.engine.with_unknown)  # the unknown score's column, when fetched
    width, height = classifier.input_size
    max_body = int(config.max_body_mb * 2**20)
    max_pixels = int(config.max_request_mpx * 1e6)
    # the longest v2 body that can hold max_images images: 6 bytes a value is room for
    # "255, " (json.dumps' separators) and nested lists' brackets
    v2_body_limit = config.max_images * height * width * 3 * 6 + 65536
    state: dict = {}

    def batcher() -> Batcher:
        return state["batcher"]

    async def in_pool(function, *args):
        """``function(*args)`` in the bounded pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(state["pool"], function, *args)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["pool"] = ThreadPoolExecutor(config.decode_threads or os.cpu_count() or 1,
                                           thread_name_prefix="edgel2-decode")
        state["batcher"] = Batcher(classifier, config.max_batch, config.max_delay_ms,
                                   top_k=classes, max_queue=config.max_queue,
                                   on_batch=lambda n: state["metrics"].batch_size.observe(n))
        state["metrics"] = _Metrics(state["batcher"])
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            # uvicorn has finished the requests in flight; the batcher finishes its queue
            await asyncio.get_running_loop().run_in_executor(None, state["batcher"].close)
            state["pool"].shutdown(wait=False, cancel_futures=True)

    def is_ready() -> bool:
        return state.get("ready", False) and batcher().healthy

    async def read_body(request: Request, limit: int | None = None) -> bytes:
        """The body (every byte counted against ``max_body`` by :class:`BodyLimit`); past a
        smaller ``limit`` (by Content-Length, or as it streams in), TooLarge with it."""
        limit = max_body if limit is None else min(limit, max_body)
        refuse_declared_over(request, limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLarge()
            chunks.append(chunk)
        return b"".join(chunks)

    def measured(route: str):
        """Wrap a handler: latency and status into the metrics; the limits' errors as JSON."""
        def wrap(handler):
            async def endpoint(request: Request):
                start = time.perf_counter()
                in_flight = state["metrics"].in_flight.labels(route)
                in_flight.inc()
                try:
                    response = await handler(request)
                except TooLarge:
                    response = error_response(413, f"request body over the limit of "
                                           f"{config.max_body_mb:g} MiB (--max-body-mb)")
                    # the rest of the body is read and dropped (closing now would reset the
                    # connection before the client reads this answer)
                except BusyError as e:
                    response = error_response(503, str(e), {"Retry-After": str(config.retry_after_s)})
                except ClientDisconnect:
                    response = Response(status_code=499)  # nobody reads it; counted
                except asyncio.CancelledError:
                    # still running when SIGTERM's grace period ran out: its batcher work is
                    # dropped, and the client gets an answer it can retry elsewhere
                    response = error_response(503, "the server is shutting down; retry",
                                      {"Retry-After": str(config.retry_after_s),
                                       "Connection": "close"})
                finally:
                    in_flight.dec()
                metrics = state["metrics"]
                metrics.requests.labels(route, str(response.status_code)).inc()
                metrics.latency.labels(route).observe(time.perf_counter() - start)
                return response
            return endpoint
        return wrap

    async def until_disconnected(request: Request, work):
        """Run ``work`` unless the client goes away first: then cancel it (its images leave
        the batcher's queue) and raise ClientDisconnect."""
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(disconnected(request))
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            watcher.cancel()
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ClientDisconnect()

    # --- KServe v2 (Open Inference Protocol) -------------------------------------------

    async def live(request: Request):
        return JSONResponse({"live": True})

    async def ready(request: Request):
        ok = is_ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(request: Request):
        return JSONResponse({"name": "edgel2", "version": __version__, "extensions": []})

    def known_model(request: Request) -> JSONResponse | None:
        asked = request.path_params["name"]
        if asked != name:
            return error_response(404, f"unknown model {asked!r}; this server has {name!r}")
        return None

    @measured("model_metadata")
    async def model_metadata(request: Request):
        if (missing := known_model(request)) is not None:
            return missing
        meta = classifier.metadata
        return JSONResponse({
            "name": name, "versions": ["1"],
            "platform": _platform(meta.get("format")),
            "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, height, width, 3]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, classes]}] + ([
                {"name": UNKNOWN_OUTPUT, "datatype": "FP32", "shape": [-1, 1]},
                {"name": "unknown", "datatype": "BOOL", "shape": [-1, 1]}] if scored else []),
            "parameters": {"class_names": classifier.class_names,
                           "normalization": meta.get("normalization"),
                           "accuracy": meta.get("accuracy"),
                           "calibration": {"temperature": classifier.temperature,
                                           "unsmooth": classifier.unsmooth},
                           "unknown_threshold": classifier.unknown_threshold,
                           "precision": file_precision(meta),
                           "engine": classifier.engine.name,
                           "engine_choice": None if classifier.engine.choice is None
                           else classifier.engine.choice.summary()}})

    async def model_ready(request: Request):
        if (missing := known_model(request)) is not None:
            return missing
        return JSONResponse({"name": name, "ready": is_ready()})

    @measured("infer")
    async def infer(request: Request):
        if (missing := known_model(request)) is not None:
            return missing
        try:  # refused unread and unparsed: parsing holds the GIL ~40 ms a MiB
            body = await read_body(request, v2_body_limit)
        except TooLarge:
            if v2_body_limit >= max_body:  # --max-body-mb is the smaller limit: it answers
                raise
            return error_response(413, f"a v2 body over {v2_body_limit / 2**20:.1f} MiB is more than "
                               f"{config.max_images} images (--max-images) can take in "
                               "compact JSON")
        try:
            request_id, images = await until_disconnected(request, in_pool(
                v2_request, body, height, width, config.max_images))
        except TooMany as e:
            return error_response(413, str(e))
        except ValueError as e:
            return error_response(400, str(e))
        futures = batcher().submit_pixels(list(images), owner=object(), raw=True)
        logits = await until_disconnected(request, _all(futures))
        rows = np.stack(logits) if logits else np.zeros((0, classes + scored), np.float32)
        if not np.isfinite(rows).all():
            return error_response(500, "the model produced non-finite logits")
        state["metrics"].images.inc(len(images))
        outputs = [{"name": "logits", "datatype": "FP32", "shape": [len(images), classes],
                    "data": rows[:, :classes].astype(np.float32).ravel().tolist()}]
        if scored:
            verdicts = [classifier.verdict(float(score))[1] for score in rows[:, classes]]
            state["metrics"].unknown.inc(sum(bool(v) for v in verdicts))
            outputs += [{"name": UNKNOWN_OUTPUT, "datatype": "FP32", "shape": [len(images), 1],
                         "data": rows[:, classes].astype(np.float32).tolist()},
                        {"name": "unknown", "datatype": "BOOL", "shape": [len(images), 1],
                         "data": [bool(v) for v in verdicts]}]
        response = {"model_name": name, "model_version": "1", "outputs": outputs}
        if request_id is not None:
            response["id"] = request_id
        return JSONResponse(response)

    # --- what people reach for first ------------------------------------------------------

    async def classify_files(files: list[tuple[str, bytes]], top_k: int) -> list[dict]:
        """Decode one file at a time in the pool (so requests take turns), then queue the
        request's images for the model all at once, or refuse them all (503)."""
        decoded = []
        for _, data in files:
            try:
                decoded.append(await in_pool(classifier.preprocess, data))
            except ImageError as e:
                decoded.append(e)
        good = [d for d in decoded if not isinstance(d, ImageError)]
        predictions = iter(await _all(batcher().submit_pixels(good, owner=object()),
                                      return_exceptions=True))
        results: list[dict] = []
        for (filename, _), item in zip(files, decoded):
            outcome = item if isinstance(item, ImageError) else next(predictions)
            if isinstance(outcome, (ImageError, PredictionError)):
                results.append({"file": filename, "error": str(outcome)})
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                results.append({"file": filename, "predictions": [
                    {"label": label, "probability": round(float(p), 6)}
                    for label, p in outcome[:top_k]], "unknown": outcome.unknown,
                    "unknown_score": None if outcome.unknown_score is None
                    else round(float(outcome.unknown_score), 6)})
        return results

    @measured("classify")
    async def classify(request: Request):
        try:
            top_k = int(request.query_params.get("top_k", config.top_k))
            if top_k < 1:
                raise ValueError
        except ValueError:
            return error_response(400, "top_k must be a whole number >= 1")
        files = await uploaded_files(request, read_body, max_body, config.max_images)
        if isinstance(files, Response):
            return files
        pixels = sum(await in_pool(lambda: [pixel_count(data) for _, data in files]))
        if pixels > max_pixels:
            return error_response(413, f"{pixels / 1e6:.1f} megapixels in one request; the limit is "
                               f"{config.max_request_mpx:g} (--max-request-mpx)")
        results = await until_disconnected(request, classify_files(files, top_k))
        state["metrics"].images.inc(sum("predictions" in r for r in results))
        state["metrics"].unknown.inc(sum(bool(r.get("unknown")) for r in results))
        failed = any("error" in r for r in results)
        return JSONResponse({"model": name, "results": results},
                            status_code=422 if failed else 200)

    @measured("metrics")
    async def metrics(request: Request):
        return Response(generate_latest(state["metrics"].registry),
                        media_type=CONTENT_TYPE_LATEST)

    async def page(request: Request):
        return HTMLResponse(PAGE.replace("{{MODEL}}", html.escape(name)))

    async def not_found(request: Request, exc):
        return error_response(404, f"no route {request.method} {request.url.path}")

    async def not_allowed(request: Request, exc):
        return error_response(405, f"method {request.method} not allowed on {request.url.path}")

    async def server_error(request: Request, exc):
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    routes = [
        Route("/", page), Route("/v1/classify", classify, methods=["POST"]),
        Route("/metrics", metrics),
        Route("/v2", server_metadata), Route("/v2/health/live", live),
        Route("/v2/health/ready", ready), Route("/v2/models/{name}", model_metadata),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: not_allowed,
                                        Exception: server_error})
    return BodyLimit(app, max_body)


async def _all(futures, return_exceptions: bool = False) -> list:
    """The outcomes of the batcher's futures; cancelling this (a client gone, a shutdown)
    cancels them all, so that their images leave the queue unrun."""
    wrapped = [asyncio.wrap_future(f) for f in futures]
    try:
        return await asyncio.gather(*wrapped, return_exceptions=return_exceptions)
    finally:
        for future in futures:
            future.cancel()  # no-op for those that are done


def _platform(fmt: object) -> str:
    """The KServe v2 ``platform`` of a file's format (``edgel2`` for one it does not know)."""
    known = isinstance(fmt, str) and fmt in FILE_FORMATS
    return FILE_FORMATS[fmt].kserve_platform if known else "edgel2"  # type: ignore[index]
