"""The DLRM Keras model: bottom MLP, embedding bags, interaction, top MLP.

Inputs are a dict ``{"dense_features": float32 [B, n_dense],
"sparse_features": int64 [B, T] or [B, T, H]}`` (``H``-id bags padded with
``-1``); the output is the click probability ``[B, 1]``.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from dlrm_tf.config import ModelConfig
from dlrm_tf.layers import MLP, PACKAGE, CatInteraction, DotInteraction, EmbeddingBags

DENSE_KEY = "dense_features"
SPARSE_KEY = "sparse_features"


@keras.saving.register_keras_serializable(package=PACKAGE)
class DLRM(keras.Model):
    """Deep Learning Recommendation Model (Naumov et al., 2019), reference semantics."""

    def __init__(self, model_config: ModelConfig | dict, **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(model_config, dict):
            model_config = ModelConfig.from_dict(model_config)
        self.model_config = model_config
        cfg = model_config
        self.bottom_mlp = MLP(cfg.bottom_mlp[1:], final_activation="relu", name="bottom_mlp")
        self.embeddings = EmbeddingBags(cfg.table_sizes, cfg.embedding_dim, name="embedding_bags")
        if cfg.interaction == "dot":
            self.interaction = DotInteraction(cfg.interaction_itself, name="interaction")
        else:
            self.interaction = CatInteraction(name="interaction")
        self.top_mlp = MLP(cfg.top_mlp, final_activation="sigmoid", name="top_mlp")

    def build(self, input_shape=None) -> None:
        cfg = self.model_config
        self.bottom_mlp.build((None, cfg.num_dense))
        self.embeddings.build((None, cfg.num_tables))
        self.top_mlp.build((None, cfg.interaction_width))
        self.built = True

    def call(self, inputs, training: bool | None = None):
        dense = inputs[DENSE_KEY]
        x = self.bottom_mlp(dense)
        embedded = self.embeddings(inputs[SPARSE_KEY])
        z = self.interaction((x, embedded))
        probability = self.top_mlp(z)
        threshold = self.model_config.loss_threshold
        if threshold > 0.0:
            probability = tf.clip_by_value(probability, threshold, 1.0 - threshold)
        return tf.cast(probability, "float32")

    def embedding_variables(self) -> list[keras.Variable]:
        """The embedding tables, updated sparsely by the optimizers."""
        return list(self.embeddings.tables)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(model_config=self.model_config.to_dict())
        return config

    @classmethod
    def from_config(cls, config: dict) -> DLRM:
        config = dict(config)
        return cls(ModelConfig.from_dict(config.pop("model_config")), **config)


def build_model(model_config: ModelConfig) -> DLRM:
    """Creates and builds a DLRM model (weights initialised as the reference does)."""
    model = DLRM(model_config, name="dlrm")
    model.build()
    return model
