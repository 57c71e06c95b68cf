"""The HTTP server's application: Starlette routes over one :class:`Classifier` and its
:class:`Batcher`.

Why Starlette on uvicorn: Starlette is the small ASGI toolkit FastAPI is built on; seven
routes need neither pydantic models nor generated OpenAPI, so the extra stays at four
pure-Python packages (starlette, uvicorn, python-multipart, prometheus-client). uvicorn is the
reference ASGI server and handles SIGTERM gracefully (stop accepting, finish in-flight
requests, then the lifespan shutdown closes the batcher).

The event loop never waits on the model: images are decoded in the loop's executor and the
batcher's worker thread runs the model; handlers only await futures. Every error body is
JSON, ``{"error": message}``, the KServe v2 shape.
"""
from __future__ import annotations

import asyncio
import contextlib
import html
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from edgel2 import __version__
from edgel2.config import check_name
from edgel2.errors import BusyError, EdgeL2Error, ImageError, PredictionError
from edgel2.runtime import Batcher, Classifier
from edgel2.serve.page import PAGE

PLATFORM = {"onnx": "onnxruntime_onnx", "tflite": "tensorflow_lite"}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class ServeConfig:
    """Every knob of ``edgel2 serve`` (one validation: :meth:`validate`)."""

    model: str | None = None        # None: the shipped int8 ONNX
    name: str | None = None         # the served model's name; None: the file's (Classifier.name)
    engine: str = "auto"
    threads: int | None = None
    max_batch: int = 32
    max_delay_ms: float = 2.0
    max_queue: int = 1024
    max_body_mb: float = 16.0
    max_files: int = 64
    top_k: int = 5
    retry_after_s: int = 1

    def validate(self) -> None:
        checks = [(self.max_batch >= 1, "--max-batch must be >= 1"),
                  (self.max_delay_ms >= 0, "--max-delay-ms must be >= 0"),
                  (self.max_queue >= 1, "--max-queue must be >= 1"),
                  (self.max_body_mb > 0, "--max-body-mb must be > 0"),
                  (self.max_files >= 1, "--max-files must be >= 1"),
                  (self.top_k >= 1, "--top-k must be >= 1")]
        for ok, message in checks:
            if not ok:
                raise EdgeL2Error(message)
        if self.name is not None:
            check_name(self.name)


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
        self.in_flight = Gauge("edgel2_in_flight", "Requests being served, by route",
                               ["route"], registry=self.registry)
        queue = Gauge("edgel2_queue_depth", "Images waiting for the model",
                      registry=self.registry)
        queue.set_function(lambda: batcher.queue_depth)


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(config: ServeConfig, classifier: Classifier | None = None) -> Starlette:
    """The ASGI app. ``classifier`` defaults to one opened from ``config`` (the model, engine
    and threads).

    Example:
        >>> app = create_app(ServeConfig(model="models/resnet18-int8.onnx"))  # doctest: +SKIP
        >>> import uvicorn; uvicorn.run(app, port=8000)                       # doctest: +SKIP
    """
    config.validate()
    if classifier is None:
        from edgel2.runtime import shipped_model

        classifier = Classifier(config.model or shipped_model(), engine=config.engine,
                                threads=config.threads)
    name = config.name or classifier.name
    classes = len(classifier.class_names)
    width, height = classifier.input_size
    max_body = int(config.max_body_mb * 2**20)
    state: dict = {}

    def batcher() -> Batcher:
        return state["batcher"]

    @contextlib.asynccontextmanager
    async def lifespan(app):
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

    async def read_body(request: Request) -> bytes:
        """The body, refused with 413 past ``max_body`` (by Content-Length, or while it
        streams in for a chunked upload)."""
        _refuse_declared_over(request, max_body)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise _TooLarge()
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
                except _TooLarge:
                    response = _error(413, f"request body over the limit of "
                                           f"{config.max_body_mb:g} MiB (--max-body-mb)")
                except BusyError as e:
                    response = _error(503, str(e), {"Retry-After": str(config.retry_after_s)})
                except ClientDisconnect:
                    response = Response(status_code=499)  # nobody reads it; counted
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
        watcher = asyncio.ensure_future(_disconnect(request))
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
        ok = state.get("ready", False)
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(request: Request):
        return JSONResponse({"name": "edgel2", "version": __version__, "extensions": []})

    def known_model(request: Request) -> JSONResponse | None:
        asked = request.path_params["name"]
        if asked != name:
            return _error(404, f"unknown model {asked!r}; this server has {name!r}")
        return None

    @measured("model_metadata")
    async def model_metadata(request: Request):
        if (missing := known_model(request)) is not None:
            return missing
        meta = classifier.metadata
        return JSONResponse({
            "name": name, "versions": ["1"],
            "platform": PLATFORM.get(meta.get("format"), "edgel2"),
            "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, height, width, 3]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, classes]}],
            "parameters": {"class_names": classifier.class_names,
                           "normalization": meta.get("normalization"),
                           "accuracy": meta.get("accuracy"),
                           "calibration": {"temperature": classifier.temperature,
                                           "unsmooth": classifier.unsmooth},
                           "quantization": meta.get("quantization"),
                           "engine": classifier.engine.name}})

    async def model_ready(request: Request):
        if (missing := known_model(request)) is not None:
            return missing
        return JSONResponse({"name": name, "ready": state.get("ready", False)})

    @measured("infer")
    async def infer(request: Request):
        if (missing := known_model(request)) is not None:
            return missing
        try:
            body = _json(await read_body(request))
            request_id, images = _v2_images(body, height, width)
        except ValueError as e:
            return _error(400, str(e))
        logits = await until_disconnected(
            request, asyncio.gather(*(batcher().logits_async(image) for image in images)))
        logits = np.stack(logits) if logits else np.zeros((0, classes), np.float32)
        if not np.isfinite(logits).all():
            return _error(500, "the model produced non-finite logits")
        state["metrics"].images.inc(len(images))
        response = {"model_name": name, "model_version": "1",
                    "outputs": [{"name": "logits", "datatype": "FP32",
                                 "shape": [len(images), classes],
                                 "data": logits.astype(np.float32).ravel().tolist()}]}
        if request_id is not None:
            response["id"] = request_id
        return JSONResponse(response)

    # --- what people reach for first ------------------------------------------------------

    @measured("classify")
    async def classify(request: Request):
        try:
            top_k = int(request.query_params.get("top_k", config.top_k))
            if top_k < 1:
                raise ValueError
        except ValueError:
            return _error(400, "top_k must be a whole number >= 1")
        files = await _uploaded_files(request, read_body, max_body, config.max_files)
        if isinstance(files, Response):
            return files
        results = await until_disconnected(request, asyncio.gather(
            *(_classify_one(batcher(), filename, data, top_k) for filename, data in files),
            return_exceptions=True))
        busy = next((r for r in results if isinstance(r, BusyError)), None)
        if busy is not None:
            raise busy
        for r in results:
            if isinstance(r, BaseException):
                raise r
        state["metrics"].images.inc(sum("predictions" in r for r in results))
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
        return _error(404, f"no route {request.method} {request.url.path}")

    async def not_allowed(request: Request, exc):
        return _error(405, f"method {request.method} not allowed on {request.url.path}")

    async def server_error(request: Request, exc):
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    routes = [
        Route("/", page), Route("/v1/classify", classify, methods=["POST"]),
        Route("/metrics", metrics),
        Route("/v2", server_metadata), Route("/v2/health/live", live),
        Route("/v2/health/ready", ready), Route("/v2/models/{name}", model_metadata),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={404: not_found, 405: not_allowed,
                                         Exception: server_error})


