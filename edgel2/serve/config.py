"""Every knob of ``edgel2 serve`` in one dataclass, importable without the serve extra (the
CLI builds its ``--help`` from it)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from edgel2.config import MAX_BODY_MB, check_name
from edgel2.errors import OptionError
from edgel2.runtime import Classifier
from edgel2.runtime.batcher import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_DELAY_MS,
    DEFAULT_MAX_QUEUE,
    MAX_DELAY_MS,
)
from edgel2.runtime.probe import LATENCY


@dataclass
class ServeConfig:
    """Every knob of ``edgel2 serve``, with its default (the CLI's options read them here);
    one validation, :meth:`validate`, whose messages name the field.

    Examples:
        >>> ServeConfig().max_batch, ServeConfig().workload
        (32, 'latency')
        >>> ServeConfig(max_images=0).validate()
        Traceback (most recent call last):
        ...
        edgel2.errors.OptionError: max_images must be >= 1
    """

    model: str | None = None        # a file or a folder's pair; None: the shipped int8 pair
    name: str | None = None         # the served model's name; None: the file's (Classifier.name)
    engine: str = "auto"
    workload: str = LATENCY         # what `auto` measures engines for (edgel2.runtime.probe)
    threads: int | None = None
    max_batch: int = DEFAULT_MAX_BATCH
    max_delay_ms: float = DEFAULT_MAX_DELAY_MS
    max_queue: int = DEFAULT_MAX_QUEUE
    max_body_mb: float = 16.0
    max_images: int = 64            # images in one request (files, or a v2 tensor's N)
    max_request_mpx: float = 100.0  # decoded megapixels in one request (about 8 phone photos)
    top_k: int = 5
    retry_after_s: int = 1
    decode_threads: int | None = None  # the decoding pool; None: one per CPU
    client_timeout_s: float = 10.0  # silence allowed mid-request (edgel2.serve.protocol)
    grace_s: float = 10.0           # after SIGTERM, for the requests in flight
    unknown: bool = True            # answers say which images are none of the classes

    def validate(self) -> None:
        """Raise :class:`OptionError` naming the first field that makes no sense."""
        def number(value: object, low: float, high: float) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value) and low <= value <= high

        checks = [(self.max_batch >= 1, "max_batch must be >= 1"),
                  (number(self.max_delay_ms, 0, MAX_DELAY_MS),
                   f"max_delay_ms must be a number in 0..{MAX_DELAY_MS:g}"),
                  (self.max_queue >= 1, "max_queue must be >= 1"),
                  (number(self.max_body_mb, 1e-6, MAX_BODY_MB),
                   f"max_body_mb must be a number in (0, {MAX_BODY_MB:g}]"),
                  (self.max_images >= 1, "max_images must be >= 1"),
                  (number(self.max_request_mpx, 1e-6, 1e6),
                   "max_request_mpx must be a positive number"),
                  (self.top_k >= 1, "top_k must be >= 1"),
                  (self.decode_threads is None or self.decode_threads >= 1,
                   "decode_threads must be >= 1"),
                  (number(self.client_timeout_s, 0.01, 3600),
                   "client_timeout_s must be a number in 0.01..3600"),
                  (number(self.grace_s, 0, 3600), "grace_s must be a number in 0..3600")]
        for ok, message in checks:
            if not ok:
                raise OptionError(message)
        if self.name is not None:
            check_name(self.name)


def open_model(config: ServeConfig) -> Classifier:
    """The classifier ``config`` names.

    Args:
        config: Its ``model`` (None: the shipped pair), ``engine``, ``workload`` and ``threads``.

    Returns:
        The opened :class:`~edgel2.runtime.Classifier`.

    Examples:
        >>> open_model(ServeConfig()).name         # doctest: +SKIP
        'resnet18-int8'
    """
    return Classifier(config.model, engine=config.engine, threads=config.threads,
                      workload=config.workload, unknown=config.unknown)
