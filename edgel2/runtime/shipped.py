"""The models that ship with edgel2: one copy in git (``models/``, the default ResNet-18, and
``models/resnet20/``, the small ResNet-20), carried by the wheel as the package data
``edgel2/models/``. Each folder holds one model (its int8 ONNX and TFLite files), so a folder
is a model wherever edgel2 takes one."""
from __future__ import annotations

import importlib.resources
from pathlib import Path

from edgel2.errors import ModelError

DEFAULT_MODEL = "resnet18-int8.onnx"  # the full-width ResNet-18, int8 ONNX (models/README.md)
# ... and its int8 TFLite twin beside it: together, the default model of infer, serve and Ray
SOURCE_CHECKOUT_MODELS = Path(__file__).resolve().parents[2] / "models"


def shipped_model(name: str = DEFAULT_MODEL) -> Path:
    """The path of a model shipped with edgel2.

    Args:
        name: The file's path relative to ``models/`` (``"resnet18-int8.tflite"``,
            ``"resnet20/resnet20-int8.onnx"``).

    Returns:
        Its path inside the installed package, or in the ``models/`` folder of a source
        checkout (an editable install).

    Examples:
        >>> shipped_model().name
        'resnet18-int8.onnx'
        >>> shipped_model("resnet18-int8.tflite").is_file()
        True
        >>> shipped_model("resnet20/resnet20-int8.tflite").is_file()
        True
    """
    packaged = Path(str(importlib.resources.files("edgel2") / "models" / name))
    for candidate in (packaged, SOURCE_CHECKOUT_MODELS / name):
        if candidate.is_file():
            return candidate
    raise ModelError(f"the shipped model {name} is not in this install of edgel2 (looked in "
                     f"{packaged.parent}); pass `model`")


def shipped_models() -> Path:
    """The folder of the shipped models.

    Returns:
        The folder holding the int8 ONNX and TFLite files of the ResNet-18, either of which
        ``auto`` may run: the default model of ``Classifier``, ``edgel2 infer``,
        ``edgel2 serve`` and Ray. The small ResNet-20 is its subfolder ``resnet20/``.

    Examples:
        >>> sorted(p.suffix for p in shipped_models().glob("resnet18-int8.*"))
        ['.onnx', '.tflite']
    """
    return shipped_model().parent
