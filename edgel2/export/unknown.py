"""The unknown score's record in each exported file: the threshold that keeps the asked
share of held-out known images by that file's own scores (quantization shifts the score, so
each file gets its own), and the share of other held-out images it flags. And the same file
without the score, to measure what it costs."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgel2.errors import EdgeL2Error
from edgel2.export.writers import writer_of
from edgel2.runtime.modelfile import UNKNOWN_OUTPUT, read_metadata
from edgel2.unknown.fit import UnknownFit
from edgel2.unknown.scores import threshold_for


def file_record(path: Path, fit: UnknownFit,
                on_batch: Callable[[int, int], None] | None = None) -> dict:
    """The metadata's ``unknown`` entry for the file at ``path``: the threshold that keeps
    ``keep`` of the threshold images by this file's own scores, and the share of the report
    images it flags."""
    from edgel2.export.check import run_file

    scores = run_file(path, np.concatenate([fit.threshold_images, fit.report_images]),
                      on_batch=on_batch, unknown=True)[:, -1]
    known, reported = scores[:len(fit.threshold_images)], scores[len(fit.threshold_images):]
    threshold = threshold_for(known, fit.record["keep"])
    return {**fit.record, "threshold": threshold,
            "flagged": float(np.mean(reported > threshold))}


def without_unknown(path: Path, folder: Path) -> Path | None:
    """A copy of the ``.onnx`` or ``.tflite`` file at ``path`` without its unknown score, written
    into ``folder``: the score's output and every operation only it needs removed, and the
    metadata as an export with ``--no-unknown`` writes it. ``edgel2 benchmark --unknown-cost``
    times the two: not fetching an output saves nothing (every engine computes the whole
    graph), so the copy's graph is pruned from the logits back.

    Args:
        path: An edgel2 export.
        folder: Where the copy goes (same file name).

    Returns:
        The copy's path, or None.

    Examples:
        >>> without_unknown(Path("models/resnet18-int8.onnx"), Path("/tmp"))  # doctest: +SKIP
        PosixPath('/tmp/resnet18-int8.onnx')
    """
    strip = {".onnx": _onnx_without_unknown, ".tflite": _tflite_without_unknown}.get(path.suffix)
    data = strip(path.read_bytes()) if strip else None
    if data is None:
        return None
    out = Path(folder) / path.name
    out.write_bytes(data)
    metadata = {k: v for k, v in read_metadata(path).items() if k != "unknown"}
    writer_of(path.suffix[1:]).embed_metadata(out, metadata)  # and its checksum, recomputed
    return out


def kept_operations(operations: Sequence[tuple[Sequence, Sequence]], wanted: set) -> list[int]:
    """The indices, in order, of the operations (``(inputs, outputs)`` in execution order) that
    the ``wanted`` values depend on.

    Examples:
        >>> ops = [(["x"], ["a"]), (["a"], ["logits"]), (["a"], ["b"]), (["b"], ["score"])]
        >>> kept_operations(ops, {"logits"})
        [0, 1]
    """
    needed, kept = set(wanted), []
    for index in reversed(range(len(operations))):
        inputs, outputs = operations[index]
        if needed.intersection(outputs):
            kept.append(index)
            needed.update(inputs)
    return kept[::-1]


def _onnx_without_unknown(data: bytes) -> bytes | None:
    try:
        import onnx
    except ImportError:
        raise EdgeL2Error("the unknown score's cost on an ONNX file needs the onnx package: "
                          "pip install 'edgel2[train]'") from None
    model = onnx.load_from_string(data)
    graph = model.graph
    score = next((o for o in graph.output if o.name == UNKNOWN_OUTPUT), None)
    if score is None:
        return None
    graph.output.remove(score)
    kept = set(kept_operations([(n.input, n.output) for n in graph.node],
                               {o.name for o in graph.output}))
    for index in reversed(range(len(graph.node))):
        if index not in kept:
            del graph.node[index]
    used = {name for node in graph.node for name in node.input}
    for unused in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(unused)
    return model.SerializeToString()


def _tflite_without_unknown(data: bytes) -> bytes | None:
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise EdgeL2Error("the unknown score's cost on a TFLite file needs LiteRT: "
                          "pip install 'edgel2[litert]'") from None
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    graph = model.subgraphs[0]
    signature = (model.signatureDefs or [None])[0]
    score = [o.tensorIndex for o in (signature.outputs if signature else [])
             if _text(o.name) == UNKNOWN_OUTPUT]
    if len(model.subgraphs) != 1 or not score:
        return None
    outputs = [int(i) for i in graph.outputs if int(i) not in score]
    kept = kept_operations([(list(op.inputs), list(op.outputs)) for op in graph.operators],
                           set(outputs))
    graph.operators = [graph.operators[i] for i in kept]
    graph.outputs = outputs
    signature.outputs = [o for o in signature.outputs if o.tensorIndex not in score]
    builder = flatbuffers.Builder(len(data))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _text(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)
