"""One interface over ONNX Runtime sessions and LiteRT interpreters: uint8 NHWC batch in,
float32 logits out, plus the metadata that edgel2 packed into the file."""
from __future__ import annotations

import functools
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edgel2.errors import (
    EdgeL2Error,
    EngineError,
    ModelError,
    OptionError,
    first_line,
    missing_extra,
)
from edgel2.runtime.choices import probe_enabled
from edgel2.runtime.modelfile import (
    ONNX,
    TFLITE,
    check_metadata,
    check_weights,
    decode_onnx_metadata,
    model_files,
    sniff_format,
    tflite_metadata,
)
from edgel2.runtime.probe import (
    LATENCY,
    Candidate,
    EngineChoice,
    candidates,
    check_workload,
    latency_sample,
    race,
    throughput_sample,
)

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
PROVIDER_ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}
AUTO_ORDER = (TENSORRT, CUDA, CPU)
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

    ``"auto"`` (or None) takes TensorRT, then CUDA, then CPU, from what is available; a name
    (``cpu``, ``cuda``, ``tensorrt`` or a full provider name) or a list is honoured as given,
    with the CPU appended as the last resort.

    Example:
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
    where dynamic) are there to check the metadata against."""

    name: str  # onnxruntime, openvino or litert
    path: Path
    metadata: dict[str, Any]
    providers: list[str]
    fallback: str | None = None  # why `auto` skipped the engines before this one
    choice: EngineChoice | None = None  # what `auto` measured to choose this one
    input_shape: tuple[Any, ...]
    input_dtype: str
    output_shape: tuple[Any, ...]

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
    ``precision="bf16"`` is asked for (OpenVINO would otherwise pick bf16 by itself on CPUs
    that have it). ``run`` uses a model compiled for latency (one stream, all threads; each
    calling thread gets its own infer request); with ``streams="throughput"`` :meth:`submit`
    (and so ``run_stream`` and the Batcher) uses one compiled for throughput, behind an async
    queue that keeps a batch in flight per stream; with ``streams="latency"`` it runs each
    batch on the LATENCY-compiled model too (the lowest time for one request)."""

    name = "openvino"

    def __init__(self, path: Path, threads: int | None = None, precision: str = "f32",
                 streams: str = "throughput"):
        try:
            import openvino as ov
        except ImportError as e:
            raise missing_extra(e, "OpenVINO") or e from None
        self.path, self.precision, self.threads = path, precision, threads
        self.streams = streams
        self.core = ov.Core()
        self.model = self.core.read_model(str(path))
        self._compiled: dict[str, Any] = {}
        self._submitted: Any = None  # the async queue behind submit(), made on first use
        self._local = threading.local()
        self._lock = threading.Lock()  # compiling
        self._submit_lock = threading.Lock()  # one thread at a time starts requests
        # float layers run in bf16 only when asked; int8 layers are int8 either way
        self.providers = ["OpenVINO CPU" + (", float layers in bf16" if precision == "bf16" else "")]
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
                                                "INFERENCE_PRECISION_HINT": self.precision}
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

    Example:
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

    @property
    def parallel_batches(self) -> int:
        return 1  # run() takes the batch apart: one call at a time

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


ENGINES = ("auto", "onnxruntime", "openvino", "litert")
ENGINE_FORMATS = {"onnxruntime": ONNX, "openvino": ONNX, "litert": TFLITE}
# The engine each format is checked with against Keras: the one its exporter targets.
REFERENCE_ENGINE = {ONNX: "onnxruntime", TFLITE: "litert"}
# The fixed rule for an ONNX file on a CPU, when `auto` does not race (EDGEL2_ENGINE_PROBE=0):
# OpenVINO when it is installed, else ONNX Runtime; fastest first on the Intel Xeon and AMD
# EPYC measured (README, "Which engine"). With the race on, the order of its candidates.
AUTO_ONNX_ON_CPU = ("openvino", "onnxruntime")


