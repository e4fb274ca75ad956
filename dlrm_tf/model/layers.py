"""Keras 3 layers of DLRM: embedding bags, MLPs and the feature interactions.

Every layer implements ``get_config`` and is registered for ``keras.saving``.
The layers know nothing of flags, files or training loops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from dlrm_tf.config import dot_pairs
from dlrm_tf.kernels import embedding_rows, interaction
from dlrm_tf.model.placed_variables import WorkerTable, on_one_device

PACKAGE = "dlrm_tf"

# Id used to pad multi-hot bags (and to mark an empty one-hot bag).
PAD_ID = -1


class ReferenceLinearInit(keras.initializers.Initializer):
    """Weight init of the reference: ``N(0, sqrt(2 / (fan_in + fan_out)))``, not truncated."""

    def __call__(self, shape, dtype=None):
        fan_in, fan_out = int(shape[0]), int(shape[1])
        std = math.sqrt(2.0 / (fan_in + fan_out))
        return keras.random.normal(shape, stddev=std, dtype=dtype)

    def get_config(self) -> dict:
        return {}


class ReferenceBiasInit(keras.initializers.Initializer):
    """Bias init of the reference: ``N(0, sqrt(1 / fan_out))``."""

    def __call__(self, shape, dtype=None):
        std = math.sqrt(1.0 / int(shape[0]))
        return keras.random.normal(shape, stddev=std, dtype=dtype)

    def get_config(self) -> dict:
        return {}


class ReferenceEmbeddingInit(keras.initializers.Initializer):
    """Embedding init of the reference: ``U(-sqrt(1/n), sqrt(1/n))`` for a table of n rows."""

    def __call__(self, shape, dtype=None):
        bound = math.sqrt(1.0 / max(int(shape[0]), 1))  # an empty table (WorkerTable) too
        return keras.random.uniform(shape, minval=-bound, maxval=bound, dtype=dtype)

    def get_config(self) -> dict:
        return {}


for _cls in (ReferenceLinearInit, ReferenceBiasInit, ReferenceEmbeddingInit):
    keras.saving.register_keras_serializable(package=PACKAGE)(_cls)


def replica_local_variable(variable):
    """The component of a distributed variable that belongs to the current replica.

    Under a ``tf.distribute`` strategy a table is a ``MirroredVariable``;
    a lookup op given such a variable converts it to a dense tensor (a read
    of the whole table every step) where a plain resource variable is gathered
    row by row. In a replica context (or inside ``strategy.extended.update``) the
    distributed variable's ``handle`` is that of the current replica's own
    component, so the component with that handle is returned: a plain
    ``tf.Variable`` on this replica's device. Anything else (a plain variable,
    a cross-replica context, packed variables) comes back unchanged.
    """
    if not isinstance(variable, tf.distribute.DistributedValues):
        return variable
    try:
        handle = variable.handle
    except ValueError:  # cross-replica context: no current replica
        return variable
    for component in variable.distribute_strategy.experimental_local_results(variable):
        if component.handle is handle:
            return component
    return variable


@keras.saving.register_keras_serializable(package=PACKAGE)
class EmbeddingBags(keras.layers.Layer):
    """One embedding table per sparse feature, each bag reduced by a sum.

    Input: int ids ``[B, T]`` (one id per feature, "one-hot") or ``[B, T, H]``
    (multi-hot bags padded with ``-1``). ``-1`` marks an absent id, so a bag of
    only ``-1`` is empty and gives a zero vector. Any other id outside
    ``[0, table_size)`` raises ``InvalidArgumentError``: ids never turn into
    silent zeros.

    Output: ``[B, T, d]``, the sum of each bag's rows.

    The semantics are those of ``tf.nn.embedding_lookup_sparse`` with the sum
    combiner; the lookup itself is a gather of the batch's rows from the table
    variable (under a ``tf.distribute`` strategy, the current replica's own
    copy) and a segment sum per bag, whose gradient is an ``IndexedSlices`` with
    one row per id. (``embedding_lookup_sparse`` first de-duplicates the ids and
    gathers twice: on large multi-hot bags that costs more than it saves.)
    """

    def __init__(
        self,
        table_sizes: Sequence[int],
        embedding_dim: int,
        validate_ids: bool = True,
        table_devices: Sequence[str | WorkerTable | None] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.table_sizes = tuple(int(n) for n in table_sizes)
        self.embedding_dim = int(embedding_dim)
        self.validate_ids = bool(validate_ids)
        # Where each table lives under a multi-device strategy (None: on every device;
        # a device: there alone; a WorkerTable: on one worker of several, see
        # ``_exchanged_bags``). A property of the run, not of the model: not in the config.
        self.table_devices = tuple(table_devices or (None,) * len(self.table_sizes))
        if len(self.table_devices) != len(self.table_sizes):
            raise ValueError(
                f"{self.name}: {len(self.table_devices)} table devices for "
                f"{len(self.table_sizes)} tables"
            )
        self.tables: list[keras.Variable] = []

    def build(self, input_shape) -> None:
        if len(input_shape) not in (2, 3):
            raise ValueError(
                f"{self.name}: ids must be [batch, {len(self.table_sizes)}] or "
                f"[batch, {len(self.table_sizes)}, bag], got shape {tuple(input_shape)}"
            )
        if input_shape[1] is not None and input_shape[1] != len(self.table_sizes):
            raise ValueError(
                f"{self.name}: ids have {input_shape[1]} features but the layer has "
                f"{len(self.table_sizes)} tables"
            )
        self.tables = []
        for t, rows in enumerate(self.table_sizes):
            home = self.table_devices[t]
            if isinstance(home, WorkerTable):
                # Another worker holds the rows; an empty variable keeps the layer's
                # weights (and the random draws of their initializers) the same everywhere.
                place, rows = on_one_device(home.device, exchanged=True), rows * home.held
            else:
                place = on_one_device(home)
            with place:
                table = self.add_weight(
                    name=f"embedding_table_{t}",
                    shape=(rows, self.embedding_dim),
                    initializer=ReferenceEmbeddingInit(),
                    dtype="float32",
                    trainable=True,
                    # Under a mixed-precision policy, autocast would cast the whole table
                    # each step; the lookup reads float32 rows and casts only the result.
                    autocast=False,
                )
            self.tables.append(table)

    def call(self, ids, training=None):
        # Training steps pool with the fused CPU kernel where it is built
        # (``dlrm_tf.kernels``); inference, and so every export, keeps TensorFlow's ops.
        fused = bool(training)
        ids = tf.convert_to_tensor(ids)
        if ids.dtype != tf.int64:
            ids = tf.cast(ids, tf.int64)
        if ids.shape.rank == 2:
            ids = ids[:, :, tf.newaxis]
        num_tables = len(self.table_sizes)
        batch = tf.shape(ids, out_type=tf.int64)[0]

        # One pass over all features: coordinates (t, b, h) of every present id,
        # sorted by feature then example, then split per feature.
        by_table = tf.transpose(ids, [1, 0, 2])
        if self.validate_ids:
            by_table = self._check_ids(by_table)
        tables = [replica_local_variable(table.value) for table in self.tables]
        if fused and self._pooled_together(tables):
            return tf.cast(embedding_rows.bag_sums(tables, by_table), self.compute_dtype)
        coords = tf.where(by_table >= 0)
        values = tf.gather_nd(by_table, coords)
        part = tf.cast(coords[:, 0], tf.int32)
        ids_per_table = tf.dynamic_partition(values, part, num_tables)
        bags_per_table = tf.dynamic_partition(coords[:, 1], part, num_tables)

        exchanged = self._exchanged_tables()
        bags = {
            t: self._padded_bag_sums(t, ids_per_table[t], bags_per_table[t], batch, fused)
            for t in range(num_tables)
            if t not in exchanged
        }
        if exchanged:
            theirs = self._exchanged_bags(exchanged, values, part, coords[:, 1], batch, fused)
            bags.update(zip(exchanged, theirs, strict=True))
        out = tf.stack([bags[t] for t in range(num_tables)], axis=1)
        return tf.cast(out, self.compute_dtype)

    def _pooled_together(self, tables) -> bool:
        """Whether one fused op can pool every table: all on this replica's device
        (none placed apart or exchanged) and usable by the kernel."""
        placed = any(home is not None for home in self.table_devices)
        return not placed and embedding_rows.usable_together(tables)

    def _padded_bag_sums(
        self, t: int, ids: tf.Tensor, bag_of_id: tf.Tensor, batch, fused: bool
    ) -> tf.Tensor:
        """``_bag_sums`` with a row for each of the ``batch`` bags (through the fused
        kernel when ``fused`` and the table can use it)."""
        table = replica_local_variable(self.tables[t].value)
        if fused and embedding_rows.usable(table):
            return embedding_rows.bag_sum(table, ids, bag_of_id, batch)
        summed = self._bag_sums(t, ids, bag_of_id)
        # The segment sum drops trailing examples whose bags are empty: pad them back.
        missing = tf.cast(batch, tf.int32) - tf.shape(summed)[0]
        return tf.pad(summed, [[0, missing], [0, 0]])

    def _exchanged_tables(self) -> list[int]:
        """The tables spread over workers, when this call runs in a replica of several
        (Keras's symbolic build and calls outside the strategy only trace shapes)."""
        spread = [t for t, home in enumerate(self.table_devices) if isinstance(home, WorkerTable)]
        context = tf.distribute.get_replica_context()
        if not spread or context is None or context.num_replicas_in_sync == 1:
            return []
        return spread

    def _exchanged_bags(self, tables, values, part, bag_of_id, batch, fused) -> list[tf.Tensor]:
        """This replica's bag sums of ``tables``, which other workers may hold.

        Every replica sends the ids of these tables to all (an all-gather, its bags
        renumbered into the global batch); the worker holding a table sums the bags
        of the whole global batch, the others contribute zeros; an all-reduce then
        hands each replica the sums, of which it keeps its own rows. The all-reduce's
        gradient is itself an all-reduce, so the holder's table receives the
        gradient of every replica's bags, already summed.
        """
        context = tf.distribute.get_replica_context()
        sizes = context.all_gather(tf.reshape(batch, [1]), axis=0)
        offset = tf.reduce_sum(sizes[: context.replica_id_in_sync_group])
        total = tf.reduce_sum(sizes)
        wanted = tf.reduce_any(part[:, tf.newaxis] == tf.constant(tables, tf.int32), axis=1)
        columns = (values, tf.cast(part, tf.int64), bag_of_id + offset)
        mine = tf.stack([tf.boolean_mask(x, wanted) for x in columns], axis=1)
        every = context.all_gather(mine, axis=0)  # replica by replica: still sorted by bag
        every_part = tf.cast(every[:, 1], tf.int32)
        ids = tf.dynamic_partition(every[:, 0], every_part, len(self.table_sizes))
        bags = tf.dynamic_partition(every[:, 2], every_part, len(self.table_sizes))
        sums = []
        for t in tables:
            # A worker without the rows gathers none: zeros, still tied to its empty table
            # so that every worker takes part in the all-reduce of the gradient.
            keep = None if self.table_devices[t].held else 0
            sums.append(self._padded_bag_sums(t, ids[t][:keep], bags[t][:keep], total, fused))
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stack(sums, axis=0))
        return tf.unstack(summed[:, offset : offset + batch], axis=0)

    def _bag_sums(self, t: int, ids: tf.Tensor, bag_of_id: tf.Tensor) -> tf.Tensor:
        """Sum of the rows of table ``t`` per bag; rows past the last non-empty bag absent.

        ``ids`` are the present ids sorted by bag, ``bag_of_id`` the bag of each.
        The gather reads only these rows of the variable (``ResourceGather``), and
        its gradient is an ``IndexedSlices`` with one row per id: no whole-table
        read, no de-duplication pass in the step (SGD's scatter adds repeated ids;
        Adagrad and Adam sum them before their update).
        """
        table = replica_local_variable(self.tables[t].value)
        return tf.math.segment_sum(tf.gather(table, ids), bag_of_id)

    def _check_ids(self, by_table: tf.Tensor) -> tf.Tensor:
        sizes = tf.constant(self.table_sizes, dtype=tf.int64)[:, tf.newaxis, tf.newaxis]
        bad = tf.logical_or(by_table < PAD_ID, by_table >= sizes)
        ok = tf.logical_not(tf.reduce_any(bad))

        def fail():
            # Only a failing batch pays for locating and formatting the bad id.
            first_bad = tf.where(bad)[:1]
            message = tf.strings.format(
                "{}: sparse id out of range; first bad (feature, example, slot) = {}, id = {}; "
                "table sizes = {}",
                (
                    self.name,
                    first_bad,
                    tf.gather_nd(by_table, first_bad),
                    tf.constant(self.table_sizes, tf.int64),
                ),
                summarize=-1,
            )
            with tf.control_dependencies([tf.debugging.Assert(ok, [message], summarize=1)]):
                return tf.identity(ok)

        checked = tf.cond(ok, lambda: ok, fail)
        with tf.control_dependencies([checked]):
            return tf.identity(by_table)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self.table_sizes), self.embedding_dim)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            table_sizes=list(self.table_sizes),
            embedding_dim=self.embedding_dim,
            validate_ids=self.validate_ids,
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MLP(keras.layers.Layer):
    """A stack of ``Linear -> activation`` layers with the reference's initialisation.

    Every layer uses ReLU except the last, which uses ``final_activation``
    (``"relu"`` for the bottom MLP, ``"sigmoid"`` for the top MLP).
    """

    def __init__(self, widths: Sequence[int], final_activation: str = "relu", **kwargs) -> None:
        super().__init__(**kwargs)
        self.widths = tuple(int(w) for w in widths)
        self.final_activation = final_activation
        if not self.widths:
            raise ValueError(f"{self.name}: an MLP needs at least one layer")
        self.dense_layers = [
            keras.layers.Dense(
                width,
                activation="relu" if i < len(self.widths) - 1 else final_activation,
                kernel_initializer=ReferenceLinearInit(),
                bias_initializer=ReferenceBiasInit(),
                name=f"linear_{i}",
                dtype=self.dtype_policy,
            )
            for i, width in enumerate(self.widths)
        ]

    def build(self, input_shape) -> None:
        shape = tuple(input_shape)
        for layer in self.dense_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def call(self, x):
        for layer in self.dense_layers:
            x = layer(x)
        return x

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], self.widths[-1])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(widths=list(self.widths), final_activation=self.final_activation)
        return config


