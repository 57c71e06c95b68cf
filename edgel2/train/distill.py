"""Knowledge distillation (``edgel2 train --teacher FILE``): a student learns from a teacher's
softened logits as well as from the labels (Hinton, Vinyals and Dean, 2015).

The teacher is any edgel2 model: a ``.keras`` file run by Keras, or an exported ``.onnx`` or
``.tflite`` file run by edgel2's own runtime, so a user distils from the very file they deploy
(the shipped int8 ResNet-18 included). It sees the batch the student sees, augmentation and
all: with a teacher, :class:`~edgel2.train.batches.ShuffledBatches` augments each batch before
the step (the same crop, flip and cutout as the in-graph augmentation, seeded by
``(seed, epoch, index)`` so resume stays exact), runs the teacher on it and packs its logits
beside the labels; :class:`DistillationLoss` unpacks them.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from edgel2.errors import OptionError

# The teacher's batches: big enough for its engine to be efficient, small enough for memory.
TEACHER_BATCH = 256


class Teacher:
    """The logits of an edgel2 model on uint8 NHWC batches.

    Args:
        path: A ``.keras`` model or checkpoint, or an ``.onnx``/``.tflite`` file edgel2
            exported.
        num_classes: The student's classes: the teacher must have as many.
        image_shape: The student's (height, width, channels): the teacher must take it.

    Examples:
        >>> teacher = Teacher("models/resnet18-int8.onnx", 10, (32, 32, 3))  # doctest: +SKIP
        >>> teacher(np.zeros((2, 32, 32, 3), np.uint8)).shape                # doctest: +SKIP
        (2, 10)
    """

    def __init__(self, path: str | os.PathLike, num_classes: int,
                 image_shape: tuple[int, int, int]):
        self.path = Path(path)
        if not self.path.is_file():
            raise OptionError(f"teacher file does not exist: {self.path}")
        run, classes, shape = self._open()
        self._run: Callable[[np.ndarray], np.ndarray] = run
        if classes != num_classes:
            raise OptionError(f"the teacher {self.path.name} has {classes} classes and the data "
                              f"{num_classes}: a teacher must classify the same classes")
        if tuple(shape) != tuple(image_shape):
            raise OptionError(f"the teacher {self.path.name} takes {'x'.join(map(str, shape))} "
                              f"images and the data is {'x'.join(map(str, image_shape))}: pass "
                              "`image_size` to match it")

    def _open(self) -> tuple[Callable[[np.ndarray], np.ndarray], int, tuple]:
        """(a function from images to logits, the number of classes, the image shape)."""
        if self.path.suffix.lower() == ".keras":
            from edgel2.checkpoint import load_model
            from edgel2.model import network_of

            network = network_of(load_model(self.path))
            return ((lambda images: np.asarray(network.predict_on_batch(images))),
                    int(network.output.shape[-1]), tuple(network.input.shape[1:]))
        from edgel2.runtime.auto import open_engine
        from edgel2.runtime.formats import REFERENCE_ENGINE
        from edgel2.runtime.modelfile import sniff_format

        engine = open_engine(self.path, engine=REFERENCE_ENGINE[sniff_format(self.path)])
        return engine.run, int(engine.output_shape[-1]), tuple(engine.input_shape[1:])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """float32 logits ``[N, classes]`` of uint8 ``images`` ``[N, H, W, C]``."""
        from edgel2.utils import run_batches

        return run_batches(self._run, images, TEACHER_BATCH).astype(np.float32)


@keras.saving.register_keras_serializable(package="edgel2")
class DistillationLoss(keras.losses.Loss):
    """``weight * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - weight) * CE(y, s)``.

    ``y_true`` is ``[labels | teacher logits]``: the (possibly soft) targets, then the
    teacher's logits ``t``, each ``classes`` wide; ``y_pred`` the student's logits ``s``. The
    ``T^2`` keeps the distillation gradients' scale independent of ``T``. ``base`` is the
    labels' loss (cross-entropy with label smoothing, or logit norm).

    Examples:
        >>> loss = DistillationLoss(temperature=4.0, weight=1.0)
        >>> teacher = np.array([[2.0, 0.0]], "float32")
        >>> float(loss(np.concatenate([[[1.0, 0.0]], teacher], 1), teacher))  # the same logits
        0.0
    """

    def __init__(self, temperature: float, weight: float, base: keras.losses.Loss | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.temperature, self.weight = float(temperature), float(weight)
        self.base = base or keras.losses.CategoricalCrossentropy(from_logits=True)

    def call(self, y_true, y_pred):
        ops = keras.ops
        classes = ops.shape(y_pred)[-1]
        labels, teacher = y_true[..., :classes], y_true[..., classes:]
        student = ops.cast(y_pred, "float32")
        soft_teacher = ops.softmax(teacher / self.temperature, axis=-1)
        log_teacher = ops.log_softmax(teacher / self.temperature, axis=-1)
        log_student = ops.log_softmax(student / self.temperature, axis=-1)
        kl = ops.sum(soft_teacher * (log_teacher - log_student), axis=-1)
        distilled = self.weight * self.temperature ** 2 * kl
        if self.weight == 1.0:
            return distilled
        return distilled + (1.0 - self.weight) * self.base.call(labels, student)

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature, "weight": self.weight,
                "base": keras.saving.serialize_keras_object(self.base)}

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config["base"] = keras.saving.deserialize_keras_object(config["base"])
        return cls(**config)
