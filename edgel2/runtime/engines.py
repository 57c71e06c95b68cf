"""One interface over ONNX Runtime sessions, OpenVINO compiled models and LiteRT
interpreters: uint8 NHWC batch in, float32 logits out (and the unknown score, when the file
has it and the caller asks), plus the metadata that edgel2 packed into the file. Which engine
opens a model, and how ``auto`` chooses, is :mod:`edgel2.runtime.auto`."""
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
    # The file has an ``unknown_score`` output (edgel2 export's unknown score, ``[N, 1]``).
    has_unknown: bool = False
    # ``run`` returns ``[N, classes + 1]``: the logits, then the unknown score. Set it (on a
    # file that has the output) before the first run; off, ``run`` returns the logits alone.
    with_unknown: bool = False

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
        image, logits, score = _classifier_io(path, self.session.get_inputs(),
                                              self.session.get_outputs(), lambda p: p.shape)
        self.input_name, self.output_name = image.name, logits.name
        self.score_name = score.name if score is not None else None
        self.has_unknown = score is not None
        self.input_shape = _static(image.shape)
        self.input_dtype = image.type.removeprefix("tensor(").removesuffix(")")
        self.output_shape = _static(logits.shape)
        self.on_gpu = self.providers[0] in (CUDA, TENSORRT)
        self.metadata = decode_onnx_metadata(self.session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray) -> np.ndarray:
        names = [self.output_name] + ([self.score_name] if self.with_unknown else [])
        if not self.on_gpu:
            return _joined(self.session.run(names, {self.input_name: batch}))
        # On a GPU, I/O binding copies the input once and skips ORT's per-call staging.
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
        for name in names:
            binding.bind_output(name)
        self.session.run_with_iobinding(binding)
        return _joined(binding.copy_outputs_to_cpu())


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
        image, logits, score = _classifier_io(path, self.interpreter.get_input_details(),
                                              self.interpreter.get_output_details(),
                                              lambda d: d["shape_signature"])
        self.input_index, self.output_index = image["index"], logits["index"]
        self.score_index = score["index"] if score is not None else None
        self.has_unknown = score is not None
        self.input_shape = _static(image["shape_signature"])
        self.input_dtype = np.dtype(image["dtype"]).name
        self.output_shape = _static(logits["shape_signature"])
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
            indices = [self.output_index] + ([self.score_index] if self.with_unknown else [])
            return _joined([self.interpreter.get_tensor(i) for i in indices])  # a copy


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
        # OpenVINO's CPU plugin (2026.2.1 and 2026.4.1, seen on an AVX2 CPU) now and then gets
        # an int8 convolution whose input has 8 mod 16 channels wrong when one request runs on
        # several threads: a few outputs off by tens of quantization steps, in other places
        # each time. On one thread a request it is exact, so such files (--width 4, 8, 24, ...;
        # not the shipped 16 and 64) run so, in both compiled models.
        self.one_thread_per_request = _has_int8_conv_of_8_mod_16_inputs(self.model)
        # float layers run in bf16 only when asked; int8 layers are int8 either way
        self.providers = ["OpenVINO CPU" + (", float layers in bf16" if compute_dtype == "bf16" else "")
                          + (", one thread a request" if self.one_thread_per_request else "")]
        ports = list(self.model.outputs)
        image, logits, score = _classifier_io(path, self.model.inputs, ports, _ov_dims)
        self._output_ports = [next(i for i, p in enumerate(ports) if p is wanted)
                              for wanted in (logits, score) if wanted is not None]
        self.has_unknown = score is not None
        self.input_shape = _static(_ov_dims(image))
        self.input_dtype = np.dtype(image.get_element_type().to_dtype()).name
        self.output_shape = _static(_ov_dims(logits))
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
                if self.one_thread_per_request:  # THROUGHPUT: as many streams as threads
                    threads = self.threads or os.cpu_count() or 1
                    config.update({"INFERENCE_NUM_THREADS": 1} if hint == "LATENCY" else
                                  {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": threads})
                elif self.threads:
                    config["INFERENCE_NUM_THREADS"] = self.threads
                self._compiled[hint] = self.core.compile_model(self.model, "CPU", config)
            return self._compiled[hint]

    def run(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled("LATENCY").create_infer_request()
        request.infer({0: np.ascontiguousarray(batch)})
        return self._outputs_of(request)

    def _outputs_of(self, request: Any) -> np.ndarray:
        ports = self._output_ports if self.with_unknown else self._output_ports[:1]
        return _joined([request.get_output_tensor(i).data for i in ports])  # copies

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
            self._submitted.start_async({0: np.ascontiguousarray(batch)},
                                        (self._outputs_of, done))  # waits for a stream

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
                     "input_dtype", "output_shape", "has_unknown"):
            setattr(self, name, getattr(inner, name))

    @property  # type: ignore[override]
    def with_unknown(self) -> bool:
        return self.inner.with_unknown

    @with_unknown.setter
    def with_unknown(self, value: bool) -> None:
        self.inner.with_unknown = value

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
            return np.zeros((0, (self.output_shape[1] or 0) + self.with_unknown), np.float32)
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


def _call_back(request: Any, userdata: tuple[Callable[[Any], np.ndarray],
                                             Callable[[np.ndarray | Exception], None]]) -> None:
    """OpenVINO's completion callback for :meth:`OpenVinoEngine.submit`."""
    outputs_of, done = userdata
    try:
        logits = outputs_of(request)
    except Exception as e:  # noqa: BLE001 - handed to the caller's callback
        done(e)
        return
    done(logits)


def _classifier_io(path: Path, inputs: list[Any], outputs: list[Any],
                   shape_of: Callable[[Any], Any]) -> tuple[Any, Any, Any]:
    """The graph's image input, logits output and unknown-score output (None when it has
    none), if it is an image classifier: one input, and one output or two of which one is
    ``[N, 1]`` (the unknown score; the other, the logits, has a class axis)."""
    def is_score(output: Any) -> bool:
        shape = list(shape_of(output))
        return len(shape) == 2 and shape[-1] == 1
    scores = [o for o in outputs if is_score(o)]
    if len(inputs) != 1 or not (len(outputs) == 1 or (len(outputs) == 2 and len(scores) == 1)):
        raise ModelError(f"{path.name}: the model has {len(inputs)} inputs and {len(outputs)} "
                         "outputs, not one image input and one logits output (and an optional "
                         "[N, 1] unknown score)")
    score = scores[0] if len(outputs) == 2 else None
    return inputs[0], next(o for o in outputs if o is not score), score


def _joined(outputs: Sequence[Any]) -> np.ndarray:
    """An engine's outputs as ``run`` returns them: the logits, with the unknown score as one
    more column when it was fetched (a copy either way)."""
    arrays = [np.asarray(o, np.float32) for o in outputs]
    return arrays[0].copy() if len(arrays) == 1 else np.concatenate(arrays, axis=1)


def _has_int8_conv_of_8_mod_16_inputs(model: Any) -> bool:
    """Whether an OpenVINO model read from a QDQ ONNX file has a convolution with int8 weights
    (a Constant of i8 a few nodes up its weight input: Convert, Subtract, Multiply) whose input
    has 8 mod 16 channels."""
    for op in model.get_ops():
        if op.get_type_name() != "Convolution":
            continue
        channels = op.input_value(1).get_partial_shape()[1]  # weights [out, in, kh, kw]
        if not channels.is_static or channels.get_length() % 16 != 8:
            continue
        node = op.input_value(1).get_node()
        for _ in range(4):
            if node.get_type_name() == "Constant":
                if node.get_output_element_type(0).get_type_name() == "i8":
                    return True
                break
            if node.get_input_size() == 0:  # weights from a graph input: not a QDQ file's
                break
            node = node.input_value(0).get_node()
    return False


def _ov_dims(port: Any) -> list[Any]:
    """An OpenVINO port's dimensions: their length, or None where dynamic."""
    return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


def _static(shape: Iterable[Any]) -> tuple[Any, ...]:
    """A graph's shape with every dynamic dimension (a name, None, -1) as None."""
    return tuple(int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None for d in shape)