def dot_interaction_indices(num_features: int, self_interaction: bool) -> np.ndarray:
    """Flat indices into a ``[F, F]`` matrix of the kept pairs, in the reference's order.

    Lower triangle in row-major order: ``(1,0), (2,0), (2,1), (3,0), ...``; with
    ``self_interaction`` the diagonal is kept too: ``(0,0), (1,0), (1,1), ...``.
    """
    offset = 1 if self_interaction else 0
    return np.array(
        [i * num_features + j for i in range(num_features) for j in range(i + offset)],
        dtype=np.int32,
    )


@keras.saving.register_keras_serializable(package=PACKAGE)
class DotInteraction(keras.layers.Layer):
    """Pairwise dot products of the bottom-MLP output and the embedding vectors.

    Inputs: ``x`` ``[B, d]`` and ``embeddings`` ``[B, T, d]``. Output:
    ``concat(x, Zflat)`` of width ``d + F(F-1)/2`` (``d + F(F+1)/2`` with
    ``self_interaction``), ``F = T + 1``, pairs in the reference's order.
    """

    def __init__(self, self_interaction: bool = False, fused_kernel: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.self_interaction = bool(self_interaction)
        # Training steps may use the fused CPU kernel (``dlrm_tf.kernels.interaction``);
        # False where the layer runs inside an XLA cluster. A property of the run,
        # not of the model: not in the config.
        self.fused_kernel = bool(fused_kernel)

    def call(self, inputs, training=None):
        x, embeddings = inputs
        embeddings = tf.cast(embeddings, x.dtype)
        if training and self.fused_kernel and interaction.usable(x):
            return interaction.dot_interaction(x, embeddings, self.self_interaction)
        features = tf.concat([x[:, tf.newaxis, :], embeddings], axis=1)
        num_features = features.shape[1]
        gram = tf.matmul(features, features, transpose_b=True)
        flat = tf.reshape(gram, [-1, num_features * num_features])
        kept = dot_interaction_indices(num_features, self.self_interaction)
        pairs = tf.gather(flat, kept, axis=1)
        return tf.concat([x, pairs], axis=1)

    def compute_output_shape(self, input_shape):
        x_shape, emb_shape = input_shape
        return (x_shape[0], x_shape[1] + dot_pairs(emb_shape[1] + 1, self.self_interaction))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(self_interaction=self.self_interaction)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class CatInteraction(keras.layers.Layer):
    """Concatenation ``concat(x, e_1, ..., e_T)``."""

    def call(self, inputs):
        x, embeddings = inputs
        width = embeddings.shape[1] * embeddings.shape[2]
        flat = tf.reshape(tf.cast(embeddings, x.dtype), [-1, width])
        return tf.concat([x, flat], axis=1)

    def compute_output_shape(self, input_shape):
        x_shape, emb_shape = input_shape
        return (x_shape[0], x_shape[1] + emb_shape[1] * emb_shape[2])
