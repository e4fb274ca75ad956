"""The reference's learning-rate schedule: linear warm-up, constant, polynomial decay."""

from __future__ import annotations

import keras
import tensorflow as tf

from dlrm_tf.model.layers import PACKAGE

MIN_DECAY_LR = 1e-7


@keras.saving.register_keras_serializable(package=PACKAGE)
class WarmupPolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """The reference's schedule, indexed by the optimizer's update count.

    With ``s = iterations + 1`` (the reference's scheduler has already stepped
    once when the first update runs): ``lr * s / W`` while ``s < W``
    (``W = num_warmup_steps``); ``lr`` until ``decay_start_step``; then
    ``max(lr * ((N - (s - start)) / N) ** 2, 1e-7)`` for ``N = num_decay_steps``
    steps; then held at the last decayed value.

    One deliberate difference: between warm-up and decay the reference holds the
    last warm-up value ``lr * (W - 1) / W``; this schedule uses ``lr`` itself, as
    the documented "constant" phase describes.
    """

    def __init__(
        self,
        learning_rate: float,
        num_warmup_steps: int = 0,
        decay_start_step: int = 0,
        num_decay_steps: int = 0,
    ) -> None:
        if num_decay_steps > 0 and decay_start_step < num_warmup_steps:
            raise ValueError(
                f"`lr_decay_start_step`={decay_start_step} must not come before the end of "
                f"the warm-up (`lr_num_warmup_steps`={num_warmup_steps})"
            )
        if min(num_warmup_steps, decay_start_step, num_decay_steps) < 0:
            raise ValueError("learning-rate schedule step counts must not be negative")
        self.learning_rate = float(learning_rate)
        self.num_warmup_steps = int(num_warmup_steps)
        self.decay_start_step = int(decay_start_step)
        self.num_decay_steps = int(num_decay_steps)

    def __call__(self, step):
        s = tf.cast(step, tf.float32) + 1.0
        base = tf.constant(self.learning_rate, tf.float32)
        lr = base
        if self.num_decay_steps > 0:
            start = float(self.decay_start_step)
            num = float(self.num_decay_steps)
            held = tf.minimum(s, start + num - 1.0)
            frac = (num - (held - start)) / num
            decayed = tf.maximum(base * frac * frac, MIN_DECAY_LR)
            lr = tf.where(s >= start, decayed, lr)
        if self.num_warmup_steps > 0:
            lr = tf.where(s < self.num_warmup_steps, base * s / self.num_warmup_steps, lr)
        return lr

    def get_config(self) -> dict:
        return {
            "learning_rate": self.learning_rate,
            "num_warmup_steps": self.num_warmup_steps,
            "decay_start_step": self.decay_start_step,
            "num_decay_steps": self.num_decay_steps,
        }
