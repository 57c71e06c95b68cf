"""The light runtime: runs exported edgel2 models with numpy, pillow and onnxruntime only
(LiteRT for .tflite files when it is installed). Never imports TensorFlow or Keras."""

from edgel2.runtime.engines import Engine, open_engine, read_metadata

__all__ = ["Engine", "open_engine", "read_metadata"]