def engine_candidates(fmt: str, engine: str = "auto",
                      providers: str | Sequence[str] | None = "auto") -> tuple[str, ...]:
    """The engines for a file of format ``fmt``, in order: the one asked for, or for ``auto``
    LiteRT for TFLite, ONNX Runtime for ONNX when it will run on a GPU, else
    :data:`AUTO_ONNX_ON_CPU` on x86 (OpenVINO's ARM plugin has not been measured or checked
    against ONNX Runtime on ARM). With its race on, ``auto`` races these; with it off, it
    takes the first that opens.

    Example:
        >>> engine_candidates("tflite"), engine_candidates("onnx", "onnxruntime")
        (('litert',), ('onnxruntime',))
    """
    if engine not in ENGINES:
        raise OptionError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine != "auto":
        if ENGINE_FORMATS[engine] != fmt:
            raise EngineError(f"{engine} runs {ENGINE_FORMATS[engine].upper()} files, not {fmt.upper()}")
        return (engine,)
    if fmt == TFLITE:
        return ("litert",)
    import onnxruntime as ort

    on_gpu = resolve_providers(providers, ort.get_available_providers())[0] != CPU
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    return ("onnxruntime",) if on_gpu or not x86 else AUTO_ONNX_ON_CPU


# What floating-point layers compute in (OpenVINO; the other engines run the file as it is)
INFERENCE_PRECISIONS = ("fp32", "bf16")
INFERENCE_PRECISION_ALIASES = {"f32": "fp32"}  # OpenVINO's spelling, read as edgel2's


