"""Every export variant and benchmark row in one table: the CLI's choices, the file names, the
export report's order, the benchmark's rows, and the chart's colours and markers all read it.

Built from :mod:`edgel2.runtime.formats` (a format or an engine is one row there) and imports
nothing heavy, so the CLI can build its ``--help`` from it.

Examples:
    >>> precision_name("none"), SUFFIX["tflite"], [f for f, p in BENCHMARK_ROWS if p == "bf16"]
    ('fp32', '.tflite', ['openvino'])
"""
from __future__ import annotations

from edgel2.runtime.formats import ENGINE_SPECS, FILE_FORMATS, FORMAT_NAMES, REFERENCE_ENGINE

# What `edgel2 export` writes: formats, and precisions by the one name that the CLI, the
# Python API, file names, reports and metadata all use.
FORMATS = FORMAT_NAMES
PRECISIONS = ("fp32", "fp16", "dynamic", "int8")
# Older spellings that --precision and export_model still accept, each for one name above.
PRECISION_ALIASES = {"none": "fp32"}
SUFFIX = {name: f.suffix for name, f in FILE_FORMATS.items()}

# What `edgel2 benchmark` measures: a row is (runtime, precision). A runtime is "keras" (the
# baseline), a format (its file run by the engine export checks it with), or another engine
# that runs a format's file: "openvino" runs the ONNX file of that precision, and its bf16 row
# the fp32 file with bfloat16 compute, on CPUs that have it.
ENGINE = {**REFERENCE_ENGINE, **{name: name for name in ENGINE_SPECS
                                 if name not in REFERENCE_ENGINE.values()}}
SHORT_NAME = {"keras": "Keras (TF)", **{r: ENGINE_SPECS[e].title for r, e in ENGINE.items()}}
RUNTIME = {**SHORT_NAME, "keras": "Keras (TF) predict_on_batch"}
BENCHMARK_FORMATS = tuple(RUNTIME)
BENCHMARK_ROWS = [("keras", "fp32")] + [(f, p) for f in FORMATS for p in PRECISIONS] + [
    (r, p) for r in ENGINE if r not in FORMATS for p in ENGINE_SPECS[r].benchmark_precisions]

# How many held-out test images each exported file (export) and each row (benchmark) is
# checked on by default; "all" or 0 on the command line for the whole split or none.
CHECK_IMAGES = 1000


def precision_name(name: str) -> str:
    """The one name of a precision given by a name or an older spelling (``none`` -> ``fp32``)."""
    return PRECISION_ALIASES.get(name, name)


def file_of(runtime: str, precision: str) -> tuple[str, str]:
    """The exported file a benchmark row runs, as (format, precision): a bf16 row runs the
    fp32 file.

    Examples:
        >>> file_of("openvino", "bf16"), file_of("tflite", "int8")
        (('onnx', 'fp32'), ('tflite', 'int8'))
    """
    fmt = runtime if runtime in FILE_FORMATS else ENGINE_SPECS[ENGINE[runtime]].format
    return fmt, "fp32" if precision == "bf16" else precision


# The benchmark chart: a colour per runtime, a marker per precision, rings of one size per
# runtime, largest first (two rows at the same spot, as ONNX Runtime and LiteRT fp32 often
# are, show as nested rings).
COLOR = {"keras": "black", **{r: ENGINE_SPECS[e].color for r, e in ENGINE.items()}}
MARKER = {"fp32": "o", "fp16": "s", "dynamic": "^", "int8": "*", "bf16": "D"}
RING_SIZE = {r: 260 * 0.65 ** i for i, r in enumerate(BENCHMARK_FORMATS)}
