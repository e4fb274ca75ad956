"""Serving signatures of a DLRM model, gathered in a ``tf.Module`` for ``tf.saved_model.save``.

The module keeps the model's variables (and the raw preprocessor's lookup tables
and vocabulary assets) but not the Keras objects themselves, so the SavedModel
loads and runs with ``tf.saved_model.load`` alone, without keras or this project.

Signatures (``B`` is the batch, ``D`` the model's dense width, ``T`` its number
of tables, ``H`` the bag width):

==================== ===================================== ===========================
name                 inputs                                output
==================== ===================================== ===========================
``serving_default``  ``dense_features`` float32 ``[B, D]``  ``probability`` float32
                     ``sparse_features`` int64 ``[B, T]``   ``[B, 1]``
``predict_multihot`` ``dense_features`` float32 ``[B, D]``  ``probability``
                     ``sparse_features`` int64
                     ``[B, T, H]``, bags padded with -1
``predict_raw``      ``fields`` string ``[B, D + T]``       ``probability``
==================== ===================================== ===========================

Ids: ``-1`` is an absent id (a bag of only ``-1`` is empty and embeds to zeros);
any other id outside ``[0, table_size)`` makes the request fail with
``InvalidArgumentError`` (HTTP 400 / gRPC ``INVALID_ARGUMENT`` in TF Serving),
and so does a NaN or infinite dense feature.
A request whose shapes disagree with the model (dense width, number of
features, batch sizes of the two inputs) fails the same way.
"""

from __future__ import annotations

from typing import Any, Protocol

import tensorflow as tf

from input_pipeline.features import DENSE_KEY, SPARSE_KEY

FIELDS_KEY = "fields"
OUTPUT_KEY = "probability"

SERVING_DEFAULT = "serving_default"
PREDICT_MULTIHOT = "predict_multihot"
PREDICT_RAW = "predict_raw"


class RawPreprocessorLike(Protocol):
    """What the raw signature needs of a preprocessor (``input_pipeline.criteo.RawPreprocessor``).

    ``__call__`` maps ``fields`` string ``[B, D + T]`` to ``(dense float32 [B, D],
    ids int64 [B, T])`` with graph ops only; its lookup tables are tracked by the
    SavedModel and its vocabulary files (``asset_paths``) travel as assets.
    """

    def __call__(self, fields: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]: ...


def model_dims(model: Any) -> tuple[int, tuple[int, ...]]:
    """The dense width and the table sizes of a DLRM model (from its ``model_config``)."""
    cfg = model.model_config
    return int(cfg.num_dense), tuple(int(n) for n in cfg.table_sizes)