def open_engine(path: str | os.PathLike[str], providers: str | Sequence[str] | None = "auto",
                threads: int | None = None, strict: bool = False, engine: str = "auto",
                precision: str = "fp32", workload: str = LATENCY, batch_size: int = 64,
                probe: bool | None = None) -> Engine:
    """Open a model with ``engine`` (``auto``, ``onnxruntime``, ``openvino`` or ``litert``).

    ``path`` is an ONNX or TFLite file, whatever its suffix (the format is sniffed from its
    first bytes), or a folder holding one model's ONNX and TFLite files
    (:func:`~edgel2.runtime.modelfile.model_files`). On a CPU, ``auto`` races the engines that
    can run the files, with the settings worth trying for ``workload``
    (:mod:`edgel2.runtime.probe`), and keeps the fastest; the choice is remembered for this
    machine (:mod:`edgel2.runtime.choices`) and said in ``engine.choice``. With ``probe=False``
    or ``EDGEL2_ENGINE_PROBE=0``, or on a GPU, ``auto`` follows the fixed rule of
    :func:`engine_candidates` instead, falling back to the next engine when one is not
    installed or cannot compile the file (``engine.fallback`` says why). A file no engine
    accepts raises :class:`ModelError`.

    Args:
        path: A model file or a folder holding one model's pair of files.
        providers: ONNX Runtime's providers (see :func:`resolve_providers`).
        threads: The engine's threads; None for every core.
        strict: Raise :class:`EngineError` instead of warning when a provider asked for is
            not used.
        engine: ``auto`` or an engine's name.
        precision: ``fp32``, or ``bf16`` to let OpenVINO run float layers in bfloat16.
        workload: ``latency`` (one image at a time) or ``throughput`` (batches of
            ``batch_size``): what ``auto`` measures.
        batch_size: The batch size of the throughput workload.
        probe: Whether ``auto`` measures; None reads ``EDGEL2_ENGINE_PROBE``.

    Returns:
        The opened engine.

    Example:
        >>> engine = open_engine("models/", workload="latency")     # doctest: +SKIP
        >>> engine.name, engine.run(np.zeros((1, 32, 32, 3), np.uint8)).shape  # doctest: +SKIP
        ('litert', (1, 10))
        >>> print(engine.choice)                                      # doctest: +SKIP
        litert resnet18-int8.tflite, batch-1 median 1.52 ms: the fastest of 5 measured ...
    """
    check_workload(workload)
    files = model_files(path)
    formats = {file: sniff_format(file) for file in files}
    if engine in ENGINE_FORMATS and len(files) > 1:  # a pair: the file that engine runs
        files = [f for f in files if formats[f] == ENGINE_FORMATS[engine]] or files[:1]
    if list(formats.values()) == [TFLITE] and providers not in (None, "auto", "cpu"):
        message = f"{files[0].name}: LiteRT runs on the CPU here, not {providers}"
        if strict:
            raise EngineError(message)
        warnings.warn(f"{message} (providers are for ONNX Runtime)", ProviderFallbackWarning,
                      stacklevel=3)
    precision = INFERENCE_PRECISION_ALIASES.get(precision, precision)
    if precision not in INFERENCE_PRECISIONS:
        raise OptionError(f"precision must be {' or '.join(INFERENCE_PRECISIONS)}, got {precision!r}")
    precision = "f32" if precision == "fp32" else precision  # OpenVINO's own spelling
    plan = [(name, file) for file in files
            for name in engine_candidates(formats[file], engine, providers)]
    data = {file: _read_model(file) for file in files}
    for file in files:
        if formats[file] == ONNX:  # before any engine builds the graph
            from edgel2.runtime.onnxfile import check_graph

            check_graph(data[file], file)

    def open_candidate(candidate: Candidate) -> Engine:
        opened = _open_one(candidate, providers, strict, precision)
        check_weights(opened.metadata, data[candidate.path], formats[candidate.path],
                      candidate.path)
        fixed = len(opened.input_shape) > 0 and isinstance(opened.input_shape[0], int)
        return FixedBatch(opened) if fixed else opened  # a rank-0 input: check_metadata says so

    on_gpu = plan[0][0] == "onnxruntime" and ONNX in formats.values() and \
        _onnx_on_gpu(providers)
    if engine == "auto" and not on_gpu and probe_enabled(probe):
        raced = candidates(plan, workload, threads, os.cpu_count() or 1)
        if len(raced) > 1:
            return _fastest(raced, open_candidate, data, workload,
                            1 if workload == LATENCY else batch_size, threads, precision)
        plan = [(c.engine, c.path) for c in raced]
    skipped: list[str] = []
    for i, (name, file) in enumerate(plan):
        try:
            opened = open_candidate(Candidate(name, file, threads))
        except EdgeL2Error as e:
            if i + 1 == len(plan):
                raise
            skipped.append(f"{name}: {e}")
            continue
        opened.fallback = "; ".join(skipped) or None
        return opened
    raise AssertionError("unreachable: the last candidate raises")  # pragma: no cover


probe_clock = time.perf_counter  # what the race times with (tests give it a fake clock)


def _onnx_on_gpu(providers: str | Sequence[str] | None) -> bool:
    import onnxruntime as ort

    return resolve_providers(providers, ort.get_available_providers())[0] != CPU


def _fastest(raced: list[Candidate], open_candidate: Callable[[Candidate], Engine],
             data: dict[Path, bytes], workload: str, batch: int, threads: int | None,
             precision: str) -> Engine:
    """The fastest of ``raced`` for ``workload``: as remembered for this machine, else raced
    now (and remembered). A candidate that cannot be opened or run is left out, and
    ``engine.fallback`` says why."""
    from edgel2.runtime import choices

    hashes = {file: choices.file_hash(content) for file, content in data.items()}
    key = choices.choice_key(list(hashes.values()), workload, batch, threads, precision)

    def remembered() -> Engine | None:
        found = choices.load(key, raced, hashes)
        if found is None:
            return None
        try:
            opened = open_candidate(found.measured[0].contender)
        except EdgeL2Error:
            return None  # e.g. an engine uninstalled since: measure what is there now
        opened.choice = found
        return opened

    cached = remembered()
    if cached is not None:
        return cached
    with choices.measuring(key):
        cached = remembered()  # another process measured while this one waited
        if cached is not None:
            return cached
        opened, skipped = _open_all(raced, open_candidate)
        measured, failed = _race(opened, workload, batch, len(data) > 1)
        skipped += failed
        if not measured:
            raise ModelError(skipped[-1])
        choice = EngineChoice(workload, batch, measured, "measured", choices.now())
        if not failed:  # a candidate that failed may only have been unlucky: measure again
            choices.save(key, choice, hashes)
    chosen = opened[measured[0].contender]
    chosen.choice, chosen.fallback = choice, "; ".join(skipped) or None
    return chosen


