"""The fused dot-interaction kernel (dlrm_tf.kernels.interaction): against a NumPy
oracle, its gradient, the layer's use of it in training only, and XLA runs."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from graph_ops import graph_op_types

from dlrm_tf.config import ModelConfig
from dlrm_tf.kernels import interaction
from dlrm_tf.model.dlrm import build_model
from dlrm_tf.model.layers import DotInteraction
from input_pipeline.features import DENSE_KEY, SPARSE_KEY

pytestmark = pytest.mark.skipif(
    not interaction.usable(tf.zeros([1, 1])), reason="fused kernels turned off in this environment"
)


def numpy_pairs(x: np.ndarray, embeddings: np.ndarray, self_interaction: bool) -> np.ndarray:
    """``concat(x, lower triangle of F F^T)``, pairs (i, j) row by row as the reference."""
    features = np.concatenate([x[:, None, :], embeddings], axis=1).astype(np.float64)
    gram = features @ features.transpose(0, 2, 1)
    count = features.shape[1]
    own = 1 if self_interaction else 0
    pairs = [gram[:, i, j] for i in range(count) for j in range(i + own)]
    return np.concatenate([x, np.stack(pairs, axis=1)], axis=1)


def numpy_gradients(x, embeddings, grad, self_interaction):
    """d/dF of ``sum(out * grad)``: ``(G + G^T) F`` with ``G`` the pairs' gradients."""
    features = np.concatenate([x[:, None, :], embeddings], axis=1).astype(np.float64)
    batch, count, dim = features.shape
    own = 1 if self_interaction else 0
    lower = np.zeros((batch, count, count))
    rows, cols = zip(*[(i, j) for i in range(count) for j in range(i + own)], strict=True)
    lower[:, rows, cols] = grad[:, dim:]
    feature_grad = (lower + lower.transpose(0, 2, 1)) @ features
    feature_grad[:, 0] += grad[:, :dim]
    return feature_grad[:, 0], feature_grad[:, 1:]


def inputs(seed: int, batch: int, tables: int, dim: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, dim)).astype(np.float32)
    embeddings = rng.standard_normal((batch, tables, dim)).astype(np.float32)
    return x, embeddings, rng


@pytest.mark.parametrize("self_interaction", [False, True])
@pytest.mark.parametrize("tables, dim", [(26, 16), (3, 5), (1, 64)])
def test_forward_and_gradient_match_numpy(self_interaction, tables, dim):
    x, embeddings, rng = inputs(0, 37, tables, dim)
    out = interaction.dot_interaction(x, embeddings, self_interaction).numpy()
    np.testing.assert_allclose(
        out, numpy_pairs(x, embeddings, self_interaction), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(out[:, :dim], x)

    grad = rng.standard_normal(out.shape).astype(np.float32)
    x_t, e_t = tf.constant(x), tf.constant(embeddings)
    with tf.GradientTape() as tape:
        tape.watch([x_t, e_t])
        loss = tf.reduce_sum(interaction.dot_interaction(x_t, e_t, self_interaction) * grad)
    got_x, got_e = tape.gradient(loss, [x_t, e_t])
    want_x, want_e = numpy_gradients(x, embeddings, grad, self_interaction)
    np.testing.assert_allclose(got_x.numpy(), want_x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_e.numpy(), want_e, rtol=1e-4, atol=1e-4)


def test_mismatched_shapes_are_refused():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"x must be \[batch, d\]"):
        interaction.dot_interaction(tf.zeros([4, 8]), tf.zeros([4, 3, 7]), False)
    assert not interaction.usable(tf.zeros([1, 1], tf.bfloat16))


def test_layer_uses_the_kernel_in_training_only_with_the_same_result():
    x, embeddings, _ = inputs(1, 9, 4, 6)
    layer = DotInteraction()
    specs = (tf.TensorSpec([None, 6], tf.float32), tf.TensorSpec([None, 4, 6], tf.float32))

    def train(a, b):
        return layer((a, b), training=True)

    def infer(a, b):
        return layer((a, b), training=False)

    assert "DlrmDotInteraction" in graph_op_types(train, *specs)
    assert "DlrmDotInteraction" not in graph_op_types(infer, *specs)
    np.testing.assert_allclose(train(x, embeddings), infer(x, embeddings), rtol=1e-5, atol=1e-5)
    unfused = DotInteraction(fused_kernel=False)
    assert "DlrmDotInteraction" not in graph_op_types(
        lambda a, b: unfused((a, b), training=True), *specs
    )
    assert "fused_kernel" not in layer.get_config()


def test_xla_compiled_model_trains_without_the_kernel():
    """With jit_compile the interaction is inside an XLA cluster, where the custom op
    cannot go: the model keeps TensorFlow's ops there and trains."""
    config = ModelConfig(embedding_dim=4, table_sizes=(10, 7), bottom_mlp=(3, 8, 4), top_mlp=(8, 1))
    keras.utils.set_random_seed(0)
    model = build_model(config, jit_compile=True)
    assert not model.interaction.fused_kernel and build_model(config).interaction.fused_kernel
    rng = np.random.default_rng(2)
    features = {
        DENSE_KEY: rng.standard_normal((16, 3)).astype(np.float32),
        SPARSE_KEY: rng.integers(0, 7, (16, 2)),
    }
    labels = rng.integers(0, 2, (16, 1)).astype(np.float32)
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    history = model.fit(features, labels, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
