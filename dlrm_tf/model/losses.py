"""The reference's losses: ``mse`` (its default), ``bce`` and weighted ``wbce``."""

from __future__ import annotations

import keras
import tensorflow as tf

from dlrm_tf.config import LOSSES
from dlrm_tf.model.layers import PACKAGE

# The reference's BCE (torch.nn.BCELoss) clamps each log term at -100.
_LOG_FLOOR = -100.0


def _clamped_log(x: tf.Tensor) -> tf.Tensor:
    return tf.maximum(tf.math.log(x), _LOG_FLOOR)


@keras.saving.register_keras_serializable(package=PACKAGE)
class DLRMLoss(keras.losses.Loss):
    """Loss on probabilities ``y_pred`` in [0, 1] and labels ``y_true``.

    ``mse``: mean of ``(p - y)^2``. ``bce``: mean of ``-(y log p + (1-y) log(1-p))``
    with each log clamped at -100 like the reference. ``wbce``: BCE with each
    example weighted ``w0`` if its label is 0 and ``w1`` if it is 1
    (``loss_weights="w0-w1"``). ``round_targets`` rounds labels to 0/1 first.
    """

    def __init__(
        self,
        kind: str = "mse",
        weights: tuple[float, float] = (1.0, 1.0),
        round_targets: bool = False,
        name: str | None = None,
        **kwargs,
    ) -> None:
        if kind not in LOSSES:
            raise ValueError(f"`loss_function`={kind!r}: must be one of {', '.join(LOSSES)}")
        super().__init__(name=name or kind, **kwargs)
        self.kind = kind
        self.weights = (float(weights[0]), float(weights[1]))
        self.round_targets = bool(round_targets)

    def call(self, y_true, y_pred):
        y_pred = tf.cast(y_pred, tf.float32)
        y_true = tf.cast(y_true, tf.float32)
        if self.round_targets:
            y_true = tf.round(y_true)
        if self.kind == "mse":
            per_example = tf.square(y_pred - y_true)
        else:
            per_example = -(
                y_true * _clamped_log(y_pred) + (1.0 - y_true) * _clamped_log(1.0 - y_pred)
            )
            if self.kind == "wbce":
                w0, w1 = self.weights
                per_example = per_example * (w0 * (1.0 - y_true) + w1 * y_true)
        return tf.reduce_mean(per_example, axis=-1)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(kind=self.kind, weights=list(self.weights), round_targets=self.round_targets)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class RoundedAccuracy(keras.metrics.MeanMetricWrapper):
    """The reference's accuracy: the share of examples with ``round(p) == y``.

    Labels are *not* rounded unless ``round_targets`` is set, so on the
    reference's random data (targets uniform in [0, 1)) accuracy is 0 %, as in
    the reference's output.
    """

    def __init__(self, round_targets: bool = False, name: str = "accuracy", **kwargs) -> None:
        self.round_targets = bool(round_targets)
        super().__init__(fn=self._matches, name=name, **kwargs)

    def _matches(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        if self.round_targets:
            y_true = tf.round(y_true)
        return tf.cast(tf.equal(tf.round(tf.cast(y_pred, tf.float32)), y_true), tf.float32)

    def get_config(self) -> dict:
        return {"round_targets": self.round_targets, "name": self.name}