def _open_all(raced: list[Candidate], open_candidate: Callable[[Candidate], Engine]
              ) -> tuple[dict[Candidate, Engine], list[str]]:
    """Every candidate that opens, and why the others did not; the last one's error is
    raised when none opens."""
    opened: dict[Candidate, Engine] = {}
    skipped: list[str] = []
    for i, candidate in enumerate(raced):
        try:
            opened[candidate] = open_candidate(candidate)
        except EdgeL2Error as e:
            if not opened and i + 1 == len(raced):
                raise
            skipped.append(f"{candidate.label}: {e}")
    return opened, skipped


# The race's throughput batch holds at most this many bytes of pixels (a 32x32 model's batch
# of 64 takes 192 KB; a 4096x4096 one's would take 3.2 GB before the app asked for any).
MAX_RACE_BATCH_BYTES = 1 << 28


def _race(opened: dict[Candidate, Engine], workload: str, batch: int, pair: bool
          ) -> tuple[list[Any], list[str]]:
    """Check every engine's metadata (the files of a pair must classify the same things at
    the same size), warm the engines up, then :func:`~edgel2.runtime.probe.race` those that
    ran; the figures, and why the others were left out."""
    infos = {c: check_metadata(e.metadata, e.path, e.input_shape, e.input_dtype, e.output_shape)
             for c, e in opened.items()}
    first = next(iter(infos.values()))
    for candidate, info in infos.items():
        if pair and (info.class_names, info.input_size) != (first.class_names, first.input_size):
            raise ModelError(f"{candidate.path.name} and {next(iter(opened)).path.name} are not "
                             "one model: their metadata disagree on the classes or the input size")
    width, height = first.input_size
    batch = max(1, min(batch, MAX_RACE_BATCH_BYTES // (width * height * 3)))
    images = np.zeros((batch, height, width, 3), np.uint8)
    ran: dict[Candidate, Engine] = {}
    failed: list[str] = []
    for candidate, engine in opened.items():
        try:  # the first run allocates, and compiles OpenVINO's THROUGHPUT streams
            for _ in engine.run_stream([(None, images)]):
                pass
        except Exception as e:  # noqa: BLE001 - whatever the engine raised
            failed.append(f"{candidate.label}: fails on its first run: {first_line(e)}")
            continue
        ran[candidate] = engine

    def sample(candidate: Candidate) -> float:
        engine = ran[candidate]
        if workload == LATENCY:
            return latency_sample(engine.run, images, clock=probe_clock)
        return throughput_sample(engine.run_stream, images, max(2, engine.parallel_batches),
                                 clock=probe_clock)
    measured = race(list(ran), sample, label=lambda c: c.label, clock=probe_clock) if ran else []
    return measured, failed


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


def _read_model(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read model file {path}: {e.strerror or e}") from None


def _open_one(candidate: Candidate, providers: str | Sequence[str] | None, strict: bool,
              precision: str) -> Engine:
    name, path, threads = candidate.engine, candidate.path, candidate.threads
    try:
        if name == "onnxruntime":
            return OnnxEngine(path, providers, threads, strict)
        if name == "openvino":
            return OpenVinoEngine(path, threads, precision, candidate.streams or "throughput")
        return TFLiteEngine(path, threads)
    except EdgeL2Error:
        raise
    except Exception as e:  # noqa: BLE001 - the engines refuse files that are not models
        raise ModelError(f"cannot load {path}"
                         + (" with OpenVINO" if name == "openvino" else "")
                         + f": {_reason(e)}") from None


def _reason(error: Exception) -> str:
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
