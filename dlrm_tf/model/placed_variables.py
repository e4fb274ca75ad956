"""Variables that live on one device while the rest of the model is mirrored.

Under ``tf.distribute.MirroredStrategy`` every variable created in the strategy's
scope becomes a ``MirroredVariable``: a full copy on each device. A table placed
on one device (``--embedding_placement``) is instead a plain resource variable
there; the replicas' graphs read its rows across devices, and the optimizer
updates it in place on its device (``dlrm_tf.model.optimizers``).

Under ``MultiWorkerMirroredStrategy`` no graph reads another worker's variables:
a table spread over workers (``WorkerTable``) is held whole by one worker, and
every other worker creates it with no rows. Such variables are marked
*exchanged*: their lookups travel by collectives (``EmbeddingBags``), their
gradient is complete on the worker that holds them, and files hold only the
holder's rows (``dlrm_tf.training.worker_tables``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import keras
import tensorflow as tf
from tensorflow.python.ops.resource_variable_ops import ResourceVariable

# What a plain variable takes of the arguments the strategy's creators pass along.
_KEPT = ("initial_value", "trainable", "name", "dtype", "shape", "validate_shape")
_EXCHANGED = "_dlrm_exchanged"  # the attribute marking an exchanged variable


@dataclasses.dataclass(frozen=True)
class WorkerTable:
    """Where a table spread over several workers lives, seen from this worker.

    Attributes:
      device: this worker's device (the table's variable, whole or empty, is there).
      held: whether this worker holds the table's rows.
    """

    device: str
    held: bool


def _plain_creator(exchanged: bool):
    def create(next_creator, **kwargs) -> tf.Variable:
        del next_creator  # the strategy's creator would mirror it
        # Building the class itself (not ``tf.Variable``) bypasses the creator stack.
        variable = ResourceVariable(**{key: kwargs[key] for key in _KEPT if key in kwargs})
        if exchanged:
            setattr(variable, _EXCHANGED, True)
        return variable

    return create


@contextlib.contextmanager
def on_one_device(device: str | None, exchanged: bool = False) -> Iterator[None]:
    """Variables created inside are plain variables on ``device`` (``None``: as usual),
    marked exchanged (``is_exchanged``) when ``exchanged``."""
    if device is None:
        yield
        return
    creator = _plain_creator(exchanged)
    with tf.init_scope(), tf.device(device), tf.variable_creator_scope(creator):
        yield


def is_exchanged(variable) -> bool:
    """Whether ``variable`` (Keras or TensorFlow) is a table, or a table's slot, spread
    over workers (``WorkerTable``)."""
    tf_variable = variable.value if isinstance(variable, keras.Variable) else variable
    return bool(getattr(tf_variable, _EXCHANGED, False))


def placed_device(variable) -> str | None:
    """The device of a variable placed on one device under a strategy, else ``None``.

    ``variable`` is a Keras or TensorFlow variable; mirrored variables, and every
    variable outside a ``tf.distribute`` strategy's scope, give ``None``.
    """
    tf_variable = variable.value if isinstance(variable, keras.Variable) else variable
    if not tf.distribute.has_strategy() or isinstance(tf_variable, tf.distribute.DistributedValues):
        return None
    return tf_variable.device


def held_elsewhere(variable) -> bool:
    """Whether ``variable`` is an exchanged table (or slot) whose rows another worker holds:
    values loaded or drawn for it are that worker's to keep."""
    return is_exchanged(variable) and int(variable.shape[0]) == 0
