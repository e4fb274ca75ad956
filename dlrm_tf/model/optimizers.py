"""Optimizers that update embedding tables sparsely: SGD, Adagrad and (lazy) Adam.

Keras 3's stock Adagrad and Adam apply a ``tf.IndexedSlices`` gradient to the
whole variable and its slots (a step on a 10^7-row table costs as much as
updating every row), and they do not sum the repeated ids of a batch before
their non-linear update. The optimizers here:

* for an ``IndexedSlices`` gradient (an embedding table's), sum the values of
  repeated ids first (``tf.unique`` + ``tf.math.unsorted_segment_sum``), then
  gather only those rows of the slots (``sparse_read``, a ``ResourceGather``)
  and write the variable and its slots back with scatter ops, so no step reads
  or writes a whole table;
* for a dense gradient (the MLPs' weights), apply the ordinary dense update of
  the same algorithm.

The semantics follow PyTorch, which the reference DLRM uses:

* ``sgd``: ``w -= lr * g`` (``torch.optim.SGD`` without momentum).
* ``adagrad``: ``torch.optim.Adagrad`` with its defaults: accumulator starts
  at 0, ``acc += g^2; w -= lr * g / (sqrt(acc) + eps)``, ``eps = 1e-10`` outside
  the square root. Sparse rows: the same on the touched rows only (as torch does
  for a sparse gradient).
* ``adam``: lazy Adam. Tables follow ``torch.optim.SparseAdam``: the moments of
  the touched rows only are updated, with the bias correction of the global
  step ``t``: ``w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``.
  Dense variables follow ``torch.optim.Adam``:
  ``w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

All three work in ``model.fit`` (also under ``tf.distribute.MirroredStrategy``,
where the all-reduced table gradient stays an ``IndexedSlices``), take a float
or a ``keras.optimizers.schedules.LearningRateSchedule``, and are registered for
``keras.saving`` so a compiled model saves and reloads with its slots.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from dlrm_tf.config import OPTIMIZERS
from dlrm_tf.kernels import embedding_rows
from dlrm_tf.model import packed_gradients
from dlrm_tf.model.layers import PACKAGE, replica_local_variable
from dlrm_tf.model.placed_variables import (
    held_elsewhere,
    is_exchanged,
    on_one_device,
    placed_device,
)

LearningRate = float | keras.optimizers.schedules.LearningRateSchedule


def _tf_variable(variable):
    """The ``tf.Variable`` (or distributed variable) behind a Keras variable."""
    if isinstance(variable, keras.Variable):
        return variable.value
    return variable


def deduplicate(gradient: tf.IndexedSlices) -> tuple[tf.Tensor, tf.Tensor]:
    """Sums the rows of an ``IndexedSlices`` gradient that share an index.

    Args:
      gradient: a gradient whose ``indices`` may repeat (repeated ids of a batch,
        or slices concatenated by a cross-replica all-reduce).

    Returns:
      ``(ids, values)``: the distinct indices and, for each, the sum of its rows.
    """
    ids, position = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(ids)[0])
    return ids, values


@tf.function(jit_compile=True, autograph=False)
def _compiled_scatter_sub(variable, ids, source, positions, scale) -> None:
    variable.scatter_sub(tf.IndexedSlices(scale * tf.gather(source, positions), ids))


def padded_length(n: tf.Tensor) -> tf.Tensor:
    """``n`` rounded up to a multiple of 1/8 of its power of two (at least 64).

    Each length is a shape XLA compiles once; rounding keeps the number of
    compiled shapes small (8 per doubling) at a cost of at most 1/8 more rows.
    """
    n = tf.maximum(tf.cast(n, tf.int64), 64)
    one = tf.constant(1, tf.int64)
    octave = tf.cast(tf.math.floor(tf.math.log(tf.cast(n, tf.float64)) / math.log(2.0)), tf.int64)
    # The float logarithm can land on either side of an exact power of two.
    octave += tf.cast(tf.bitwise.left_shift(one, octave + 1) <= n, tf.int64)
    octave -= tf.cast(tf.bitwise.left_shift(one, octave) > n, tf.int64)
    step = tf.bitwise.left_shift(one, octave - 3)
    return (n + step - 1) // step * step


def gathered_from(rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor] | None:
    """``(source, positions)`` when this graph computes ``rows`` as ``source[positions]``.

    An embedding bag's gradient rows are its output gradient gathered by bag
    (``source`` is ``[batch, d]``, far smaller than the rows): the update can
    read them from there instead of from a materialised copy. ``None`` in
    eager mode or for rows made any other way.
    """
    op = getattr(rows, "op", None)  # an eager tensor has none
    if op is None:
        return None
    if op.type == "Reshape" and _same_rows(op.inputs[0], rows):
        op = op.inputs[0].op
    if op.type != "GatherV2":
        return None
    axis = tf.get_static_value(op.inputs[2])
    if op.get_attr("batch_dims") != 0 or axis is None or int(axis) != 0:
        return None
    source, positions = op.inputs[0], op.inputs[1]
    if source.shape.rank != rows.shape.rank or positions.shape.rank != 1:
        return None
    return source, positions


def _same_rows(a: tf.Tensor, b: tf.Tensor) -> bool:
    """Whether ``a`` and ``b`` have the same rank and the same known row shape (a reshape
    between them only renames the first dimension)."""
    tail_a, tail_b = a.shape[1:], b.shape[1:]
    return a.shape.rank == b.shape.rank and tail_a.is_fully_defined() and tail_a == tail_b


def scatter_sub_rows(variable, ids: tf.Tensor, rows: tf.Tensor, scale: tf.Tensor) -> None:
    """``variable[ids] -= scale * rows``, the rows of repeated ids each subtracted.

    On a CPU where the fused kernel is built (``dlrm_tf.kernels``), by that
    kernel, reading the rows from the tensor they were gathered from. Else
    through an XLA-compiled gather-multiply-scatter: TensorFlow's own
    ``ResourceScatterSub`` kernel updates a row several times slower than XLA's
    on CPU. XLA compiles one program per shape, so the ids are padded to
    ``padded_length`` with id -1, whose updates XLA's scatter skips (its
    out-of-range rule). The rows are read from the tensor they were gathered
    from when there is one (``gathered_from``: only the index vector is
    padded), else padded with zero rows.
    """
    variable = replica_local_variable(variable)
    gathered = gathered_from(rows)
    if embedding_rows.usable(variable) and rows.dtype == tf.float32:
        # The fused CPU kernel: no padding, rows updated on every thread.
        source, positions = gathered or (rows, tf.range(tf.shape(ids, out_type=tf.int64)[0]))
        embedding_rows.scatter_sub_rows(variable, ids, source, positions, scale)
        return
    n = tf.shape(ids, out_type=tf.int64)[0]
    pad = padded_length(n) - n
    if gathered is None:
        source = tf.pad(rows, [[0, pad]] + [[0, 0]] * (rows.shape.rank - 1))
        positions = tf.range(n + pad)
    else:
        source, positions = gathered
        positions = tf.pad(tf.cast(positions, tf.int64), [[0, pad]])
    ids = tf.pad(tf.cast(ids, tf.int64), [[0, pad]], constant_values=-1)
    _compiled_scatter_sub(variable, ids, source, positions, scale)


class _SparseAwareOptimizer(keras.optimizers.Optimizer):
    """Dispatches each variable's update to a dense or a sparse (row-wise) rule.

    Under a multi-device strategy, a table placed on one device
    (``placed_variables``) keeps its slots there too; its gradient is not
    all-reduced to every replica but summed onto its device, where it is applied.
    A table spread over workers (exchanged) arrives with its gradient already
    summed over the replicas, and is updated where it lives.
    """

    def add_variable_from_reference(self, reference_variable, name=None, initializer="zeros"):
        """A slot shaped like ``reference_variable``, on its device when it is placed."""
        device = placed_device(reference_variable)
        if device is None:
            return super().add_variable_from_reference(reference_variable, name, initializer)
        # Keras's TensorFlow optimizer colocates slots through the strategy, which
        # accepts only the strategy's own (mirrored) variables: skip that layer.
        backend = next(
            c for c in type(self).__mro__ if c.__module__.endswith("tensorflow.optimizer")
        )
        with on_one_device(device, exchanged=is_exchanged(reference_variable)):
            return super(backend, self).add_variable_from_reference(
                reference_variable, name, initializer
            )

    def _all_reduce_sum_gradients(self, grads_and_vars):
        """Sums the replicas' gradients, the tables' sparse ones in one collective
        (``packed_gradients``) rather than three per table."""
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1 or not packed_gradients.enabled():
            return super()._all_reduce_sum_gradients(grads_and_vars)
        return packed_gradients.all_reduce_sum(context, grads_and_vars)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        placed, shared = [], []
        for gradient, variable in zip(grads, trainable_variables, strict=True):
            variable = _tf_variable(variable)
            is_placed = placed_device(variable) is not None
            (placed if is_placed else shared).append((gradient, variable))
        if not placed:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        shared = self._all_reduce_sum_gradients(shared)
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_tf_update_step,
            self._distribution_strategy,
            shared + placed,
            learning_rate,
        )

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        shared = []
        for gradient, variable in grads_and_vars:
            device = placed_device(variable)
            if device is None:
                shared.append((gradient, variable))
                continue
            if held_elsewhere(variable):  # an empty stand-in for another worker's table
                continue
            if is_exchanged(variable):
                # Spread over workers: this worker's gradient already sums every replica's.
                total = distribution.experimental_local_results(gradient)[0]
            else:
                # The replicas' gradients (IndexedSlices: their rows concatenated), summed there.
                total = distribution.extended.reduce_to(
                    tf.distribute.ReduceOp.SUM, gradient, destinations=device
                )
            rate = learning_rate
            if isinstance(rate, tf.distribute.DistributedValues):  # the same on every replica
                rate = distribution.experimental_local_results(rate)[0]
            with tf.device(device):
                self.update_step(total, variable, rate)
        super()._distributed_tf_update_step(distribution, shared, learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        """Applies one step to ``variable``; row-wise when ``gradient`` is ``IndexedSlices``."""
        variable = _tf_variable(variable)
        lr = tf.cast(learning_rate, variable.dtype)
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.IndexedSlices(
                tf.cast(gradient.values, variable.dtype), gradient.indices, gradient.dense_shape
            )
            self._sparse_update(gradient, variable, lr)
        else:
            self._dense_update(tf.cast(gradient, variable.dtype), variable, lr)

    def _step(self, dtype) -> tf.Tensor:
        """The 1-based number of the step being applied."""
        return tf.cast(self.iterations + 1, dtype)

    def _slot(self, slots: list, variable) -> tf.Variable:
        # Under a strategy the slot is a distributed variable, whose reads
        # (``sparse_read``) are not delegated to a component: take this replica's.
        return replica_local_variable(_tf_variable(slots[self._get_variable_index(variable)]))

    def _dense_update(self, gradient, variable, lr) -> None:
        raise NotImplementedError

    def _sparse_update(self, gradient: tf.IndexedSlices, variable, lr) -> None:
        raise NotImplementedError


@keras.saving.register_keras_serializable(package=PACKAGE)
class SparseSGD(_SparseAwareOptimizer):
    """Plain SGD, ``w -= lr * g``; an ``IndexedSlices`` gradient is applied with one scatter.

    The update is linear in ``g``, so repeated ids need no summing first: the
    scatter adds each of their rows.
    """

    def __init__(self, learning_rate: LearningRate = 0.01, name: str = "sparse_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)

    def _dense_update(self, gradient, variable, lr) -> None:
        variable.assign_sub(lr * gradient)

    def _sparse_update(self, gradient, variable, lr) -> None:
        scatter_sub_rows(variable, gradient.indices, gradient.values, lr)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SparseAdagrad(_SparseAwareOptimizer):
    """Adagrad as ``torch.optim.Adagrad``: ``acc += g^2; w -= lr * g / (sqrt(acc) + eps)``.

    For an ``IndexedSlices`` gradient only the touched rows of the variable and
    of its accumulator are read and written, after summing repeated ids.
    """

    def __init__(
        self,
        learning_rate: LearningRate = 0.01,
        initial_accumulator_value: float = 0.0,
        epsilon: float = 1e-10,
        name: str = "sparse_adagrad",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if initial_accumulator_value < 0.0:
            raise ValueError(
                f"initial_accumulator_value must be >= 0, got {initial_accumulator_value}"
            )
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.epsilon = float(epsilon)

    def build(self, var_list) -> None:
        """Creates one accumulator per variable."""
        if self.built:
            return
        super().build(var_list)
        self._accumulators = self.add_optimizer_variables(
            var_list,
            "accumulator",
            initializer=keras.initializers.Constant(self.initial_accumulator_value),
        )

    def _dense_update(self, gradient, variable, lr) -> None:
        accumulator = self._slot(self._accumulators, variable)
        accumulator.assign_add(tf.square(gradient))
        variable.assign_sub(lr * gradient / (tf.sqrt(accumulator.read_value()) + self.epsilon))

    def _sparse_update(self, gradient, variable, lr) -> None:
        accumulator = self._slot(self._accumulators, variable)
        ids, grad = deduplicate(gradient)
        acc_rows = accumulator.sparse_read(ids) + tf.square(grad)
        accumulator.scatter_update(tf.IndexedSlices(acc_rows, ids))
        scatter_sub_rows(variable, ids, grad / (tf.sqrt(acc_rows) + self.epsilon), lr)

    def get_config(self) -> dict:
        """The optimizer's configuration (``keras.saving`` format)."""
        config = super().get_config()
        config.update(
            initial_accumulator_value=self.initial_accumulator_value, epsilon=self.epsilon
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SparseAdam(_SparseAwareOptimizer):
    """Lazy Adam: ``torch.optim.SparseAdam`` for ``IndexedSlices``, ``torch.optim.Adam`` else.

    For a table only the moments of the rows in the batch move (after summing
    repeated ids); untouched rows keep their moments and weights. The bias
    correction uses the optimizer's global step.
    """

    def __init__(
        self,
        learning_rate: LearningRate = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        name: str = "sparse_adam",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        for label, beta in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{label} must be in [0, 1), got {beta}")
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)

    def build(self, var_list) -> None:
        """Creates each variable's moments: one slot holding ``[m, v]`` side by side.

        A table's row of ``m`` and of ``v`` sit next to each other, so a sparse
        update gathers and scatters one array instead of two: fewer random
        memory accesses per touched row on a large table.
        """
        if self.built:
            return
        super().build(var_list)
        self._moments = []
        for variable in var_list:
            shape = tuple(variable.shape)
            slot_shape = (*shape[:-1], 2 * shape[-1]) if shape else (2,)
            placed = placed_device(variable)
            colocated = (
                self._distribution_strategy.extended.colocate_vars_with(_tf_variable(variable))
                if placed is None
                else on_one_device(placed, exchanged=is_exchanged(variable))
            )
            with colocated:
                self._moments.append(
                    self.add_variable(
                        shape=slot_shape,
                        initializer="zeros",
                        dtype=variable.dtype,
                        name=f"{variable.path.replace('/', '_')}_moments",
                    )
                )

    def _bias_corrections(self, dtype) -> tuple[tf.Tensor, tf.Tensor]:
        step = self._step(dtype)
        return 1.0 - tf.pow(tf.cast(self.beta_1, dtype), step), 1.0 - tf.pow(
            tf.cast(self.beta_2, dtype), step
        )

    def _moved(self, moments, gradient):
        """``(m, v)`` after one step from the concatenated ``moments`` and ``gradient``."""
        m, v = tf.split(moments, 2, axis=-1)
        m = self.beta_1 * m + (1.0 - self.beta_1) * gradient
        v = self.beta_2 * v + (1.0 - self.beta_2) * tf.square(gradient)
        return m, v

    def _dense_update(self, gradient, variable, lr) -> None:
        moments = self._slot(self._moments, variable)
        correction_1, correction_2 = self._bias_corrections(variable.dtype)
        value = moments.read_value()
        if variable.shape.rank == 0:
            value = tf.reshape(value, [1, 2])
            gradient = tf.reshape(gradient, [1, 1])
        m, v = self._moved(value, gradient)
        moments.assign(tf.reshape(tf.concat([m, v], axis=-1), moments.shape))
        denominator = tf.sqrt(v) / tf.sqrt(correction_2) + self.epsilon
        variable.assign_sub(tf.reshape(lr / correction_1 * m / denominator, variable.shape))

    def _sparse_update(self, gradient, variable, lr) -> None:
        moments = self._slot(self._moments, variable)
        correction_1, correction_2 = self._bias_corrections(variable.dtype)
        ids, grad = deduplicate(gradient)
        m_rows, v_rows = self._moved(moments.sparse_read(ids), grad)
        moments.scatter_update(tf.IndexedSlices(tf.concat([m_rows, v_rows], axis=-1), ids))
        step_size = lr * tf.sqrt(correction_2) / correction_1
        scatter_sub_rows(variable, ids, m_rows / (tf.sqrt(v_rows) + self.epsilon), step_size)

    def get_config(self) -> dict:
        """The optimizer's configuration (``keras.saving`` format)."""
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return config


_CLASSES = {"sgd": SparseSGD, "adagrad": SparseAdagrad, "adam": SparseAdam}


def make_optimizer(name: str, learning_rate: LearningRate, **kwargs) -> keras.optimizers.Optimizer:
    """Creates the optimizer called ``name`` (``sgd``, ``adagrad`` or ``adam``).

    Args:
      name: one of ``config.OPTIMIZERS``.
      learning_rate: a float or a ``keras.optimizers.schedules.LearningRateSchedule``
        (evaluated at the optimizer's step count).
      **kwargs: passed to the optimizer, e.g. ``epsilon``, ``beta_1``, ``clipnorm``.

    Returns:
      A Keras optimizer whose updates of ``IndexedSlices`` gradients touch only
      the rows in the batch.

    Raises:
      ValueError: if ``name`` is unknown.
    """
    try:
        cls = _CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}: expected one of {OPTIMIZERS}") from None
    return cls(learning_rate=learning_rate, **kwargs)
