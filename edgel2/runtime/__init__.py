"""The light runtime: runs exported edgel2 models with numpy, pillow and onnxruntime only
(LiteRT for .tflite files when it is installed). Never imports TensorFlow or Keras.

Example:
    >>> from edgel2.runtime import Classifier, Batcher                    # doctest: +SKIP
    >>> clf = Classifier("models/resnet18-int8.onnx")                 # doctest: +SKIP
    >>> clf.predict(["cat.png", "ship.jpg"], top_k=3)                     # doctest: +SKIP
"""

from edgel2.runtime.batcher import Batcher
from edgel2.runtime.classifier import Classifier, FileResult, ModelError
from edgel2.runtime.engines import (Engine, EngineError, ProviderFallbackWarning, open_engine,
                                    read_metadata, resolve_providers)
from edgel2.runtime.preprocess import ImageError, load_image

__all__ = ["Batcher", "Classifier", "Engine", "EngineError", "FileResult", "ImageError",
           "ModelError", "ProviderFallbackWarning", "load_image", "open_engine",
           "read_metadata", "resolve_providers"]
