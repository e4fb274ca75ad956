"""Categorical values -> table ids with the preprocessor's own rules, one graph call per block."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from input_pipeline import criteo


class IdLookup:
    """Maps parsed categorical values (``-1``: empty field) to the ids
    ``RawPreprocessor.parse_lines`` gives the same fields, in ``id_dtype``."""

    def __init__(
        self, preprocessor: criteo.RawPreprocessor, value_dtype: np.dtype, id_dtype: str
    ) -> None:
        self.preprocessor = preprocessor
        self.id_dtype = tf.as_dtype(id_dtype)
        self._ids = tf.function(
            self._graph,
            input_signature=[tf.TensorSpec([None, criteo.NUM_SPARSE], tf.as_dtype(value_dtype))],
        )

    def _graph(self, values: tf.Tensor) -> tf.Tensor:
        values = tf.cast(values, tf.int64)
        # An empty field's value is never looked up: it gets the missing id.
        ids = self.preprocessor.ids_from_values(values, values < 0)
        return tf.cast(ids, self.id_dtype)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """Ids ``[n, 26]`` of values ``[n, 26]``."""
        return self._ids(values).numpy()
