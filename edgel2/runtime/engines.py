"""One interface over ONNX Runtime sessions, OpenVINO compiled models and LiteRT
interpreters: uint8 NHWC batch in, float32 logits out, plus the metadata that edgel2 packed
into the file. Which engine opens a model, and how ``auto`` chooses, is
:mod:`edgel2.runtime.auto`."""
from __future__ import annotations

import functools
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edgel2.errors import EngineError, ModelError, first_line, missing_extra
from edgel2.runtime.modelfile import decode_onnx_metadata, tflite_metadata
from edgel2.runtime.probe import EngineChoice

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
PROVIDER_ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}
AUTO_ORDER = (TENSORRT, CUDA, CPU)
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")  # what --provider offers
Tag = TypeVar("Tag")  # what run_stream's caller tags each batch with
# Per-provider options: cuDNN's HEURISTIC search picks conv algorithms without benchmarking
# each new input shape (EXHAUSTIVE re-tunes for every batch size a dynamic batch brings).
PROVIDER_OPTIONS = {
    CUDA: {"cudnn_conv_algo_search": "HEURISTIC", "cudnn_conv_use_max_workspace": "1"},
    TENSORRT: {"trt_engine_cache_enable": "True", "trt_timing_cache_enable": "True"},
}


class ProviderFallbackWarning(RuntimeWarning):
    """A GPU provider was asked for, but the session runs on fewer (often only the CPU)."""


