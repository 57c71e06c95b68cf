"""Choosing the Keras backend and describing the device, without importing TensorFlow
unless it is the backend in use (the lent GPU machines have JAX but no TensorFlow)."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

from edgel2.errors import EdgeL2Error

BACKENDS = ("tensorflow", "jax")


def use_backend(name: str | None) -> str:
    """Make ``name`` (or ``$KERAS_BACKEND``, default tensorflow) the Keras backend.

    Must run before Keras is imported; if Keras is already loaded with another backend,
    raises :class:`EdgeL2Error` instead of silently training on the wrong one.
    """
    name = name or os.environ.get("KERAS_BACKEND") or "tensorflow"
    if name not in BACKENDS:
        raise EdgeL2Error(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != name:
            raise EdgeL2Error(f"Keras is already running on {keras.backend.backend()}; "
                              f"set KERAS_BACKEND={name} before starting Python")
    os.environ["KERAS_BACKEND"] = name
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TF's start-up chatter
    return name


def accelerator() -> str | None:
    """A description of the GPU the current backend trains on, or None on the CPU."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        return gpus[0].device_kind if gpus else None
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return gpus[0].name if gpus else None
    return None


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a run's numbers."""
    versions = {"python": platform.python_version()}
    for dist in ("edgel2", "keras", "numpy", "tensorflow", "tensorflow-cpu", "jax", "jaxlib",
                 "onnx", "onnxruntime", "tf2onnx", "ai-edge-litert"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions
