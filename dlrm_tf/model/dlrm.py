"""The DLRM Keras model: bottom MLP, embedding bags, interaction, top MLP.

Inputs are a dict ``{"dense_features": float32 [B, n_dense],
"sparse_features": int64 [B, T] or [B, T, H]}`` (``H``-id bags padded with
``-1``); the output is the click probability ``[B, 1]``.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from dlrm_tf.config import ModelConfig
from dlrm_tf.model.layers import MLP, PACKAGE, CatInteraction, DotInteraction, EmbeddingBags
from dlrm_tf.model.placed_variables import WorkerTable
from input_pipeline.features import DENSE_KEY, SPARSE_KEY


@keras.saving.register_keras_serializable(package=PACKAGE)
class DLRM(keras.Model):
    """Deep Learning Recommendation Model (Naumov et al., 2019), reference semantics."""

    def __init__(
        self,
        model_config: ModelConfig | dict,
        jit_compile: bool = False,
        table_devices: tuple[str | WorkerTable | None, ...] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.jit_compile_dense = bool(jit_compile)
        if isinstance(model_config, dict):
            model_config = ModelConfig.from_dict(model_config)
        self.model_config = model_config
        cfg = model_config
        self.bottom_mlp = MLP(cfg.bottom_mlp[1:], final_activation="relu", name="bottom_mlp")
        self.embeddings = EmbeddingBags(
            cfg.table_sizes, cfg.embedding_dim, table_devices=table_devices, name="embedding_bags"
        )
        if cfg.interaction == "dot":
            self.interaction = DotInteraction(
                cfg.interaction_itself, fused_kernel=not jit_compile, name="interaction"
            )
        else:
            self.interaction = CatInteraction(name="interaction")
        self.top_mlp = MLP(cfg.top_mlp, final_activation="sigmoid", name="top_mlp")
        # Only the dense parts are compiled: XLA's gather and sum per bag measured
        # slower than TensorFlow's kernels on CPU.
        self._bottom = self._compiled(self.bottom_mlp) if jit_compile else self.bottom_mlp
        self._head = (
            self._compiled(self._interact_and_top) if jit_compile else (self._interact_and_top)
        )

    @staticmethod
    def _compiled(fn):
        return tf.function(fn, jit_compile=True, reduce_retracing=True, autograph=False)

    def _interact_and_top(self, x, embedded):
        return self.top_mlp(self.interaction((x, embedded)))

    def build(self, input_shape=None) -> None:
        cfg = self.model_config
        self.bottom_mlp.build((None, cfg.num_dense))
        self.embeddings.build((None, cfg.num_tables))
        self.top_mlp.build((None, cfg.interaction_width))
        self.built = True

    def call(self, inputs, training: bool | None = None):
        dense = inputs[DENSE_KEY]
        x = self._bottom(dense)
        embedded = self.embeddings(inputs[SPARSE_KEY])
        probability = self._head(x, embedded)
        threshold = self.model_config.loss_threshold
        if threshold > 0.0:
            probability = tf.clip_by_value(probability, threshold, 1.0 - threshold)
        return tf.cast(probability, "float32")

    def embedding_variables(self) -> list[keras.Variable]:
        """The embedding tables, updated sparsely by the optimizers."""
        return list(self.embeddings.tables)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(model_config=self.model_config.to_dict(), jit_compile=self.jit_compile_dense)
        return config

    @classmethod
    def from_config(cls, config: dict) -> DLRM:
        config = dict(config)
        return cls(ModelConfig.from_dict(config.pop("model_config")), **config)


def build_model(
    model_config: ModelConfig,
    jit_compile: bool = False,
    table_devices: tuple[str | None, ...] | None = None,
) -> DLRM:
    """Creates and builds a DLRM model (weights initialised as the reference does).

    ``jit_compile`` XLA-compiles the bottom MLP and the interaction + top MLP;
    ``table_devices`` puts table ``k`` on device ``table_devices[k]`` alone under a
    multi-device strategy (``None``: a copy on every device).
    """
    model = DLRM(model_config, jit_compile=jit_compile, table_devices=table_devices, name="dlrm")
    model.build()
    return model