class DLRMServingModule(tf.Module):
    """A ``tf.Module`` holding the serving functions of a built DLRM model.

    Args:
      model: a built ``dlrm_tf.model.dlrm.DLRM`` (any Keras model with a
        ``model_config`` and the DLRM input dict works).
      raw_preprocessor: optional; when given, a ``predict_raw`` signature is added.

    Raises:
      ValueError: if the raw preprocessor's outputs do not fit the model.
    """

    def __init__(self, model: Any, raw_preprocessor: RawPreprocessorLike | None = None) -> None:
        super().__init__(name="dlrm_serving")
        num_dense, table_sizes = model_dims(model)
        num_tables = len(table_sizes)
        self.num_dense = num_dense
        self.table_sizes = table_sizes
        # Only the variables are tracked: tracking the Keras model itself would
        # pull Keras objects into the SavedModel's object graph. They are the
        # tf.Variables inside Keras's wrappers: a wrapper exports as a second,
        # new variable that the checkpoint restores but no signature reads, so
        # the session loader TF Serving uses would find the read ones unset.
        self.model_variables = [_tf_variable(v) for v in model.variables]

        def predict(dense: tf.Tensor, ids: tf.Tensor) -> dict[str, tf.Tensor]:
            dense, ids = _check_request(dense, ids, num_dense, num_tables)
            probability = model({DENSE_KEY: dense, SPARSE_KEY: ids}, training=False)
            return {OUTPUT_KEY: tf.identity(probability, name=OUTPUT_KEY)}

        dense_spec = tf.TensorSpec([None, num_dense], tf.float32, name=DENSE_KEY)

        @tf.function(
            input_signature=[
                dense_spec,
                tf.TensorSpec([None, num_tables], tf.int64, name=SPARSE_KEY),
            ],
            autograph=False,
        )
        def serve_onehot(dense_features: tf.Tensor, sparse_features: tf.Tensor):
            return predict(dense_features, sparse_features)

        @tf.function(
            input_signature=[
                dense_spec,
                tf.TensorSpec([None, num_tables, None], tf.int64, name=SPARSE_KEY),
            ],
            autograph=False,
        )
        def serve_multihot(dense_features: tf.Tensor, sparse_features: tf.Tensor):
            return predict(dense_features, sparse_features)

        self.serve_onehot = serve_onehot
        self.serve_multihot = serve_multihot
        self.serve_raw = None
        self.raw_preprocessor = None
        if raw_preprocessor is not None:
            self._add_raw_signature(raw_preprocessor, predict)

    def _add_raw_signature(self, raw_preprocessor: RawPreprocessorLike, predict: Any) -> None:
        """``serve_raw``: raw Criteo fields preprocessed in the graph, then ``predict``."""
        num_dense, table_sizes = self.num_dense, self.table_sizes
        num_tables = len(table_sizes)
        raw_sizes = getattr(raw_preprocessor, "table_sizes", None)
        if raw_sizes is not None and tuple(int(n) for n in raw_sizes) != table_sizes:
            raise ValueError(
                f"the raw preprocessor's table sizes {tuple(int(n) for n in raw_sizes)} "
                f"differ from the model's {table_sizes}: the model was trained on "
                "another vocabulary"
            )
        self.raw_preprocessor = raw_preprocessor
        # Lookup tables built from files track them already; this also copies
        # vocabularies a preprocessor keeps only in memory (same path: one copy).
        self.assets = [tf.saved_model.Asset(p) for p in _asset_paths(raw_preprocessor)]
        num_fields = num_dense + num_tables

        @tf.function(
            input_signature=[tf.TensorSpec([None, num_fields], tf.string, name=FIELDS_KEY)],
            autograph=False,
        )
        def serve_raw(fields: tf.Tensor):
            fields = _check_fields(fields, num_fields)
            dense, ids = raw_preprocessor(fields)
            if dense.shape[-1] != num_dense or ids.shape[-1] != num_tables:
                raise ValueError(
                    f"the raw preprocessor gives dense {dense.shape} and ids {ids.shape}; "
                    f"the model takes {num_dense} dense features and {num_tables} tables"
                )
            return predict(tf.cast(dense, tf.float32), tf.cast(ids, tf.int64))

        self.serve_raw = serve_raw
        # Trace now so that a preprocessor that does not fit fails here, not at save.
        serve_raw.get_concrete_function()

    def signatures(self) -> dict[str, Any]:
        """The signature map for ``tf.saved_model.save``: name -> concrete function."""
        signatures = {
            SERVING_DEFAULT: self.serve_onehot.get_concrete_function(),
            PREDICT_MULTIHOT: self.serve_multihot.get_concrete_function(),
        }
        if self.serve_raw is not None:
            signatures[PREDICT_RAW] = self.serve_raw.get_concrete_function()
        return signatures


def _tf_variable(variable: Any) -> tf.Variable:
    """The ``tf.Variable`` a Keras variable holds (the variable itself if it is one)."""
    return variable if isinstance(variable, tf.Variable) else variable.value


def _asset_paths(raw_preprocessor: Any) -> list[str]:
    paths = getattr(raw_preprocessor, "asset_paths", None) or []
    return [str(p) for p in paths]


def _check_request(
    dense: tf.Tensor, ids: tf.Tensor, num_dense: int, num_tables: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Fails a request whose shapes do not fit the model, with a message that says why.

    A SavedModel function does not enforce its declared input shapes when called
    (a ``[B, 12]`` dense input would reach the first matmul), so they are checked
    in the graph: ``EnsureShape`` names the input and both shapes.
    """
    dense = tf.ensure_shape(dense, [None, num_dense])
    ids = tf.ensure_shape(ids, [None, num_tables] + [None] * (ids.shape.rank - 2))
    same_batch = tf.debugging.assert_equal(
        tf.shape(dense)[0],
        tf.shape(ids)[0],
        message=f"{DENSE_KEY} and {SPARSE_KEY} must have the same number of rows",
    )
    # NaN or Inf would flow through the MLP into a normal-looking probability.
    dense = tf.debugging.assert_all_finite(
        dense, message=f"{DENSE_KEY} must be finite (NaN or Inf found)"
    )
    with tf.control_dependencies([same_batch]):
        return tf.identity(dense), tf.identity(ids)


def _check_fields(fields: tf.Tensor, num_fields: int) -> tf.Tensor:
    return tf.ensure_shape(fields, [None, num_fields])
