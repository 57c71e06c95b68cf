"""Which engine opens a model: the one asked for, or for ``auto`` the fastest on this CPU
for the workload (raced by :mod:`edgel2.runtime.probe`, remembered by
:mod:`edgel2.runtime.choices`), or, with the race off or on a GPU, a fixed rule.
:func:`open_engine` is the one way edgel2 opens a model file."""
from __future__ import annotations

import os
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgel2.errors import EdgeL2Error, EngineError, ModelError, OptionError, first_line
from edgel2.runtime.choices import probe_enabled
from edgel2.runtime.engines import (
    CPU,
    Engine,
    FixedBatch,
    ProviderFallbackWarning,
    reason,
    resolve_providers,
)
from edgel2.runtime.formats import ENGINE_FORMATS, ENGINE_SPECS, FILE_FORMATS, engines_for, load
from edgel2.runtime.modelfile import check_metadata, check_weights, model_files, sniff_format
from edgel2.runtime.probe import (
    LATENCY,
    Candidate,
    EngineChoice,
    Measured,
    candidates,
    check_workload,
    latency_sample,
    race,
    throughput_sample,
)

ENGINES = ("auto", *ENGINE_SPECS)
X86 = ("x86_64", "amd64", "i386", "i686")


def engine_candidates(fmt: str, engine: str = "auto",
                      providers: str | Sequence[str] | None = "auto") -> tuple[str, ...]:
    """The engines for a file of format ``fmt``, in order: the one asked for, or for ``auto``
    those that run the format (:data:`~edgel2.runtime.formats.ENGINE_SPECS`, in the fixed
    rule's order): on a GPU only those that run there (ONNX Runtime), and OpenVINO only on x86
    (its ARM plugin has not been measured or checked against ONNX Runtime on ARM). With its
    race on, ``auto`` races these; with it off, it takes the first that opens.

    Examples:
        >>> engine_candidates("tflite"), engine_candidates("onnx", "onnxruntime")
        (('litert',), ('onnxruntime',))
    """
    if engine not in ENGINES:
        raise OptionError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine != "auto":
        if ENGINE_FORMATS[engine] != fmt:
            raise EngineError(f"{engine} runs {ENGINE_FORMATS[engine].upper()} files, not {fmt.upper()}")
        return (engine,)
    specs = engines_for(fmt)
    if any(e.on_gpu for e in specs) and _onnx_on_gpu(providers):
        specs = [e for e in specs if e.on_gpu]
    x86 = platform.machine().lower() in X86
    return tuple(e.name for e in specs if x86 or not e.x86_only)


# What floating-point layers compute in (OpenVINO; the other engines run the file as it is)
COMPUTE_DTYPES = ("fp32", "bf16")
COMPUTE_DTYPE_ALIASES = {"f32": "fp32"}  # OpenVINO's spelling, read as edgel2's


def open_engine(path: str | os.PathLike[str], providers: str | Sequence[str] | None = "auto",
                threads: int | None = None, strict: bool = False, engine: str = "auto",
                compute_dtype: str = "fp32", workload: str = LATENCY, batch_size: int = 64,
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
        compute_dtype: ``fp32``, or ``bf16`` to let OpenVINO compute float layers in
            bfloat16 (the file's own precision, int8 or fp16, is what it is).
        workload: ``latency`` (one image at a time) or ``throughput`` (batches of
            ``batch_size``): what ``auto`` measures.
        batch_size: The batch size of the throughput workload.
        probe: Whether ``auto`` measures; None reads ``EDGEL2_ENGINE_PROBE``.

    Returns:
        The opened engine.

    Examples:
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
    on_gpu_engines = [e for fmt in set(formats.values()) for e in engines_for(fmt) if e.on_gpu]
    if not on_gpu_engines and providers not in (None, "auto", "cpu"):
        titles = " and ".join(sorted({e.title for f in formats.values() for e in engines_for(f)}))
        message = f"{files[0].name}: {titles} runs on the CPU here, not {providers}"
        if strict:
            raise EngineError(message)
        warnings.warn(f"{message} (providers are for ONNX Runtime)", ProviderFallbackWarning,
                      stacklevel=3)
    compute_dtype = COMPUTE_DTYPE_ALIASES.get(compute_dtype, compute_dtype)
    if compute_dtype not in COMPUTE_DTYPES:
        raise OptionError(f"compute_dtype must be {' or '.join(COMPUTE_DTYPES)}, "
                          f"got {compute_dtype!r}")
    compute_dtype = "f32" if compute_dtype == "fp32" else compute_dtype  # OpenVINO's spelling
    plan = [(name, file) for file in files
            for name in engine_candidates(formats[file], engine, providers)]
    data = {file: _read_model(file) for file in files}
    for file in files:
        check_before_open = FILE_FORMATS[formats[file]].check_before_open
        if check_before_open:  # before any engine builds the graph
            load(check_before_open)(data[file], file)

    def open_candidate(candidate: Candidate) -> Engine:
        opened = _open_one(candidate, providers, strict, compute_dtype)
        check_weights(opened.metadata, data[candidate.path], formats[candidate.path],
                      candidate.path)
        fixed = len(opened.input_shape) > 0 and isinstance(opened.input_shape[0], int)
        return FixedBatch(opened) if fixed else opened  # a rank-0 input: check_metadata says so

    on_gpu = bool(on_gpu_engines) and _onnx_on_gpu(providers)
    if engine == "auto" and not on_gpu and probe_enabled(probe):
        raced = candidates(plan, workload, threads, os.cpu_count() or 1)
        if len(raced) > 1:
            return _fastest(raced, open_candidate, data, workload,
                            1 if workload == LATENCY else batch_size, threads, compute_dtype)
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
             compute_dtype: str) -> Engine:
    """The fastest of ``raced`` for ``workload``: as remembered for this machine, else raced
    now (and remembered). A candidate that cannot be opened or run is left out, and
    ``engine.fallback`` says why."""
    from edgel2.runtime import choices

    hashes = {file: choices.file_hash(content) for file, content in data.items()}
    key = choices.choice_key(list(hashes.values()), workload, batch, threads, compute_dtype)

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
          ) -> tuple[list[Measured], list[str]]:
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


def _read_model(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read model file {path}: {e.strerror or e}") from None


def _open_one(candidate: Candidate, providers: str | Sequence[str] | None, strict: bool,
              compute_dtype: str) -> Engine:
    spec = ENGINE_SPECS[candidate.engine]
    try:
        opened: Engine = load(spec.opener).open(
            candidate.path, threads=candidate.threads, streams=candidate.streams,
            providers=providers, strict=strict, compute_dtype=compute_dtype)
        return opened
    except EdgeL2Error:
        raise
    except Exception as e:  # noqa: BLE001 - the engines refuse files that are not models
        raise ModelError(f"cannot load {candidate.path} with {spec.title}: {reason(e)}") from None
