"""Keras -> TFLite through a SavedModel and the TF converter, run in a child process.

``TFLiteConverter.from_keras_model`` has known Keras 3 breakage, and the converter leaks
memory on every call in TF 2.20/2.21, so each conversion runs in its own process
(``python -m edgel2.export.tflite SAVED_MODEL OUT PRECISION BATCH [CALIB.npy]``).

Metadata travels inside the file the way TFLite Support packs associated files: a zip
archive appended to the flatbuffer (``edgel2.json`` and ``labels.txt``). Interpreters ignore
it; ``zipfile.ZipFile(path).read("edgel2.json")`` reads it back.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from edgel2.errors import EdgeL2Error, last_error_line


def write_tflite(model, path: Path, precision: str,
                 calibration: np.ndarray | None, batch: int | None = None) -> None:
    """Write ``model`` as TFLite at ``precision`` (none, fp16, dynamic, int8) to ``path``.

    Every variant takes uint8 NHWC pixels and returns float32 logits. For int8 the network
    is rebuilt with a float input, so that the converter quantizes the pixels themselves
    (scale 1, zero point 0: uint8 in) and every op runs as an int8 kernel.
    """
    from edgel2.export.source import as_float32

    source = as_float32(model, input_dtype="float32") if precision == "int8" else model
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved_model"
        _save_signature(source, saved, batch)
        args = [sys.executable, "-m", "edgel2.export.tflite", str(saved), str(path), precision,
                str(batch or 1)]
        if precision == "int8":
            np.save(Path(tmp) / "calib.npy", calibration.astype(np.float32))
            args.append(str(Path(tmp) / "calib.npy"))
        proc = subprocess.run(args, capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0:
        raise EdgeL2Error(f"TFLite conversion ({precision}) failed: "
                          f"{last_error_line(proc.stderr, proc.returncode)}")


def _save_signature(model, saved: Path, batch: int | None = None) -> None:
    """A SavedModel whose one signature takes ``images`` and returns ``logits``, so that the
    TFLite file's signature runner reads ``runner(images=x)["logits"]`` (``Model.export``
    names them ``args_0`` and ``output_0``)."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", lambda images: {"logits": model(images, training=False)},
        input_signature=[tf.TensorSpec([batch, *model.input.shape[1:]],
                                       tf.as_dtype(model.input.dtype), name="images")])
    archive.write_out(str(saved), verbose=False)


def pack_metadata(path: Path, metadata: dict) -> None:
    """Append ``edgel2.json`` and ``labels.txt`` as a zip to the flatbuffer at ``path``
    (replacing any archive that an earlier call appended)."""
    data = path.read_bytes()
    if zipfile.is_zipfile(path):
        data = data[:_archive_start(data)]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("edgel2.json", json.dumps(metadata, indent=1))
        z.writestr("labels.txt", "\n".join(metadata.get("class_names", [])) + "\n")
    path.write_bytes(data + archive.getvalue())


def _archive_start(data: bytes) -> int:
    """Where an appended zip begins: its central directory ends at the EOCD record, and the
    EOCD gives the directory's size and its offset from the archive's start."""
    eocd = data.rfind(b"PK\x05\x06")
    size_cd = int.from_bytes(data[eocd + 12:eocd + 16], "little")
    offset_cd = int.from_bytes(data[eocd + 16:eocd + 20], "little")
    return eocd - size_cd - offset_cd


def _convert(saved_model: str, out: str, precision: str, batch: int,
             calib: str | None) -> None:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    if precision in ("fp16", "dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if precision == "int8":
        images = np.load(calib)

        def representative():
            # `batch` images at a time: a fixed-batch graph takes no other count
            for i in range(0, len(images) - batch + 1, batch):
                yield [images[i:i + batch]]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    Path(out).write_bytes(converter.convert())


if __name__ == "__main__":
    _convert(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]),
             sys.argv[5] if len(sys.argv) > 5 else None)
