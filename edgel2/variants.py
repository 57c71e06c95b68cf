"""Every export variant and benchmark row in one table: the CLI's choices, the file names, the
export report's order, the benchmark's rows, and the chart's colours and markers all read it.

Imports nothing heavy, so the CLI can build its ``--help`` from it.

Example:
    >>> PRECISION_NAME["none"], SUFFIX["tflite"], [f for f, p in BENCHMARK_ROWS if p == "bf16"]
    ('fp32', '.tflite', ['openvino'])
"""
from __future__ import annotations

# What `edgel2 export` writes: formats, and precisions as the CLI names them -> as files and
# reports name them (full precision is "fp32" everywhere but the --quantize flag "none").
FORMATS = ("onnx", "tflite")
PRECISION_NAME = {"none": "fp32", "fp16": "fp16", "dynamic": "dynamic", "int8": "int8"}
PRECISIONS = tuple(PRECISION_NAME)
PRECISION_FLAG = {name: flag for flag, name in PRECISION_NAME.items()}  # fp32 -> none
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}

# What `edgel2 benchmark` measures: a row is (runtime, precision). "openvino" runs the ONNX
# file of that precision through OpenVINO; its bf16 row is the fp32 file with bfloat16
# inference, on CPUs that have it.
RUNTIME = {"keras": "Keras (TF) predict_on_batch", "onnx": "ONNX Runtime", "tflite": "LiteRT",
           "openvino": "OpenVINO"}
SHORT_NAME = {"keras": "Keras (TF)", "onnx": "ONNX Runtime", "tflite": "LiteRT",
              "openvino": "OpenVINO"}
ENGINE = {"onnx": "onnxruntime", "tflite": "litert", "openvino": "openvino"}
BENCHMARK_FORMATS = tuple(RUNTIME)
BENCHMARK_ROWS = [("keras", "fp32"), ("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"),
                  ("onnx", "dynamic"), ("tflite", "fp32"), ("tflite", "fp16"),
                  ("tflite", "dynamic"), ("tflite", "int8"), ("openvino", "fp32"),
                  ("openvino", "bf16"), ("openvino", "int8")]

# The benchmark chart: a colour per runtime, a marker per precision.
COLOR = {"keras": "black", "onnx": "tab:blue", "tflite": "tab:orange", "openvino": "tab:purple"}
MARKER = {"fp32": "o", "fp16": "s", "dynamic": "^", "int8": "*", "bf16": "D"}
