"""Fused embedding-table kernels: a pooled lookup and a row update that read each row once.

``bag_sum`` is ``tf.math.segment_sum(tf.gather(table, ids), bag_of_id)`` padded
to ``num_bags`` rows, without materialising the ``[n, d]`` gathered rows; its
gradient is the same ``IndexedSlices`` (one row per id, gathered from the output
gradient). ``scatter_sub_rows`` is ``table[ids] -= scale * source[positions]``,
repeated ids applied one after another, spread over the CPU threads by id.

Both run on the CPU only, on float32 tables; ``usable(table)`` says whether a
table may use them. A SavedModel must not contain them (TF Serving has no such
ops): the model calls them only in training steps.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops

from dlrm_tf.kernels import build

_NAME = "embedding_rows"


def _ops():
    return build.load(_NAME)


def available() -> bool:
    """Whether the kernels are built and loaded in this process (not turned off)."""
    return _ops() is not None


def usable(table) -> bool:
    """Whether ``table`` (a resource variable) can use these kernels: they are
    built and loaded, the table is float32 and does not live on an accelerator."""
    if not available() or table.dtype != tf.float32:
        return False
    device = (getattr(table, "device", "") or "").upper()
    return "GPU" not in device and "TPU" not in device


def bag_sum(table, ids: tf.Tensor, bag_of_id: tf.Tensor, num_bags: tf.Tensor) -> tf.Tensor:
    """``[num_bags, d]``: row ``b`` is the sum of ``table[ids[i]]`` over ``bag_of_id[i] == b``.

    ``bag_of_id`` must be sorted; an id outside the table raises ``InvalidArgumentError``.
    """
    # As a variable's own reads do: a gradient tape then watches the table.
    resource_variable_ops.variable_accessed(table)
    return _ops().dlrm_bag_sum(
        table.handle,
        tf.cast(ids, tf.int64),
        tf.cast(bag_of_id, tf.int64),
        tf.cast(num_bags, tf.int64),
        dim=int(table.shape[1]),
    )


def scatter_sub_rows(table, ids, source, positions, scale) -> tf.Operation:
    """``table[ids[i]] -= scale * source[positions[i]]`` for each ``i`` in order."""
    return _ops().dlrm_scatter_sub_rows(
        table.handle,
        tf.cast(ids, tf.int64),
        tf.cast(source, tf.float32),
        tf.cast(positions, tf.int64),
        tf.cast(scale, tf.float32),
    )


@tf.RegisterGradient("DlrmBagSum")
def _bag_sum_gradient(op: tf.Operation, grad: tf.Tensor):
    rows = tf.gather(grad, op.inputs[2])
    shape = resource_variable_ops.variable_shape(op.inputs[0])
    return [tf.IndexedSlices(rows, op.inputs[1], shape), None, None, None]
