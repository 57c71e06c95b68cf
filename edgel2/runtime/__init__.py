"""The light runtime: runs exported edgel2 models with numpy, pillow and onnxruntime only
(LiteRT for .tflite files when it is installed). Never imports TensorFlow or Keras.

Every expected failure is an :class:`EdgeL2Error` (``ModelError``, ``EngineError``,
``ImageError``, ``PredictionError``, ``BusyError``, ``MissingExtraError``).

Example:
    >>> from edgel2.runtime import Classifier, Batcher                    # doctest: +SKIP
    >>> clf = Classifier("models/resnet18-int8.onnx")                 # doctest: +SKIP
    >>> clf.predict(["cat.png", "ship.jpg"], top_k=3)                     # doctest: +SKIP
"""

from edgel2.errors import (BusyError, EdgeL2Error, EngineError, ImageError, MissingExtraError,
                           ModelError, PredictionError)
from edgel2.runtime.batcher import Batcher
from edgel2.runtime.classifier import NON_FINITE, Classifier, FileResult
from edgel2.runtime.engines import Engine, ProviderFallbackWarning, open_engine, resolve_providers
from edgel2.runtime.modelfile import read_metadata, sniff_format
from edgel2.runtime.preprocess import load_image

__all__ = ["NON_FINITE", "Batcher", "BusyError", "Classifier", "EdgeL2Error", "Engine",
           "EngineError", "FileResult", "ImageError", "MissingExtraError", "ModelError",
           "PredictionError", "ProviderFallbackWarning", "load_image", "open_engine",
           "read_metadata", "resolve_providers", "sniff_format"]
