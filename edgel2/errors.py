"""Errors that reach the user as one clear line instead of a traceback.

Every expected failure is an :class:`EdgeL2Error`; the CLI turns it into
``edgel2: error: <message>`` and exits with its :attr:`~EdgeL2Error.exit_code` (one place:
``edgel2.cli``). Runtime errors keep a built-in second base (``ValueError``, ``RuntimeError``,
``ImportError``) so that code written against those still catches them.
"""
from __future__ import annotations

import contextlib


def first_line(error: BaseException, limit: int = 200) -> str:
    r"""The first line of an exception's message, cut to ``limit`` characters: enough to say
    why a library refused a file, without its multi-line dump.

    Examples:
        >>> first_line(ValueError("  bad header\n  at byte 12  "))
        'bad header'
        >>> first_line(TypeError())
        'TypeError'
    """
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__


def last_error_line(stderr: str, returncode: int) -> str:
    r"""The last non-blank line a failed child process wrote to stderr (its exception), or its
    exit code when it wrote nothing.

    Examples:
        >>> last_error_line("Traceback ...\nValueError: no\n\n", 1), last_error_line("", 9)
        ('ValueError: no', 'exit code 9')
    """
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {returncode}"


class EdgeL2Error(Exception):
    """A problem with the user's input or environment (bad data, missing file...).

    The CLI prints ``edgel2: error: <message>`` and exits with :attr:`exit_code`.
    """

    exit_code = 1


class DataError(EdgeL2Error):
    """The data source is missing, of an unknown layout, or unreadable."""


class TrainingError(EdgeL2Error):
    """Training cannot go on (NaN loss, a run directory that cannot be resumed...)."""


@contextlib.contextmanager
def reported_write(path, error: type[EdgeL2Error] = TrainingError):
    """Turn an ``OSError`` while writing ``path`` (a full disk, a read-only folder) into one
    ``error`` line that names the file.

    Examples:
        >>> with reported_write("runs/x/metrics.csv"):
        ...     raise OSError(28, "No space left on device")
        Traceback (most recent call last):
        ...
        edgel2.errors.TrainingError: cannot write runs/x/metrics.csv: No space left on device
    """
    try:
        yield
    except OSError as e:
        raise error(f"cannot write {path}: {e.strerror or e}") from None


class OutputError(EdgeL2Error):
    """The results cannot be written where the user asked (checked before the work starts;
    if writing still fails at the end, the results go to stdout and this says why); exit code
    4."""

    exit_code = 4


class ModelError(EdgeL2Error, ValueError):
    """The model file is missing, is not an exported edgel2 model, or its metadata disagrees
    with its graph."""


class EngineError(EdgeL2Error, RuntimeError):
    """The model file cannot be run as asked (strict provider checks, an engine that failed)."""


class ImageError(EdgeL2Error, ValueError):
    """An input that is not a usable image; the message is a short reason for reports."""


class PredictionError(EdgeL2Error, RuntimeError):
    """The model ran but its answer for an image is unusable (non-finite logits)."""


class BusyError(EdgeL2Error, RuntimeError):
    """A bounded queue is full: the caller should retry later (HTTP 503)."""


class OptionError(EdgeL2Error, ValueError):
    """An argument out of its range, found by the Python API (the CLI's own checks say it
    first); exit code 2, as for bad command-line options."""

    exit_code = 2


def require_whole(name: str, value, minimum: int = 1) -> int:
    """``value`` if it is a whole number (not a bool) of at least ``minimum``, else
    :class:`OptionError` naming the argument: the API's one check of such arguments.

    Examples:
        >>> require_whole("max_batch", 32)
        32
        >>> require_whole("top_k", 2.5)
        Traceback (most recent call last):
        ...
        edgel2.errors.OptionError: top_k must be a whole number >= 1, got 2.5
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


class MissingExtraError(EdgeL2Error, ImportError):
    """An optional dependency is not installed; the message names what to install."""


# Which install brings each optional top-level module: the one place that names the extras.
EXTRAS = {
    **dict.fromkeys(("keras", "tensorflow", "tf2onnx", "onnx", "matplotlib", "tf_keras"),
                    'pip install "edgel2[train]"'),
    "ai_edge_litert": 'pip install "edgel2[litert]" (the ai-edge-litert package)',
    "openvino": 'pip install "edgel2[openvino]"',
    **dict.fromkeys(("starlette", "uvicorn", "multipart", "python_multipart",
                     "prometheus_client"), 'pip install "edgel2[serve]"'),
    "jax": 'pip install "jax[cpu]" (or "jax[cuda12]" on an NVIDIA GPU)',
    **dict.fromkeys(("ray", "pyarrow"), 'pip install "edgel2[ray]"'),
    "tflite_micro": 'pip install "edgel2[micro]" (the tflite-micro package)',
}


def missing_extra(error: ImportError, needed_for: str = "") -> MissingExtraError | None:
    """The one-line error for a missing optional module, or None if ``error`` is about a
    module that no extra provides (a real bug, to be shown as it is).

    Examples:
        >>> print(missing_extra(ModuleNotFoundError("No module named 'keras'", name="keras")))
        keras is not installed: pip install "edgel2[train]"
        >>> missing_extra(ModuleNotFoundError("x", name="not_ours")) is None
        True
    """
    module = (getattr(error, "name", None) or "").split(".")[0]
    if module not in EXTRAS:
        return None
    return MissingExtraError(f"{needed_for or module} is not installed: {EXTRAS[module]}")
