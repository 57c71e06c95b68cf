"""The learning-rate schedule: a step function, saved with the optimizer in every checkpoint,
so a resumed run goes on from the step the checkpoint holds."""
from __future__ import annotations

import math

import keras


@keras.saving.register_keras_serializable(package="edgel2")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then a linear ("onecycle") or
    cosine decay to 0 at ``total_steps``.

    Examples:
        >>> schedule = OneCycle(0.4, total_steps=100, warmup_steps=25)
        >>> [round(float(schedule(s)), 3) for s in (0, 25, 50, 100)]
        [0.0, 0.4, 0.267, 0.0]
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int, kind: str = "onecycle"):
        self.peak, self.total_steps, self.warmup_steps, self.kind = (
            float(peak), int(total_steps), int(warmup_steps), kind)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = keras.ops.maximum(float(self.warmup_steps), 1.0)
        progress = keras.ops.clip((step - self.warmup_steps)
                                  / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0)
        decay = (1.0 - progress if self.kind == "onecycle"
                 else 0.5 * (1.0 + keras.ops.cos(math.pi * progress)))
        return self.peak * keras.ops.where(step < self.warmup_steps, step / warm, decay)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "kind": self.kind}
