"""Criteo data: raw text -> TFRecord shards -> tf.data, and data generators."""