def resolve_providers(requested: str | Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """The provider list to ask ONNX Runtime for.

    Args:
        requested: ``"auto"`` (or None) for TensorRT, then CUDA, then CPU, from what is
            available; a name (``cpu``, ``cuda``, ``tensorrt`` or a full provider name) or a
            list, honoured as given.
        available: What ``onnxruntime.get_available_providers()`` says.

    Returns:
        Provider names, with the CPU appended as the last resort.

    Examples:
        >>> resolve_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])
        ['CUDAExecutionProvider', 'CPUExecutionProvider']
        >>> resolve_providers("cuda", ["CPUExecutionProvider"])
        ['CUDAExecutionProvider', 'CPUExecutionProvider']
    """
    if requested is None or requested == "auto":
        return [p for p in AUTO_ORDER if p in available] or [CPU]
    names = [requested] if isinstance(requested, str) else list(requested)
    providers = [PROVIDER_ALIASES.get(n.lower(), n) for n in names]
    return providers if CPU in providers else providers + [CPU]


class Engine:
    """A loaded model file. ``run(batch)`` maps uint8 ``[N, H, W, C]`` to logits ``[N, classes]``;
    safe to call from several threads. The graph's own input and output (static shapes, None
    where dynamic) are there to check the metadata against. A new engine is a subclass and
    a row in :data:`~edgel2.runtime.formats.ENGINE_SPECS`.

    Examples:
        >>> engine = open_engine("models/resnet18-int8.onnx", engine="onnxruntime")  # doctest: +SKIP
        >>> engine.run(np.zeros((2, 32, 32, 3), np.uint8)).shape                    # doctest: +SKIP
        (2, 10)
    """

    name: str  # onnxruntime, openvino or litert
    path: Path
    metadata: dict[str, Any]
    providers: list[str]
    fallback: str | None = None  # why `auto` skipped the engines before this one
    choice: EngineChoice | None = None  # what `auto` measured to choose this one
    input_shape: tuple[Any, ...]
    input_dtype: str
    output_shape: tuple[Any, ...]

    # which of open()'s options the engine's constructor takes
    takes: tuple[str, ...] = ()

    @classmethod
    def open(cls, path: Path, **options: Any) -> Engine:
        """Open ``path`` given the options every engine is given (``threads``; ``streams``,
        OpenVINO's performance hint; ``providers`` and ``strict``, ONNX Runtime's;
        ``compute_dtype``, what OpenVINO computes float layers in): each takes its own."""
        return cls(path, **{k: v for k, v in options.items() if k in cls.takes})  # type: ignore[call-arg]

    def run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def submit(self, batch: np.ndarray, done: Callable[[np.ndarray | Exception], None]) -> None:
        """Run ``batch`` and call ``done`` with its logits (or the exception). Here ``done`` runs
        before ``submit`` returns; engines with several streams (OpenVINO) return as soon as a
        stream is free and call back from their own thread. One caller thread at a time."""
        try:
            logits = self.run(batch)
        except Exception as e:  # noqa: BLE001 - handed to the caller's callback
            done(e)
            return
        done(logits)

    def wait(self) -> None:
        """Return when every batch passed to :meth:`submit` has called back."""

    @property
    def parallel_batches(self) -> int:
        """How many batches :meth:`submit` runs at once (OpenVINO's streams; else 1)."""
        return 1

    def run_stream(self, items: Iterable[tuple[Tag, np.ndarray | None]]
                   ) -> Iterator[tuple[Tag, np.ndarray | None]]:
        """``(tag, logits)`` for each ``(tag, batch)``, in order (None for a None batch), built
        on :meth:`submit`: engines with several streams keep a batch in flight on each."""
        done: dict[int, object] = {}  # filled by the callbacks, maybe from another thread
        tags: list[Any] = []
        position = 0  # the next result to leave

        def leave() -> Iterator[tuple[Tag, np.ndarray | None]]:  # those ready, in order
            nonlocal position
            while position in done:
                out = done.pop(position)
                if isinstance(out, Exception):
                    raise out
                yield tags[position], out  # type: ignore[misc]  # logits or None
                position += 1

        for index, (tag, batch) in enumerate(items):
            tags.append(tag)
            if batch is None:
                done[index] = None
            else:
                self.submit(batch, functools.partial(done.__setitem__, index))
            yield from leave()
        self.wait()
        yield from leave()
        if position < len(tags):  # a batch that never called back: never skip it silently
            raise EngineError(f"{self.path.name}: the engine returned {position} of "
                              f"{len(tags)} batches")


class OnnxEngine(Engine):
    name = "onnxruntime"

    takes = ("providers", "threads", "strict")

    def __init__(self, path: Path, providers: str | Sequence[str] | None = "auto",
                 threads: int | None = None, strict: bool = False):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 4  # errors reach the user as exceptions, in one line
        # The worker threads spin while a run lasts (quick hand-offs between operators), not
        # after it returns: spinning on after a run took a core from whatever ran next in the
        # process (decoding, another engine) for tens of milliseconds.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        if threads:
            options.intra_op_num_threads = threads
        wanted = resolve_providers(providers, ort.get_available_providers())
        self.path = path

        def session(names: list[str]) -> Any:
            # enable_fallback=0: onnxruntime's own retry prints a banner on stdout; the CPU
            # retry below goes through ProviderFallbackWarning instead
            return ort.InferenceSession(str(path), options, providers=names, enable_fallback=0,
                                        provider_options=[PROVIDER_OPTIONS.get(p, {}) for p in names])
        try:
            self.session = session(wanted)
        except Exception:
            if wanted == [CPU]:
                raise
            self.session = session([CPU])  # a GPU provider that failed to start
        self.providers = self.session.get_providers()
        missing = [p for p in wanted if p not in self.providers]
        if missing:
            message = (f"asked for {', '.join(missing)} but ONNX Runtime runs {path.name} on "
                       f"{', '.join(self.providers)} (available here: "
                       f"{', '.join(ort.get_available_providers())})")
            if strict:
                raise EngineError(message)
            warnings.warn(message, ProviderFallbackWarning, stacklevel=4)  # at the caller
        inputs, outputs = _one_each(path, self.session.get_inputs(), self.session.get_outputs())
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_shape = _static(inputs[0].shape)
        self.input_dtype = inputs[0].type.removeprefix("tensor(").removesuffix(")")
        self.output_shape = _static(outputs[0].shape)
        self.on_gpu = self.providers[0] in (CUDA, TENSORRT)
        self.metadata = decode_onnx_metadata(self.session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if not self.on_gpu:
            return np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0])
        # On a GPU, I/O binding copies the input once and skips ORT's per-call staging.
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
        binding.bind_output(self.output_name)
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0])


