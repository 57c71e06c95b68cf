"""Every knob of ``edgel2 export``, with its default: the CLI's options and
:func:`~edgel2.export.export_model`'s keywords both read them here."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from edgel2.errors import OptionError, require_whole
from edgel2.export.onnx import INT8_IMAGES, INT8_METHODS, MIN_OPSET
from edgel2.export.writers import writer_of
from edgel2.unknown.fit import UNKNOWN_IMAGES
from edgel2.unknown.scores import DEFAULT_KEEP
from edgel2.variants import CHECK_IMAGES, FORMATS, PRECISIONS, precision_name

# A quantized file that loses more top-1 than this (points) against Keras is not kept,
# unless `allow_drop`.
MAX_DROP = 2.0


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how (:func:`~edgel2.export.export_model`); one validation,
    :meth:`validated`, whose messages name the field.

    Examples:
        >>> ExportConfig(formats=["all"], precisions=["none", "int8"]).validated().precisions
        ('fp32', 'int8')
        >>> ExportConfig(formats=["onnx", "coreml"]).validated()
        Traceback (most recent call last):
        ...
        edgel2.errors.OptionError: unknown format 'coreml'; choose from onnx, tflite or all
    """

    formats: Sequence[str] = ("onnx",)      # see variants.FORMATS; "all" for every one
    precisions: Sequence[str] = ("fp32",)   # see variants.PRECISIONS; "all" for every one
    data: str | None = None   # images to quantize, calibrate and check on (None: as trained)
    int8_images: int = INT8_IMAGES          # class-balanced representative images for int8
    int8_method: str = INT8_METHODS[0]      # how ONNX int8 picks its ranges on them
    opset: int = MIN_OPSET
    out: str | None = None    # the output folder (None: export/ beside the model)
    check: int | None = CHECK_IMAGES        # test images each file is checked on (None: all)
    force: bool = False       # overwrite existing files
    max_drop: float = MAX_DROP
    allow_drop: bool = False  # keep quantized files that lose more than max_drop
    calibrate: bool = True    # fit and record a probability calibration in every file
    flip_average: bool = False  # the mirror image in the graph, logits averaged
    batch: int | None = None  # a fixed batch dimension (None: any batch)
    unknown: bool = True      # the unknown score as a second output, with its threshold
    keep: float = DEFAULT_KEEP  # the share of known images the unknown threshold keeps
    unknown_images: int = UNKNOWN_IMAGES  # training images the unknown score is fitted on
    c_array: bool = False     # int8 TFLite files also as C source (.cc/.h) for firmware

    def validated(self) -> ExportConfig:
        """A copy with ``all`` and older precision names expanded, or :class:`OptionError`."""
        formats = _validated(self.formats, FORMATS, "format")
        precisions = _validated([precision_name(p) for p in self.precisions], PRECISIONS,
                                "precision")
        for fmt in formats:
            writer_of(fmt).check(self)
        if self.batch is not None:
            require_whole("batch", self.batch)
        require_whole("int8_images", self.int8_images)
        require_whole("unknown_images", self.unknown_images)
        if not 0.0 < self.keep < 1.0:
            raise OptionError(f"`keep` must be between 0 and 1 (the share of known images "
                              f"kept), got {self.keep}")
        if self.c_array and not ("tflite" in formats and "int8" in precisions):
            raise OptionError("`c_array` writes int8 TFLite files as C source: export format "
                              "tflite at precision int8")
        if self.int8_method not in INT8_METHODS:
            raise OptionError(f"int8_method must be one of {', '.join(INT8_METHODS)}, "
                              f"got {self.int8_method!r}")
        return dataclasses.replace(self, formats=tuple(formats), precisions=tuple(precisions))

    def replaced(self, **options: object) -> ExportConfig:
        """A copy with ``options`` (field names) changed; an unknown name is an
        :class:`OptionError` naming it."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise OptionError(f"unknown export option {unknown[0]!r}; the options are "
                              f"{', '.join(sorted(fields))}")
        return dataclasses.replace(self, **options)  # type: ignore[arg-type]


def _validated(values: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    values = list(allowed) if "all" in values else list(values)
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise OptionError(f"unknown {what} {unknown[0] if unknown else '(none)'!r}; "
                          f"choose from {', '.join(allowed)} or all")
    return values
