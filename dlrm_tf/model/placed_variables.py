"""Variables that live on one device while the rest of the model is mirrored.

Under ``tf.distribute.MirroredStrategy`` every variable created in the strategy's
scope becomes a ``MirroredVariable``: a full copy on each device. A table placed
on one device (``--embedding_placement``) is instead a plain resource variable
there; the replicas' graphs read its rows across devices, and the optimizer
updates it in place on its device (``dlrm_tf.model.optimizers``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import tensorflow as tf
from tensorflow.python.ops.resource_variable_ops import ResourceVariable

# What a plain variable takes of the arguments the strategy's creators pass along.
_KEPT = ("initial_value", "trainable", "name", "dtype", "shape", "validate_shape")


def _plain_variable(next_creator, **kwargs) -> tf.Variable:
    del next_creator  # the strategy's creator would mirror it
    # Building the class itself (not ``tf.Variable``) bypasses the creator stack.
    return ResourceVariable(**{key: kwargs[key] for key in _KEPT if key in kwargs})


@contextlib.contextmanager
def on_one_device(device: str | None) -> Iterator[None]:
    """Variables created inside are plain variables on ``device`` (``None``: as usual)."""
    if device is None:
        yield
        return
    with tf.init_scope(), tf.device(device), tf.variable_creator_scope(_plain_variable):
        yield


def placed_device(variable) -> str | None:
    """The device of a variable placed on one device under a strategy, else ``None``.

    ``variable`` is a Keras or TensorFlow variable; mirrored variables, and every
    variable outside a ``tf.distribute`` strategy's scope, give ``None``.
    """
    tf_variable = variable.value if isinstance(variable, keras.Variable) else variable
    if not tf.distribute.has_strategy() or isinstance(tf_variable, tf.distribute.DistributedValues):
        return None
    return tf_variable.device
