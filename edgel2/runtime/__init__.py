"""The light runtime: runs exported edgel2 models with numpy, pillow and onnxruntime only
(LiteRT for .tflite files when it is installed). Never imports TensorFlow or Keras.

Every expected failure is an :class:`EdgeL2Error` (``ModelError``, ``EngineError``,
``ImageError``, ``PredictionError``, ``BusyError``, ``MissingExtraError``, ``OptionError``).

Examples:
    >>> from edgel2.runtime import Classifier, shipped_model              # doctest: +SKIP
    >>> clf = Classifier()  # the int8 pair edgel2 ships: ONNX and TFLite  # doctest: +SKIP
    >>> clf.predict(["cat.png", "ship.jpg"], top_k=3)                     # doctest: +SKIP
"""

from edgel2.errors import (
    BusyError,
    EdgeL2Error,
    EngineError,
    ImageError,
    MissingExtraError,
    ModelError,
    OptionError,
    PredictionError,
)
from edgel2.runtime.auto import open_engine
from edgel2.runtime.batcher import Batcher
from edgel2.runtime.classifier import NON_FINITE, Classifier, FileResult, Prediction
from edgel2.runtime.engines import Engine, ProviderFallbackWarning, resolve_providers
from edgel2.runtime.modelfile import read_metadata, sniff_format
from edgel2.runtime.preprocess import load_image
from edgel2.runtime.probe import WORKLOADS, EngineChoice
from edgel2.runtime.shipped import shipped_model, shipped_models

__all__ = ["NON_FINITE", "WORKLOADS", "Batcher", "BusyError", "Classifier", "EdgeL2Error",
           "Engine", "EngineChoice", "EngineError", "FileResult", "ImageError",
           "MissingExtraError", "ModelError", "OptionError", "Prediction", "PredictionError",
           "ProviderFallbackWarning", "load_image", "open_engine", "read_metadata",
           "resolve_providers", "shipped_model", "shipped_models", "sniff_format"]
