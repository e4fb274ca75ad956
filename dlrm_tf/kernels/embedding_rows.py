"""Fused embedding-table kernels: a pooled lookup and a row update that read each row once.

``bag_sum`` is ``tf.math.segment_sum(tf.gather(table, ids), bag_of_id)`` padded
to ``num_bags`` rows, without materialising the ``[n, d]`` gathered rows; its
gradient is the same ``IndexedSlices`` (one row per id, gathered from the output
gradient). ``scatter_sub_rows`` is ``table[ids] -= scale * source[positions]``,
repeated ids applied one after another, spread over the CPU threads by id.
``bag_sums`` pools every table of a layer in one op, straight from the padded
ids, into the layer's ``[B, T, d]`` output (``DLRM_TF_POOLED_LOOKUP=0``: one
``bag_sum`` per table instead).

Both run on the CPU only, on float32 tables; ``usable(table)`` says whether a
table may use them. A SavedModel must not contain them (TF Serving has no such
ops): the model calls them only in training steps.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops

from dlrm_tf.kernels import build
from dlrm_tf.switches import switched_on

_NAME = "embedding_rows"
POOLED_ENV = "DLRM_TF_POOLED_LOOKUP"


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


def pooled() -> bool:
    """Whether training pools all of a layer's tables in one ``bag_sums`` (the kernels
    are available and ``POOLED_ENV`` does not turn it off)."""
    return available() and switched_on(POOLED_ENV)


def usable_together(tables) -> bool:
    """Whether ``tables`` can be pooled by one ``bag_sums``: each is ``usable``,
    all have one row width and live on one device, and pooling is on (``pooled``)."""
    return (
        pooled()
        and all(usable(table) for table in tables)
        and len({int(table.shape[1]) for table in tables}) == 1
        and len({table.device for table in tables}) == 1
    )


def bag_sums(tables, by_table: tf.Tensor) -> tf.Tensor:
    """``[B, T, d]``: ``[b, t]`` is the sum of ``tables[t][by_table[t, b, h]]`` over
    the slots ``h`` whose id is not -1 (``by_table``: ``[T, B, H]`` int64).

    Any other id outside its table raises ``InvalidArgumentError``.
    """
    for table in tables:
        resource_variable_ops.variable_accessed(table)
    return _ops().dlrm_bag_sums(
        [table.handle for table in tables],
        tf.cast(by_table, tf.int64),
        dim=int(tables[0].shape[1]),
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


@tf.RegisterGradient("DlrmBagSums")
def _bag_sums_gradient(op: tf.Operation, grad: tf.Tensor):
    num_tables = op.get_attr("N")
    ids, positions = _ops().dlrm_present_ids(op.inputs[num_tables], N=num_tables)
    # Gathered rows, so that the update can read them from the output gradient
    # itself (``optimizers.gathered_from``) instead of from a copy.
    flat = tf.reshape(grad, [-1, grad.shape[-1]])
    shapes = [resource_variable_ops.variable_shape(handle) for handle in op.inputs[:num_tables]]
    slices = [
        tf.IndexedSlices(tf.gather(flat, p), i, s)
        for i, p, s in zip(ids, positions, shapes, strict=True)
    ]
    return [*slices, None]
