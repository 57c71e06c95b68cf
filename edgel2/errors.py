"""Errors that reach the user as one clear line instead of a traceback."""
from __future__ import annotations


class EdgeL2Error(Exception):
    """A problem with the user's input or environment (bad data, missing file...).

    The CLI prints ``edgel2: error: <message>`` and exits with :attr:`exit_code`.
    """

    exit_code = 1


class DataError(EdgeL2Error):
    """The data source is missing, of an unknown layout, or unreadable."""


class TrainingError(EdgeL2Error):
    """Training cannot go on (NaN loss, a run directory that cannot be resumed...)."""
