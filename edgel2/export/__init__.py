"""``edgel2 export``: a trained ``.keras`` model -> ONNX and TFLite files in every precision,
each checked against the Keras model and carrying its own metadata.

Examples:
    >>> from edgel2.export import export_model
    >>> report = export_model("runs/train/exp/model.keras", formats=["onnx"],
    ...                       precisions=["fp32", "int8"])            # doctest: +SKIP
    >>> [(r["file"], r["status"]) for r in report["rows"]]            # doctest: +SKIP
    [('model-fp32.onnx', 'ok'), ('model-int8.onnx', 'ok')]
"""
from __future__ import annotations

from edgel2.export.config import ExportConfig
from edgel2.export.exporter import (
    default_folder,
    embed_metadata,
    export_model,
    exported_file,
    format_table,
    report_model,
)

__all__ = ["ExportConfig", "default_folder", "embed_metadata", "export_model", "exported_file",
           "format_table", "report_model"]
