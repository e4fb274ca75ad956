"""Work-arounds that let Keras 3.15's ``model.fit`` run under ``MultiWorkerMirroredStrategy``.

Two defects of the TensorFlow trainer stop multi-worker training before its
first step (keras-team/keras#20585 and the scalar-log reduction):

1. Before tracing, the trainer builds the model symbolically from one batch.
   With a distributed dataset it "reduces" the per-replica batch with
   ``strategy.reduce("MEAN", batch, axis=None)``: a cross-worker all-reduce of
   the input data, which fails for integer ids and is pointless, since only the
   shapes are needed. We take the first local replica's batch instead.
2. The loss and metric logs of a step are scalars per replica; under a
   multi-worker strategy they are reduced with ``strategy.reduce("MEAN", v,
   axis=0)``, which fails on a scalar ("Invalid reduction dimension 0"). We
   reduce scalars with ``axis=None`` (the mean over replicas) and leave
   everything else to Keras.

``install_keras_workarounds`` applies both, once, and only when a
multi-worker strategy is requested (``dlrm_tf.training.strategy.make_strategy``).
"""

from __future__ import annotations

import tensorflow as tf

_installed = False


def _first_local_batch(strategy: tf.distribute.Strategy, batch):
    def first(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return tf.nest.map_structure(first, batch)


def install_keras_workarounds() -> None:
    """Patches the two defects above in Keras's TensorFlow trainer (idempotent)."""
    global _installed
    if _installed:
        return
    from keras.src.backend.tensorflow import trainer as tf_trainer

    trainer_cls = tf_trainer.TensorFlowTrainer
    original_reduce = tf_trainer.reduce_per_replica

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None or iterator is None:
            return original_symbolic_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            data_batch = _first_local_batch(self.distribute_strategy, next(it))
            break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(
            strategy
        ):

            def reduce_one(value):
                local = strategy.experimental_local_results(value)[0]
                if getattr(local, "shape", None) is not None and local.shape.rank == 0:
                    return strategy.reduce("MEAN", value, axis=None)
                return original_reduce(value, strategy, reduction)

            return tf.nest.map_structure(reduce_one, values)
        return original_reduce(values, strategy, reduction)

    original_symbolic_build = trainer_cls._maybe_symbolic_build
    trainer_cls._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    _installed = True
