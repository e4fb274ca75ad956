"""All-reduce of the tables' sparse gradients as one: a step's collectives do not grow
with the number of tables.

A ``tf.distribute`` collective all-reduce of one ``tf.IndexedSlices`` costs three
collectives (the lengths, the values, the indices) and a ``tf.cond``: with 26
tables that is 78 collectives a step, each paid again over gRPC between workers,
and 26 conditionals to trace. Here the tables' gradients of one dtype and row
width are packed into one ``IndexedSlices`` over their stacked rows (each
table's indices shifted by the rows of the tables before it), reduced once, and
split back by table; each table's rows keep their order (replica by replica),
so the sums are those of the per-table reduction, bit for bit.

``DLRM_TF_PACKED_GRADIENTS=0`` in the environment reduces each gradient on its
own instead (``bench/cpu_kernels.py --compare=packed_gradients`` measures both).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from dlrm_tf.switches import switched_on

SWITCH_ENV = "DLRM_TF_PACKED_GRADIENTS"

Pair = tuple[tf.Tensor | tf.IndexedSlices | None, tf.Variable]


def enabled() -> bool:
    """Whether the tables' gradients are reduced together (``DLRM_TF_PACKED_GRADIENTS``)."""
    return switched_on(SWITCH_ENV)


def _group_key(gradient: tf.IndexedSlices) -> tuple:
    return gradient.values.dtype, tuple(gradient.values.shape[1:])


def _sparse_groups(pairs: Sequence[Pair]) -> list[list[int]]:
    """Positions of the sparse gradients, grouped by values dtype and row shape."""
    groups: dict[tuple, list[int]] = {}
    for position, (gradient, variable) in enumerate(pairs):
        if (
            isinstance(gradient, tf.IndexedSlices)
            and gradient.values.shape[1:].is_fully_defined()
            and variable.shape[0] is not None
        ):
            groups.setdefault(_group_key(gradient), []).append(position)
    return [positions for positions in groups.values() if len(positions) > 1]


def _pack(pairs: Sequence[Pair], positions: list[int]) -> tuple[tf.IndexedSlices, list[int]]:
    """One ``IndexedSlices`` over the stacked rows of the tables at ``positions``,
    and the first stacked row of each table."""
    starts, total, values, indices = [], 0, [], []
    for position in positions:
        gradient, variable = pairs[position]
        starts.append(total)
        values.append(gradient.values)
        indices.append(tf.cast(gradient.indices, tf.int64) + total)
        total += int(variable.shape[0])
    width = pairs[positions[0]][0].values.shape[1:]
    packed = tf.IndexedSlices(
        tf.concat(values, axis=0),
        tf.concat(indices, axis=0),
        tf.constant([total, *width], tf.int64),
    )
    return packed, starts


def _unpack(
    reduced: tf.IndexedSlices, pairs: Sequence[Pair], positions: list[int], starts: list[int]
) -> list[tf.IndexedSlices]:
    """The reduced packed gradient split back into one ``IndexedSlices`` per table."""
    starts_tensor = tf.constant(starts, tf.int64)
    table = tf.searchsorted(starts_tensor, reduced.indices, side="right") - 1
    table = tf.cast(table, tf.int32)
    local = reduced.indices - tf.gather(starts_tensor, table)
    values = tf.dynamic_partition(reduced.values, table, len(positions))
    indices = tf.dynamic_partition(local, table, len(positions))
    unpacked = []
    for k, position in enumerate(positions):
        original = pairs[position][0]
        unpacked.append(
            tf.IndexedSlices(
                values[k], tf.cast(indices[k], original.indices.dtype), original.dense_shape
            )
        )
    return unpacked


def all_reduce_sum(context: tf.distribute.ReplicaContext, pairs: Sequence[Pair]) -> list[Pair]:
    """``(gradient, variable)`` pairs with every gradient summed over the replicas;
    the tables' sparse gradients reduced together (see the module docstring).
    ``None`` gradients stay ``None``."""
    pairs = list(pairs)
    groups = _sparse_groups(pairs)
    packed_positions = {position for group in groups for position in group}
    singles = [
        position
        for position, (gradient, _) in enumerate(pairs)
        if gradient is not None and position not in packed_positions
    ]
    packs = [_pack(pairs, group) for group in groups]
    to_reduce = [pairs[position][0] for position in singles] + [packed for packed, _ in packs]
    if not to_reduce:
        return pairs
    reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, to_reduce)
    gradients = [gradient for gradient, _ in pairs]
    for position, gradient in zip(singles, reduced[: len(singles)], strict=True):
        gradients[position] = gradient
    for (_, starts), group, result in zip(packs, groups, reduced[len(singles) :], strict=True):
        for position, gradient in zip(group, _unpack(result, pairs, group, starts), strict=True):
            gradients[position] = gradient
    return [(gradient, variable) for gradient, (_, variable) in zip(gradients, pairs, strict=True)]
