"""Keras -> TFLite through a SavedModel and the TF converter, run in a child process.

``TFLiteConverter.from_keras_model`` has known Keras 3 breakage, and the converter leaks
memory on every call in TF 2.20/2.21, so each conversion runs in its own process
(``python -m edgel2.export.tflite SAVED_MODEL OUT PRECISION BATCH [CALIB.npy]``).

Metadata travels inside the file as TFLite Support defines it, so Android Studio's ML binding,
the Task Library, MediaPipe and ``MetadataDisplayer`` read it: a ``ModelMetadata`` flatbuffer
(an image classifier: uint8 RGB input, logits output with ``labels.txt`` as its axis labels)
in the model's ``TFLITE_METADATA`` entry, and the associated files ``labels.txt`` and
``edgel2.json`` (edgel2's own fields) in an uncompressed zip appended to the flatbuffer.
Interpreters ignore both; ``zipfile.ZipFile(path).read("edgel2.json")`` reads edgel2's back.
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
from edgel2.runtime.modelfile import UNKNOWN_OUTPUT, flatbuffer_end, flatbuffer_sha256


def check(config) -> None:
    """Every option :class:`~edgel2.export.config.ExportConfig` has is one TFLite honours."""


def refuses(precision: str, config) -> str | None:
    """Why this writer does not write ``precision`` with ``config`` (None: it does)."""
    if config.flip_average and precision == "int8":
        return ("`flip_average` is not exported to TFLite int8: the full-integer converter "
                "quantizes the two-view graph badly (80.5 % against 92.9 % in Keras, "
                "measured); export it to ONNX, or to a float TFLite (fp32, fp16 or dynamic)")
    return None


def write(model, path: Path, precision: str, config, representative: np.ndarray | None) -> dict:
    """Write ``model`` at ``precision`` to ``path`` (:func:`write_tflite`); for int8, the
    export report's row gets the tensor arena TensorFlow Lite Micro needs
    (:func:`~edgel2.export.micro.micro_row`)."""
    from edgel2.export.micro import micro_row

    write_tflite(model, path, precision, representative, config.batch)
    return micro_row(path) if precision == "int8" else {}


def companions(path: Path, precision: str, config, metadata: dict, row: dict) -> list[Path]:
    """Files written beside ``path`` once it is in place: with ``c_array``, an int8 file as
    C source for firmware (:func:`~edgel2.export.micro.write_c_array`)."""
    if not (config.c_array and precision == "int8"):
        return []
    from edgel2.export.micro import write_c_array

    return list(write_c_array(path, metadata, row.get("micro_arena_bytes")))


def embed_metadata(path: Path, metadata: dict, update: bool = False) -> None:
    """Pack ``metadata`` into the file (:func:`pack_metadata`); ``update`` changes only the
    keys in ``metadata`` and keeps the rest of the ``edgel2.json`` already there."""
    from edgel2.runtime.modelfile import tflite_metadata

    pack_metadata(path, {**(tflite_metadata(path) if update else {}), **metadata})


def write_tflite(model, path: Path, precision: str,
                 representative: np.ndarray | None, batch: int | None = None) -> None:
    """Write ``model`` as TFLite at ``precision`` (fp32, fp16, dynamic, int8) to ``path``.

    Every variant takes uint8 NHWC pixels and returns float32 logits. For int8 the network
    is rebuilt with a float input, so that the converter quantizes the pixels themselves
    (scale 1, zero point 0: uint8 in) and every op runs as an int8 kernel.
    """
    from edgel2.checkpoint import as_float32

    source = as_float32(model, input_dtype="float32") if precision == "int8" else model
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved_model"
        _save_signature(source, saved, batch)
        args = [sys.executable, "-m", "edgel2.export.tflite", str(os.getpid()), str(saved),
                str(path), precision, str(batch or 1)]
        if precision == "int8":
            if representative is None:
                raise ValueError("int8 export needs representative images")
            np.save(Path(tmp) / "representative.npy", representative.astype(np.float32))
            args.append(str(Path(tmp) / "representative.npy"))
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
    from edgel2.export.source import named_outputs

    def outputs(images):
        return named_outputs(model(images, training=False))

    archive.add_endpoint(
        "serving_default", outputs,
        input_signature=[tf.TensorSpec([batch, *model.input.shape[1:]],
                                       tf.as_dtype(model.input.dtype), name="images")])
    archive.write_out(str(saved), verbose=False)


# The Model.metadata entry that TFLite Support readers look up, and the oldest metadata parser
# that understands every field written here (tflite-support's metadata_version.cc says 1.0.0
# for them; tests/test_tflite_metadata.py asks it).
SUPPORT_METADATA = "TFLITE_METADATA"
MIN_PARSER_VERSION = "1.0.0"
# The converter aligns weight buffers to 16 bytes (schema: force_align 16); keep that on repack.
BUFFER_ALIGNMENT = 16


def pack_metadata(path: Path, metadata: dict) -> None:
    """Describe the TFLite file at ``path`` with ``metadata`` (edgel2's dict): TFLite Support
    metadata in the flatbuffer, the signature's input and output named ``images`` and
    ``logits``, and ``labels.txt`` and ``edgel2.json`` appended as a zip (replacing whatever
    an earlier call wrote). The graph and its weights are unchanged.

    Needs LiteRT's flatbuffer schema (``ai_edge_litert``, the [litert] extra), not TensorFlow.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    data = path.read_bytes()
    if zipfile.is_zipfile(path):
        data = data[:flatbuffer_end(data)]
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    _name_signature(model, metadata)
    described = schema.BufferT(data=np.frombuffer(
        support_metadata(metadata, _output_order(model)), np.uint8))
    model.metadata = model.metadata or []
    earlier = [m.buffer for m in model.metadata if m.name == SUPPORT_METADATA.encode()]
    if earlier:  # described before: its buffer takes the new metadata
        model.buffers[earlier[0]] = described
    else:
        model.buffers.append(described)
        model.metadata.append(schema.MetadataT(name=SUPPORT_METADATA,
                                               buffer=len(model.buffers) - 1))
    model.buffers = [_AlignedBuffer(b) for b in model.buffers]
    builder = flatbuffers.Builder(len(data) + 2**16)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    flatbuffer = bytes(builder.Output())
    # the checksum the runtime verifies at open: of the flatbuffer, which the zip follows
    metadata = {**metadata, "weights_sha256": flatbuffer_sha256(flatbuffer)}
    archive = io.BytesIO()
    # Stored, not deflated: the Task Library's C++ extractor reads associated files in place.
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.writestr("labels.txt", "\n".join(metadata.get("class_names") or []) + "\n")
        if metadata.get("unknown"):
            z.writestr(UNKNOWN_LABELS, "unknown\n")
        z.writestr("edgel2.json", json.dumps(metadata, indent=1))
    path.write_bytes(flatbuffer + archive.getvalue())


# The label file of the unknown score's one-column output: what the Task Library and MediaPipe
# name a result over its ScoreThresholdingOptions.
UNKNOWN_LABELS = "unknown.txt"


def _output_names(shapes: list, logits: str = "logits") -> list[str]:
    """The names of outputs of these shapes: of two, the ``[N, 1]`` one is the unknown score;
    the other one, or a single output, is the logits."""
    return [UNKNOWN_OUTPUT if len(shapes) == 2 and shape[-1] == 1 else logits
            for shape in shapes]


def _output_order(model) -> list[str]:
    """The names of the first subgraph's outputs in the graph's order (what TFLite Support
    metadata lists its output tensors in)."""
    subgraph = model.subgraphs[0]
    return _output_names([subgraph.tensors[i].shape for i in subgraph.outputs])


def _name_signature(model, metadata: dict) -> None:
    """Name the one signature's input and outputs as the metadata does (``images``,
    ``logits``, and ``unknown_score`` for a ``[N, 1]`` second output): files converted before
    edgel2 named its endpoint said ``args_0``/``output_0``."""
    tensors = model.subgraphs[0].tensors
    for signature in model.signatureDefs or []:
        if len(signature.inputs) == 1 and 1 <= len(signature.outputs) <= 2:
            signature.inputs[0].name = metadata["input"]["name"]
            names = _output_names([tensors[o.tensorIndex].shape for o in signature.outputs],
                                  metadata["output"]["name"])
            for output, name in zip(signature.outputs, names):
                output.name = name


class _AlignedBuffer:
    """A model buffer that packs its bytes at ``BUFFER_ALIGNMENT``, as the converter wrote
    them (the generated ``BufferT.Pack`` aligns to one byte)."""

    def __init__(self, buffer):
        self.buffer = buffer

    def Pack(self, builder):  # noqa: N802 (the flatbuffers object API's name)
        from ai_edge_litert import schema_py_generated as schema

        data = self.buffer.data
        vector = None
        if data is not None:
            raw = np.ascontiguousarray(data, np.uint8).tobytes()
            builder.StartVector(1, len(raw), BUFFER_ALIGNMENT)
            builder.head -= len(raw)
            builder.Bytes[builder.head:builder.head + len(raw)] = raw
            vector = builder.EndVector(len(raw))
        schema.BufferStart(builder)
        if vector is not None:
            schema.BufferAddData(builder, vector)
        schema.BufferAddOffset(builder, self.buffer.offset)
        schema.BufferAddSize(builder, self.buffer.size)
        return schema.BufferEnd(builder)


def support_metadata(metadata: dict, outputs: list[str] | None = None) -> bytes:
    """The TFLite Support ``ModelMetadata`` flatbuffer of an edgel2 image classifier.

    The input is described as raw RGB pixels (normalization mean 0, std 1: the model
    normalizes inside the graph) and the output as logits with ``labels.txt`` as the labels
    of its class axis, the fields Android Studio, the Task Library and MediaPipe read. A file
    with the unknown score (``outputs`` names the graph's outputs in order) describes it too:
    one column labelled ``unknown`` (``unknown.txt``) whose ``ScoreThresholdingOptions`` hold
    the file's threshold (the threshold MediaPipe's classifier takes from a model's metadata
    unless its ``score_threshold`` option overrides it).

    Examples:
        >>> from edgel2.export.vendor import tflite_metadata_schema as fb
        >>> meta = {"model_name": "resnet18_w4", "class_names": ["cat", "dog"],
        ...         "input": {"name": "images", "shape": [None, 32, 32, 3]},
        ...         "output": {"name": "logits"}, "config_hash": "abc", "producer": "edgel2"}
        >>> read = fb.ModelMetadataT.InitFromPackedBuf(support_metadata(meta))
        >>> out = read.subgraphMetadata[0].outputTensorMetadata[0]
        >>> out.name, out.associatedFiles[0].name, out.associatedFiles[0].type
        (b'logits', b'labels.txt', 2)
    """
    import flatbuffers

    from edgel2.export.vendor import tflite_metadata_schema as fb

    def associated(name: str, kind: int, description: str):
        file = fb.AssociatedFileT()
        file.name, file.type, file.description = name, kind, description
        return file

    def tensor(name: str, description: str, properties_type: int, properties, stats,
               process_units=None, files=None):
        t = fb.TensorMetadataT()
        t.name, t.description = name, description
        t.content = fb.ContentT()
        t.content.contentPropertiesType, t.content.contentProperties = properties_type, properties
        t.stats, t.processUnits, t.associatedFiles = stats, process_units, files
        return t

    height, width = metadata["input"]["shape"][1:3]
    image = fb.ImagePropertiesT()
    image.colorSpace = fb.ColorSpaceType.RGB
    raw_pixels = fb.NormalizationOptionsT()
    raw_pixels.mean, raw_pixels.std = [0.0], [1.0]
    normalization = fb.ProcessUnitT()
    normalization.optionsType = fb.ProcessUnitOptions.NormalizationOptions
    normalization.options = raw_pixels
    pixel_range = fb.StatsT()
    pixel_range.min, pixel_range.max = [0.0], [255.0]
    classes = len(metadata.get("class_names") or [])

    subgraph = fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [tensor(
        metadata["input"]["name"],
        f"RGB image, {height}x{width}, uint8 pixels 0-255 (NHWC); the model normalizes inside",
        fb.ContentProperties.ImageProperties, image, pixel_range, [normalization])]
    logits = tensor(
        metadata["output"]["name"],
        f"Logits of the {classes} classes in labels.txt (not probabilities): softmax gives "
        "probabilities; edgel2.json holds the calibration edgel2's runtime applies",
        fb.ContentProperties.FeatureProperties, fb.FeaturePropertiesT(), fb.StatsT(),
        files=[associated("labels.txt", fb.AssociatedFileType.TENSOR_AXIS_LABELS,
                          "Class names, one a line, in the order of the logits")])
    described = {"logits": logits}
    unknown = metadata.get("unknown")
    if unknown:
        over = fb.ScoreThresholdingOptionsT()
        over.globalScoreThreshold = float(unknown["threshold"])
        threshold = fb.ProcessUnitT()
        threshold.optionsType = fb.ProcessUnitOptions.ScoreThresholdingOptions
        threshold.options = over
        described[UNKNOWN_OUTPUT] = tensor(
            UNKNOWN_OUTPUT,
            f"How unlike the known classes the image is (higher: more unknown): "
            f"{unknown['score']}. Over {unknown['threshold']:.6g} (keeps "
            f"{100 * unknown['keep']:g} % of known images) the image is none of the classes",
            fb.ContentProperties.FeatureProperties, fb.FeaturePropertiesT(), fb.StatsT(),
            [threshold], [associated(UNKNOWN_LABELS, fb.AssociatedFileType.TENSOR_AXIS_LABELS,
                                     "The one label of the unknown score")])
    subgraph.outputTensorMetadata = [described[name] for name in outputs or ["logits"]
                                     if name in described]

    model = fb.ModelMetadataT()
    model.name = metadata["model_name"]
    model.description = (f"edgel2 image classifier ({classes} classes): uint8 RGB "
                         f"{height}x{width} in, logits out")
    model.version = metadata.get("config_hash")
    model.author = metadata.get("producer")
    model.subgraphMetadata = [subgraph]
    model.associatedFiles = [associated(
        "edgel2.json", fb.AssociatedFileType.DESCRIPTIONS,
        "edgel2's metadata: normalization, calibration, accuracy and provenance (JSON)")]
    model.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"M001")
    return bytes(builder.Output())


def _convert(saved_model: str, out: str, precision: str, batch: int,
             representative_file: str | None) -> None:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    if precision in ("fp16", "dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if precision == "int8" and representative_file is not None:
        images = np.load(representative_file)

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
    from edgel2.utils import die_with_parent

    die_with_parent(int(sys.argv[1]))  # a killed export leaves no converter behind
    _convert(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]),
             sys.argv[6] if len(sys.argv) > 6 else None)
