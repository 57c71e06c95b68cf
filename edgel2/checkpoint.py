"""Every ``.keras`` file edgel2 reads or writes, in one place: trained models
(:func:`load_model`, :func:`save_model`), their float32 rebuild for export and benchmarks
(:func:`as_float32`), and the training checkpoint (:func:`save_checkpoint`,
:func:`load_checkpoint`, :func:`checkpoint_state`).

A training checkpoint is **one file that becomes valid all at once**: the training model
(weights, optimizer state with its step counter and any EMA) and the run's state (epoch, best
validation score, the augmentation's random-generator state, data order) are written to a
temporary file, flushed to disk and renamed over ``last.keras``. A kill at any instant leaves
either the previous checkpoint or the new one, never a mix of the two epochs. The state is a
JSON member of the ``.keras`` zip, which Keras ignores when it loads the model.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from edgel2.errors import EdgeL2Error, TrainingError, first_line, reported_write
from edgel2.utils import atomic_path

STATE_MEMBER = "edgel2-state.json"


def _register_layers() -> None:
    """Import the modules whose classes edgel2's .keras files name (Keras finds them by
    their registered names)."""
    import edgel2.augment  # noqa: F401
    import edgel2.model  # noqa: F401
    import edgel2.train.distill  # noqa: F401
    import edgel2.train.outliers  # noqa: F401
    import edgel2.train.schedule  # noqa: F401


def load_model(path: str | os.PathLike):
    """Load a ``.keras`` file saved by edgel2 (no optimizer), with one clear error for
    anything else.

    Examples:
        >>> model = load_model("runs/train/exp/model.keras")   # doctest: +SKIP
    """
    import keras

    _register_layers()
    path = Path(path)
    if not path.is_file():
        raise EdgeL2Error(f"model file does not exist: {path}")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise EdgeL2Error(f"not a Keras model file (.keras zip): {path}")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for corrupt archives
        raise EdgeL2Error(f"cannot load {path}: {first_line(e)}") from None


def save_model(model, path: str | os.PathLike, state: dict | None = None) -> Path:
    """Save ``model`` to ``path`` atomically, with ``state`` (JSON, read back by
    :func:`checkpoint_state`) inside the file when given. A failed write is one
    :class:`TrainingError` line (a full disk, a read-only folder) and leaves any earlier file
    as it was."""
    path = Path(path)
    with reported_write(path), atomic_path(path, durable=True) as tmp:
        model.save(tmp)
        if state is not None:
            with zipfile.ZipFile(tmp, "a") as archive:
                archive.writestr(STATE_MEMBER, json.dumps(state))
    return path


def save_checkpoint(trainer, path: str | os.PathLike, state: dict) -> Path:
    """Write the training model (with its optimizer) and ``state`` into one ``.keras`` file,
    atomically: the commit point of a training run. The random-generator states of the
    augmentation and dropout layers, which Keras does not save, travel in the state as
    ``seed_states``."""
    import keras

    return save_model(trainer, path, {
        **state, "seed_states": [keras.ops.convert_to_numpy(v).tolist()
                                 for v in _seed_states(trainer)]})


def checkpoint_state(path: str | os.PathLike) -> dict | None:
    """The state inside a checkpoint written by :func:`save_checkpoint`, or None when there
    is no complete checkpoint at ``path``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(STATE_MEMBER))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def load_checkpoint(path: str | os.PathLike):
    """The training model of a checkpoint, compiled, with its optimizer state and its random
    generators where they were when it was written."""
    import keras

    _register_layers()
    state = checkpoint_state(path)
    try:
        trainer = keras.saving.load_model(path)
    except Exception as e:  # a corrupt zip, a missing layer...: say which file
        raise TrainingError(f"cannot load checkpoint {path}: {first_line(e)}") from None
    generators = _seed_states(trainer)
    saved = (state or {}).get("seed_states", [])
    if len(saved) != len(generators):
        raise TrainingError(f"checkpoint {path} holds {len(saved)} random-generator states, "
                            f"the model has {len(generators)}")
    for variable, value in zip(generators, saved):
        variable.assign(np.asarray(value, dtype=variable.dtype))
    return trainer


def _seed_states(model) -> list:
    """The state variables of the model's random generators, in a fixed order (they are in
    ``model.variables`` but not in ``model.weights``, so ``.keras`` files leave them out)."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def _retyped(config, input_dtype: str | None):
    """A copy of a functional model config with every dtype policy float32 and, if given,
    the input layer's dtype replaced."""
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key == "dtype" and isinstance(value, dict) and value.get("class_name") == "DTypePolicy":
                value = {**value, "config": {**value["config"], "name": "float32"}}
            elif key == "dtype" and isinstance(value, str) and "bfloat16" in value:
                value = "float32"
            out[key] = _retyped(value, input_dtype)
        if input_dtype and out.get("class_name") == "InputLayer":
            out["config"] = {**out["config"], "dtype": input_dtype}
        return out
    if isinstance(config, list):
        return [_retyped(v, input_dtype) for v in config]
    return config


def as_float32(model, input_dtype: str | None = None):
    """The same network in float32 (a model trained in mixed bf16 included), optionally
    taking ``input_dtype`` pixels (still 0..255) instead of uint8.

    Examples:
        >>> from edgel2.model import resnet18
        >>> as_float32(resnet18(width=4), input_dtype="float32").input.dtype
        'float32'
    """
    import keras

    config = _retyped(model.get_config(), input_dtype)
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights([np.asarray(keras.ops.convert_to_numpy(w), np.float32)
                         for w in model.weights])
    return rebuilt
