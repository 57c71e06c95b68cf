"""Choosing the Keras backend and describing the device, without importing TensorFlow
unless it is the backend in use (a GPU machine may have JAX but no TensorFlow)."""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from edgel2.errors import EdgeL2Error
from edgel2.utils import cache_folder

BACKENDS = ("tensorflow", "jax")
# JAX's persistent compilation cache, kept in edgel2's cache folder unless the user set
# JAX_COMPILATION_CACHE_DIR (empty: no cache). Every program is kept (JAX's default keeps only
# those that took over 1 s to compile): building or loading a model on JAX compiles one small
# random-number program per weight shape, about 1 s each on a 2-core CPU, so a command on a
# .keras file spent 25-28 s of a ResNet-20 load compiling them; from the cache, 2 s (measured).
# The least recently used programs go once the folder passes 1 GiB.
JAX_CACHE_SETTINGS = {"jax_persistent_cache_min_compile_time_secs": 0.0,
                      "jax_compilation_cache_max_size": 1 << 30}
# What TensorFlow's native libraries print while they load, before TF_CPP_MIN_LOG_LEVEL
# applies (TF 2.21 prints the oneDNN banner once per library: twice; tensorflow/tensorflow#79029)
STARTUP_NOISE = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on",
                 "cpu_feature_guard.cc", "To enable the following instructions:")
# What native libraries write to stderr while a command runs, none of it about the user's
# work: TensorFlow's start-up banner (above), its graph rewriter's note on tf.data attributes
# during export, oneDNN's note on uint8 inputs, LiteRT's XNNPACK line on every interpreter.
NATIVE_NOISE = STARTUP_NOISE + ("NodeDef mentions attribute", "oneDNN supports DT_",
                                "Created TensorFlow Lite XNNPACK delegate")


def use_backend(name: str | None) -> str:
    """Make ``name`` (or ``$KERAS_BACKEND``, default tensorflow) the Keras backend.

    Must run before Keras is imported; if Keras is already loaded with another backend,
    raises :class:`EdgeL2Error` instead of silently training on the wrong one.
    """
    name = name or os.environ.get("KERAS_BACKEND") or "tensorflow"
    if name not in BACKENDS:
        raise EdgeL2Error(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != name:
            raise EdgeL2Error(f"Keras is already running on {keras.backend.backend()}; "
                              f"set KERAS_BACKEND={name} before starting Python")
    os.environ["KERAS_BACKEND"] = name
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TF's later chatter
    if name == "jax":
        cache_jax_compilations()
    if name == "tensorflow" and "tensorflow" not in sys.modules:
        with native_output_without(STARTUP_NOISE):
            try:
                import tensorflow  # noqa: F401
            except ImportError:
                pass  # the command that needs it says which extra to install
    return name


def cache_jax_compilations() -> None:
    """Keep the programs JAX compiles in edgel2's cache folder (``$EDGEL2_CACHE/jax``, default
    ``~/.cache/edgel2/jax``), so that the next command on the same model skips compiling them.
    Each setting the user made through its ``JAX_...`` environment variable is left as it is;
    ``JAX_COMPILATION_CACHE_DIR=`` (empty) turns the cache off. Does nothing without JAX or
    the ``filelock`` package, or once this process has compiled a program (JAX reads the
    settings at its first compile).
    """
    try:
        import filelock  # noqa: F401  (JAX bounds the cache's size only with it)
        import jax
    except ImportError:
        return  # "edgel2[train]" has filelock; a command that needs JAX says so itself
    settings = {"jax_compilation_cache_dir": str(cache_folder() / "jax"), **JAX_CACHE_SETTINGS}
    for setting, value in settings.items():
        if setting.upper() not in os.environ:
            jax.config.update(setting, value)


def recorded_backend(run_dir: str | os.PathLike) -> str | None:
    """The Keras backend a run directory's ``config.json`` says it trained on (what
    ``--resume`` must use to go on exactly: the random streams differ between backends), or
    None when it records none this reads.

    Examples:
        >>> recorded_backend("no/such/run") is None
        True
    """
    try:
        backend = json.loads((Path(run_dir) / "config.json").read_text()).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return backend if backend in BACKENDS else None


@contextlib.contextmanager
def native_output_without(noise: tuple[str, ...], fd: int = 2):
    """Send what native code writes to file descriptor ``fd`` (2: stderr, 1: stdout) inside
    the block to a temporary file, then pass on every line but those containing one of
    ``noise`` (so a real error still shows). For the start of a command only: it swaps the
    process-wide descriptor."""
    stream = sys.stdout if fd == 1 else sys.stderr
    stream.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines(keepends=True):
                if not any(n in line for n in noise):
                    stream.write(line)
            stream.flush()


@contextlib.contextmanager
def quiet_native_stderr(noise: tuple[str, ...] = NATIVE_NOISE):
    """Filter what native code (C++ libraries, child processes) writes to file descriptor 2
    for the length of a command: descriptor 2 becomes a pipe whose lines, but those that
    contain one of ``noise``, a thread passes on to the real stderr as they come. Python's
    ``sys.stderr`` writes straight to the real stderr (so a terminal stays a terminal for
    progress bars). For the CLI's entry point only: it swaps a process-wide descriptor.
    """
    import threading

    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    python_stderr = sys.stderr
    sys.stderr = open(os.dup(real), "w", buffering=1, encoding=python_stderr.encoding,
                      errors="backslashreplace", closefd=True)

    def forward():
        pending = b""
        while chunk := os.read(read_end, 1 << 16):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = [line for line in lines if not any(n.encode() in line for n in noise)]
            if kept:
                os.write(real, b"\n".join(kept) + b"\n")
        if pending and not any(n.encode() in pending for n in noise):
            os.write(real, pending)

    thread = threading.Thread(target=forward, name="edgel2-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last write end: the thread reads to its end
        thread.join(timeout=5)
        os.close(read_end)
        os.close(real)
        sys.stderr.close()
        sys.stderr = python_stderr


def accelerator() -> str | None:
    """A description of the GPU the current backend trains on, or None on the CPU."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        return gpus[0].device_kind if gpus else None
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return gpus[0].name if gpus else None
    return None


# The CPU flags of native bfloat16 arithmetic (Linux's names): without one, mixed bf16
# training is emulated, about 3x slower than fp32 (measured on an AVX2-only AMD EPYC)
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_bfloat16(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU computes bfloat16 natively (AVX512_BF16 or AMX), read from
    ``cpuinfo``'s flags; None where that file does not say (not Linux).

    Examples:
        >>> import tempfile, pathlib
        >>> info = pathlib.Path(tempfile.mkdtemp()) / "cpuinfo"
        >>> _ = info.write_text("flags : fpu sse2 avx2 fma")
        >>> cpu_bfloat16(info)
        False
    """
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = {flag for line in f if line.startswith("flags")
                     for flag in line.partition(":")[2].split()}
    except OSError:
        return None
    return bool(flags & CPU_BF16_FLAGS) if flags else None


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a run's numbers."""
    versions = {"python": platform.python_version()}
    for dist in ("edgel2", "keras", "numpy", "tensorflow", "tensorflow-cpu", "jax", "jaxlib",
                 "onnx", "onnxruntime", "tf2onnx", "ai-edge-litert"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions
