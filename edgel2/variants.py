"""Every export variant and benchmark row in one table: the CLI's choices, the file names, the
export report's order, the benchmark's rows, and the chart's colours and markers all read it.

Imports nothing heavy beyond the runtime's table of which engine runs which format, so the CLI
can build its ``--help`` from it.

Example:
    >>> precision_name("none"), SUFFIX["tflite"], [f for f, p in BENCHMARK_ROWS if p == "bf16"]
    ('fp32', '.tflite', ['openvino'])
"""
from __future__ import annotations

from edgel2.runtime.modelfile import REFERENCE_ENGINE

# What `edgel2 export` writes: formats, and precisions by the one name that the CLI, the
# Python API, file names, reports and metadata all use.
FORMATS = ("onnx", "tflite")
PRECISIONS = ("fp32", "fp16", "dynamic", "int8")
# Older spellings that --quantize and export_model still accept, each for one name above.
PRECISION_ALIASES = {"none": "fp32"}
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}

# What `edgel2 benchmark` measures: a row is (runtime, precision). "openvino" runs the ONNX
# file of that precision through OpenVINO; its bf16 row is the fp32 file with bfloat16
# inference, on CPUs that have it.
RUNTIME = {"keras": "Keras (TF) predict_on_batch", "onnx": "ONNX Runtime", "tflite": "LiteRT",
           "openvino": "OpenVINO"}
SHORT_NAME = {"keras": "Keras (TF)", "onnx": "ONNX Runtime", "tflite": "LiteRT",
              "openvino": "OpenVINO"}
ENGINE = {**REFERENCE_ENGINE, "openvino": "openvino"}  # the engine of each runtime's rows
BENCHMARK_FORMATS = tuple(RUNTIME)
BENCHMARK_ROWS = [("keras", "fp32"), ("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"),
                  ("onnx", "dynamic"), ("tflite", "fp32"), ("tflite", "fp16"),
                  ("tflite", "dynamic"), ("tflite", "int8"), ("openvino", "fp32"),
                  ("openvino", "bf16"), ("openvino", "int8")]



# How many held-out test images each exported file (export) and each row (benchmark) is
# checked on by default; "all" or 0 on the command line for the whole split or none.
CHECK_IMAGES = 1000


def precision_name(name: str) -> str:
    """The one name of a precision given by a name or an older spelling (``none`` -> ``fp32``)."""
    return PRECISION_ALIASES.get(name, name)


# The benchmark chart: a colour per runtime, a marker per precision.
COLOR = {"keras": "black", "onnx": "tab:blue", "tflite": "tab:orange", "openvino": "tab:purple"}
MARKER = {"fp32": "o", "fp16": "s", "dynamic": "^", "int8": "*", "bf16": "D"}
