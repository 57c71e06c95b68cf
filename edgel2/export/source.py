"""The model being exported: loaded from ``.keras`` as float32, and described for metadata."""
from __future__ import annotations

from pathlib import Path

import keras

from edgel2 import __version__
from edgel2.checkpoint import as_float32, load_model
from edgel2.errors import EdgeL2Error
from edgel2.model import (
    architecture_of,
    count_multiply_adds,
    count_params,
    find_normalize,
    stem_width,
)
from edgel2.utils import config_hash, run_config


def load_source(path: str | Path) -> tuple[keras.Model, dict]:
    """Load a trained classifier for export: (float32 model, metadata that describes it).

    Refuses files that are not an image classifier (one NHWC image input, one
    ``[batch, classes]`` output).
    """
    path = Path(path)
    model = as_float32(load_model(path))
    in_shape, out_shape = model.input.shape, model.output.shape
    if len(model.inputs) != 1 or len(in_shape) != 4 or len(out_shape) != 2:
        raise EdgeL2Error(f"{path} is not an image classifier (want one [batch, H, W, C] input "
                          f"and one [batch, classes] output, got {in_shape} -> {out_shape})")
    return model, describe(model, path)


def named_outputs(outputs) -> dict:
    """A model's outputs by the names exported graphs give them: ``logits`` for a plain
    classifier; ``logits`` and ``unknown_score`` for one with the unknown score
    (:func:`edgel2.unknown.head.with_unknown_score`)."""
    return dict(outputs) if isinstance(outputs, dict) else {"logits": outputs}


def model_name(path: str | Path) -> str:
    """The name files exported from the ``.keras`` file at ``path`` carry (their stem, their
    metadata's ``name``, the model ``edgel2 serve`` serves): its run's name for the run's
    ``model.keras``, the run's name and the file's stem for its other files
    (``photos-best``), and the file's stem for a model with no run (or a run from before
    runs had names).

    Examples:
        >>> model_name("runs/train/nowhere/model.keras")
        'model'
    """
    path = Path(path)
    name = run_config(path).get("name")
    if not isinstance(name, str) or not name:
        return path.stem
    return name if path.name == "model.keras" else f"{name}-{path.stem}"


def describe_network(model: keras.Model) -> dict | None:
    """What the network is, for people choosing a model by its cost: its architecture and
    width, trainable parameters and multiply-adds per image; None for a network that is none
    of edgel2's architectures.

    Examples:
        >>> from edgel2.model import resnet20
        >>> describe_network(resnet20())
        {'architecture': 'resnet20', 'width': 16, 'parameters': 272474, 'multiply_adds': 40813184}
    """
    arch = architecture_of(layer.name for layer in model.layers)
    if arch is None:
        return None
    return {"architecture": arch, "width": stem_width(model),
            "parameters": count_params(model), "multiply_adds": count_multiply_adds(model)}


def describe(model: keras.Model, path: Path) -> dict:
    """Metadata written into every exported file (before quantization and accuracy)."""
    run = run_config(path)
    classes = run.get("model", {}).get("class_names")  # None: export names them from its data
    norm = find_normalize(model)
    if norm is None:
        raise EdgeL2Error(f"{path} has no edgel2 Normalize layer: not an edgel2 image classifier")
    mean, std = norm.mean, norm.std
    from edgel2.data import DataRecord

    record = DataRecord.from_run(run)
    return {
        "producer": f"edgel2 {__version__}",
        "name": model_name(path),
        "model_name": model.name,
        "class_names": classes,
        "input": {"name": "images", "layout": "NHWC", "dtype": "uint8",
                  "shape": [None, *model.input.shape[1:]]},
        "output": {"name": "logits", "dtype": "float32", "shape": [None, model.output.shape[-1]]},
        "normalization": {"applied": "inside the model", "formula": "(pixel - mean) / std",
                          "mean": mean, "std": std},
        **({"network": network} if (network := describe_network(model)) else {}),
        "config_hash": run.get("config_hash") or config_hash(model.get_config()),
        "source": path.name,
        # where the training data is, so later commands on the file find it (edgel2.data)
        **({"data": record.as_metadata()} if record else {}),
    }
