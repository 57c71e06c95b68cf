"""edgel2: train -> export -> deploy small vision models, starting with an L2-regularized
CIFAR-10 ResNet-18.

The package is layered: ``data`` -> ``model`` -> ``train``/``evaluate`` -> ``export`` ->
``runtime``. Importing ``edgel2`` itself loads none of the heavy libraries.
"""

__version__ = "0.1.0"
