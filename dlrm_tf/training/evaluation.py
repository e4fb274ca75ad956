"""Test-set evaluation under any strategy: predictions gathered, metrics exact in NumPy."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dlrm_tf.model.losses import DLRMLoss
from dlrm_tf.training.metrics import binary_metrics
from dlrm_tf.training.strategy import is_multi_worker


class Evaluator:
    """Runs the model over a (distributed) test dataset and computes the test metrics.

    On one machine the test batches are split across the replicas and the
    predictions gathered with ``strategy.gather``. Under multi-worker training
    each worker evaluates the whole test split on its own (``DataSource`` hands
    it an undistributed dataset): workers may hold unequal shares of the test
    files, and a collective step that one worker no longer reaches would hang
    the others. Either way every process computes the metrics over the whole
    test split. With tables spread over the workers (``exchanged``) the workers still
    each evaluate the whole split, in step: every test batch's lookups are a
    collective step (``EmbeddingBags``).
    """

    def __init__(
        self,
        model: tf.keras.Model,
        strategy: tf.distribute.Strategy,
        loss: DLRMLoss,
        exchanged: bool = False,
    ):
        self.model = model
        self.strategy = strategy
        self.loss = loss

        def replica_step(features, labels):
            return self.model(features, training=False), labels

        if exchanged:

            @tf.function(reduce_retracing=True)
            def predict(features, labels):
                outputs = self.strategy.run(replica_step, args=(features, labels))
                return tf.nest.map_structure(
                    lambda v: self.strategy.experimental_local_results(v)[0], outputs
                )

        elif is_multi_worker(strategy):
            predict = tf.function(replica_step, reduce_retracing=True)
        else:

            @tf.function(reduce_retracing=True)
            def predict(features, labels):
                probs, labs = self.strategy.run(replica_step, args=(features, labels))
                return self.strategy.gather(probs, axis=0), self.strategy.gather(labs, axis=0)

        self._predict = predict

    def predictions(self, dataset) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, labels) over the whole dataset, as flat NumPy arrays."""
        probs, labels = [], []
        for features, batch_labels in dataset:
            p, y = self._predict(features, batch_labels)
            probs.append(p.numpy().reshape(-1))
            labels.append(y.numpy().reshape(-1))
        if not probs:
            raise ValueError("the test dataset is empty")
        return np.concatenate(probs), np.concatenate(labels)

    def evaluate(self, dataset) -> dict[str, float]:
        """Loss (the training loss function), exact AUC, accuracy and log loss."""
        probs, labels = self.predictions(dataset)
        metrics = binary_metrics(np.round(labels) if self.loss.round_targets else labels, probs)
        loss = self.loss(labels[:, None].astype(np.float32), probs[:, None].astype(np.float32))
        metrics["loss"] = float(loss)
        return metrics
