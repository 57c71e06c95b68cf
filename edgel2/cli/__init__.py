"""The ``edgel2`` command line: a thin layer over the Python API, a module per command (each
reads its options, calls one library function, prints its result).

Heavy libraries (Keras, TensorFlow, JAX) are imported inside the commands, after the backend
is chosen, so ``edgel2 --help`` is instant and ``--backend`` takes effect.
"""
from __future__ import annotations

from edgel2.cli import benchmark, evaluate, export, infer, serve, train  # noqa: F401 - registers them
from edgel2.cli.base import cli

__all__ = ["cli", "main"]


def main() -> None:
    """The console-script entry point: the CLI with native libraries' noise filtered out of
    stderr (:func:`edgel2.backend.quiet_native_stderr`)."""
    import os

    from edgel2.backend import quiet_native_stderr

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first line
    with quiet_native_stderr():
        cli()


if __name__ == "__main__":
    main()