class TFLiteEngine(Engine):
    name = "litert"

    takes = ("threads",)

    def __init__(self, path: Path, threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise missing_extra(e, "LiteRT, which runs .tflite files,") or e from None

        self.path = path
        self.providers = ["LiteRT (CPU)"]
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count())
        _check_tensor_bytes(self.interpreter.get_tensor_details(), path)
        inputs, outputs = _one_each(path, self.interpreter.get_input_details(),
                                    self.interpreter.get_output_details())
        self.input_index, self.output_index = inputs[0]["index"], outputs[0]["index"]
        self.input_shape = _static(inputs[0]["shape_signature"])
        self.input_dtype = np.dtype(inputs[0]["dtype"]).name
        self.output_shape = _static(outputs[0]["shape_signature"])
        self._batch: int | None = None
        self._lock = threading.Lock()  # an interpreter is not thread-safe
        self.metadata = tflite_metadata(path)  # the format is known: no second sniff

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._batch != len(batch):
                self.interpreter.resize_tensor_input(self.input_index, list(batch.shape))
                self.interpreter.allocate_tensors()
                self._batch = len(batch)
            self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(batch))
            self.interpreter.invoke()
            return np.array(self.interpreter.get_tensor(self.output_index))  # a copy


class OpenVinoEngine(Engine):
    """An ONNX file compiled by OpenVINO for the CPU. Floating-point layers run in f32 unless
    ``compute_dtype="bf16"`` is asked for (OpenVINO would otherwise pick bf16 by itself on CPUs
    that have it). ``run`` uses a model compiled for latency (one stream, all threads; each
    calling thread gets its own infer request); with ``streams="throughput"`` :meth:`submit`
    (and so ``run_stream`` and the Batcher) uses one compiled for throughput, behind an async
    queue that keeps a batch in flight per stream; with ``streams="latency"`` it runs each
    batch on the LATENCY-compiled model too (the lowest time for one request)."""

    name = "openvino"

    takes = ("threads", "compute_dtype", "streams")

    def __init__(self, path: Path, threads: int | None = None, compute_dtype: str = "f32",
                 streams: str | None = "throughput"):
        try:
            import openvino as ov
        except ImportError as e:
            raise missing_extra(e, "OpenVINO") or e from None
        self.path, self.compute_dtype, self.threads = path, compute_dtype, threads
        self.streams = streams or "throughput"
        self.core = ov.Core()
        self.model = self.core.read_model(str(path))
        self._compiled: dict[str, Any] = {}
        self._submitted: Any = None  # the async queue behind submit(), made on first use
        self._local = threading.local()
        self._lock = threading.Lock()  # compiling
        self._submit_lock = threading.Lock()  # one thread at a time starts requests
        # float layers run in bf16 only when asked; int8 layers are int8 either way
        self.providers = ["OpenVINO CPU" + (", float layers in bf16" if compute_dtype == "bf16" else "")]
        inputs, outputs = _one_each(path, self.model.inputs, self.model.outputs)
        self.input_shape = _static(_ov_dims(inputs[0]))
        self.input_dtype = np.dtype(inputs[0].get_element_type().to_dtype()).name
        self.output_shape = _static(_ov_dims(outputs[0]))
        # OpenVINO keeps an ONNX file's metadata_props as rt_info["framework"]
        props = self.model.get_rt_info(["framework"]).value \
            if self.model.has_rt_info(["framework"]) else {}
        self.metadata = decode_onnx_metadata({k: str(v) for k, v in props.items()})
        self.compiled("LATENCY")  # compile errors surface when the file is opened

    def compiled(self, hint: str) -> Any:
        """The model compiled with PERFORMANCE_HINT ``hint`` (LATENCY or THROUGHPUT), once."""
        with self._lock:
            if hint not in self._compiled:
                config: dict[str, str | int] = {"PERFORMANCE_HINT": hint,
                                                "INFERENCE_PRECISION_HINT": self.compute_dtype}
                if self.threads:
                    config["INFERENCE_NUM_THREADS"] = self.threads
                self._compiled[hint] = self.core.compile_model(self.model, "CPU", config)
            return self._compiled[hint]

    def run(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled("LATENCY").create_infer_request()
        return np.asarray(request.infer({0: np.ascontiguousarray(batch)})[0])

    @property
    def parallel_batches(self) -> int:
        return len(self._submitted) if self._submitted is not None else 1

    def submit(self, batch: np.ndarray, done: Callable[[np.ndarray | Exception], None]) -> None:
        import openvino as ov

        if self.streams == "latency":
            super().submit(batch, done)
            return
        with self._submit_lock:
            if self._submitted is None:
                compiled = self.compiled("THROUGHPUT")
                queue = ov.AsyncInferQueue(
                    compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
                queue.set_callback(_call_back)
                self._submitted = queue
            self._submitted.start_async({0: np.ascontiguousarray(batch)}, done)  # waits for a stream

    def wait(self) -> None:
        if self._submitted is not None:
            self._submitted.wait_all()


class FixedBatch(Engine):
    """An engine whose file takes exactly N images a call (``edgel2 export --batch N``, for
    NPUs and delegates that want static shapes): any batch is run as N-image calls, the last
    one padded with black images whose logits are dropped. The file itself refuses any other
    batch; edgel2's runtime adapts to it.

    Examples:
        >>> engine = open_engine("export-b8/model-int8.onnx")    # doctest: +SKIP
        >>> engine.fixed_batch, engine.run(images[:3]).shape        # doctest: +SKIP
        (8, (3, 10))
    """

    def __init__(self, inner: Engine):
        self.inner = inner
        self.fixed_batch: int = inner.input_shape[0]
        for name in ("name", "path", "metadata", "providers", "fallback", "input_shape",
                     "input_dtype", "output_shape"):
            setattr(self, name, getattr(inner, name))

    def run(self, batch: np.ndarray) -> np.ndarray:
        n = self.fixed_batch
        outputs = []
        for start in range(0, len(batch), n):
            chunk = batch[start:start + n]
            if len(chunk) < n:
                chunk = np.concatenate([chunk, np.zeros((n - len(chunk), *chunk.shape[1:]),
                                                        chunk.dtype)])
            outputs.append(self.inner.run(chunk)[:min(n, len(batch) - start)])
        if not outputs:
            return np.zeros((0, self.output_shape[1] or 0), np.float32)
        return np.concatenate(outputs)

    def wait(self) -> None:
        self.inner.wait()


# The most memory a .tflite file's tensors may take for one image (their declared shapes):
# the shipped ResNet-18 needs about 7 MB, a hostile file may declare terabytes.
MAX_TENSOR_BYTES = 1 << 30


def _check_tensor_bytes(details: list[dict[str, Any]], path: Path) -> None:
    """Refuse a TFLite file whose tensors, as declared, would take more than
    :data:`MAX_TENSOR_BYTES` for one image: LiteRT would allocate them on the first run."""
    total = sum(int(np.prod(np.maximum(d["shape"], 1), dtype=np.float64))
                * np.dtype(d["dtype"]).itemsize for d in details)
    if total > MAX_TENSOR_BYTES:
        raise ModelError(f"{path.name}: its tensors would take {total / 2**30:,.1f} GiB for "
                         f"one image (limit {MAX_TENSOR_BYTES / 2**30:g} GiB): refused")


def reason(error: Exception) -> str:
    """Why an engine refused a file, in a line: OpenVINO's messages start with where in its
    sources the check failed (``Exception from src/inference/src/cpp/core.cpp:84:``) and say
    what was wrong last."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("Exception from", "Check '"))
            and not line.endswith(":")]
    return said[-1][:200] if said else first_line(error)


def _call_back(request: Any, done: Callable[[np.ndarray | Exception], None]) -> None:
    """OpenVINO's completion callback for :meth:`OpenVinoEngine.submit`."""
    try:
        logits = request.get_output_tensor(0).data.copy()
    except Exception as e:  # noqa: BLE001 - handed to the caller's callback
        done(e)
        return
    done(logits)


def _one_each(path: Path, inputs: list[Any], outputs: list[Any]) -> tuple[list[Any], list[Any]]:
    """The graph's inputs and outputs, if it has one of each (an image classifier)."""
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{path.name}: the model has {len(inputs)} inputs and {len(outputs)} "
                         "outputs, not one image input and one logits output")
    return inputs, outputs


def _ov_dims(port: Any) -> list[Any]:
    """An OpenVINO port's dimensions: their length, or None where dynamic."""
    return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


def _static(shape: Iterable[Any]) -> tuple[Any, ...]:
    """A graph's shape with every dynamic dimension (a name, None, -1) as None."""
    return tuple(int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None for d in shape)
