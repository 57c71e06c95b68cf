"""Errors that reach the user as one clear line instead of a traceback."""
from __future__ import annotations


def first_line(error: BaseException, limit: int = 200) -> str:
    r"""The first line of an exception's message, cut to ``limit`` characters: enough to say
    why a library refused a file, without its multi-line dump.

    Example:
        >>> first_line(ValueError("  bad header\n  at byte 12  "))
        'bad header'
    """
    return str(error).strip().splitlines()[0][:limit]


def last_error_line(stderr: str, returncode: int) -> str:
    r"""The last non-blank line a failed child process wrote to stderr (its exception), or its
    exit code when it wrote nothing.

    Example:
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