class _TooLarge(Exception):
    pass


def _refuse_declared_over(request: Request, max_body: int) -> None:
    """413 before reading a body whose Content-Length already says it is over the limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_body:
        raise _TooLarge()


async def _disconnect(request: Request) -> None:
    """Return when the client has gone (the body was read already, so the next ASGI message
    can only be the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _json(body: bytes):
    import json

    try:
        return json.loads(body)
    except ValueError as e:
        raise ValueError(f"the body is not JSON: {e}") from None


def _v2_images(body, height: int, width: int) -> tuple[str | None, list[np.ndarray]]:
    """The uint8 images of a v2 infer request: one input, datatype UINT8, shape
    [N, height, width, 3], data flat (row-major) or nested."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) \
            or len(body["inputs"]) != 1 or not isinstance(body["inputs"][0], dict):
        raise ValueError('a v2 infer request has "inputs": [one tensor]')
    tensor = body["inputs"][0]
    shape, datatype = tensor.get("shape"), tensor.get("datatype")
    if datatype != "UINT8":
        raise ValueError(f'input datatype must be "UINT8", got {datatype!r}')
    if not (isinstance(shape, list) and len(shape) == 4
            and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            and shape[0] >= 1 and shape[1:] == [height, width, 3]):
        raise ValueError(f"input shape must be [N, {height}, {width}, 3] with N >= 1, got {shape!r}")
    try:
        data = np.asarray(tensor.get("data"))
    except (ValueError, TypeError):
        data = np.asarray(None)
    if data.dtype.kind not in "iu" or data.size != int(np.prod(shape)) \
            or data.min() < 0 or data.max() > 255:
        raise ValueError(f"input data must be {int(np.prod(shape))} whole numbers in 0..255")
    images = data.astype(np.uint8).reshape(shape)
    request_id = body.get("id")
    return (str(request_id) if request_id is not None else None), list(images)


async def _uploaded_files(request: Request, read_body, max_body: int, max_files: int):
    """(filename, bytes) of each uploaded file: every file part of a multipart form, or the
    raw body as one image; a JSON error response if there is none or too many."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        _refuse_declared_over(request, max_body)
        try:
            form = await request.form(max_files=max_files, max_fields=max_files,
                                      max_part_size=max_body)
        except ClientDisconnect:
            raise
        except Exception as e:  # noqa: BLE001 - python-multipart's parse errors
            return _error(400, f"cannot read the multipart form: {e}")
        files = [(v.filename or key, await v.read()) for key, v in form.multi_items()
                 if hasattr(v, "read")]
        await form.close()
    else:
        body = await read_body(request)
        files = [("body", body)] if body else []
    if not files:
        return _error(400, "no image: send files as multipart/form-data, or one image as the body")
    if len(files) > max_files:
        return _error(413, f"{len(files)} files in one request; the limit is {max_files}")
    return files


async def _classify_one(batcher: Batcher, filename: str, data: bytes, top_k: int) -> dict:
    try:
        ranked = await batcher.submit_async(data)
    except (ImageError, PredictionError) as e:
        return {"file": filename, "error": str(e)}
    return {"file": filename,
            "predictions": [{"label": label, "probability": round(float(p), 6)}
                            for label, p in ranked[:top_k]]}
