"""The DLRM forward pass, gradients and serialization against an independent NumPy oracle."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from oracles import numpy_bags

from dlrm_tf.config import ModelConfig
from dlrm_tf.model.dlrm import DLRM, build_model
from dlrm_tf.model.layers import MLP, CatInteraction, DotInteraction, EmbeddingBags


def numpy_mlp(x, layers, last_activation):
    for i, (kernel, bias) in enumerate(layers):
        x = x @ kernel + bias
        if i < len(layers) - 1 or last_activation == "relu":
            x = np.maximum(x, 0.0)
        else:
            x = 1.0 / (1.0 + np.exp(-x))
    return x


def numpy_dlrm(weights, config: ModelConfig, dense, ids):
    """Reference DLRM forward written from the spec, loop by loop."""
    bottom, tables, top = weights
    x = numpy_mlp(dense.astype(np.float64), bottom, "relu")
    emb = numpy_bags(tables, ids)
    if config.interaction == "cat":
        z = np.concatenate([x, emb.reshape(len(x), -1)], axis=1)
    else:
        rows = []
        for b in range(len(x)):
            feats = [x[b]] + [emb[b, t] for t in range(emb.shape[1])]
            pairs = []
            for i in range(len(feats)):
                last = i + 1 if config.interaction_itself else i
                for j in range(last):
                    pairs.append(float(np.dot(feats[i], feats[j])))
            rows.append(np.concatenate([x[b], pairs]))
        z = np.stack(rows)
    p = numpy_mlp(z, top, "sigmoid")
    if config.loss_threshold > 0:
        p = np.clip(p, config.loss_threshold, 1 - config.loss_threshold)
    return p


def model_weights(model: DLRM):
    def mlp(layer):
        return [(d.kernel.numpy(), d.bias.numpy()) for d in layer.dense_layers]

    return mlp(model.bottom_mlp), [t.numpy() for t in model.embeddings.tables], mlp(model.top_mlp)


def small_config(**overrides) -> ModelConfig:
    values = dict(
        embedding_dim=4,
        table_sizes=(5, 3, 7),
        bottom_mlp=(6, 8, 4),
        top_mlp=(5, 3, 1),
    )
    values.update(overrides)
    return ModelConfig(**values)


def random_inputs(config, batch, rng, bag=None, empty_last=False):
    dense = rng.random((batch, config.num_dense), dtype=np.float32)
    if bag is None:
        ids = np.stack([rng.integers(0, n, batch) for n in config.table_sizes], axis=1)
    else:
        ids = np.full((batch, config.num_tables, bag), -1, dtype=np.int64)
        for b in range(batch):
            for t, n in enumerate(config.table_sizes):
                k = rng.integers(0, bag + 1)
                ids[b, t, :k] = rng.integers(0, n, k)  # repeats allowed
        if empty_last:
            ids[-2:] = -1
    return {"dense_features": dense, "sparse_features": ids.astype(np.int64)}


@pytest.mark.parametrize(
    "overrides, bag",
    [
        ({}, None),
        ({"interaction_itself": True}, None),
        ({"interaction": "cat"}, None),
        ({}, 3),
        ({"interaction_itself": True}, 4),
        ({"interaction": "cat", "bottom_mlp": (6, 8, 5)}, 2),
        ({"loss_threshold": 0.3}, None),
    ],
)
def test_forward_matches_numpy_oracle(overrides, bag):
    config = small_config(**overrides)
    keras.utils.set_random_seed(1)
    model = build_model(config)
    rng = np.random.default_rng(2)
    inputs = random_inputs(config, 9, rng, bag=bag, empty_last=bag is not None)
    got = model(inputs).numpy()
    dense, ids = inputs["dense_features"], inputs["sparse_features"]
    want = numpy_dlrm(model_weights(model), config, dense, ids)
    assert got.shape == (9, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_empty_bags_in_last_rows_give_zero_vectors():
    layer = EmbeddingBags((4, 6), 3)
    ids = np.array([[[1, 1], [2, -1]], [[-1, -1], [5, 0]], [[-1, -1], [-1, -1]]], dtype=np.int64)
    out = layer(ids).numpy()
    tables = [t.numpy() for t in layer.tables]
    np.testing.assert_allclose(out, numpy_bags(tables, ids), rtol=1e-6)
    assert out.shape == (3, 2, 3)
    assert not out[2].any()


@pytest.mark.parametrize("feature, bad_id", [(0, 4), (0, 100), (0, -2), (0, 5), (1, 6), (1, -3)])
def test_out_of_range_ids_raise(feature, bad_id):
    """Checked against the id's own table: 5 is in range of table 1, not of table 0."""
    layer = EmbeddingBags((4, 6), 3)
    ids = np.array([[0, 1], [3, 2]], dtype=np.int64)
    ids[1, feature] = bad_id
    message = rf"out of range; first bad \(feature, example, slot\) = \[\[{feature} 1 0\]\]"
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        layer(ids)


def test_dot_interaction_order_matches_reference():
    """Z[i, j] for j < i in row-major order: (1,0), (2,0), (2,1), (3,0), ..."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3)).astype(np.float32)
    emb = rng.normal(size=(2, 3, 3)).astype(np.float32)
    out = DotInteraction()((x, emb)).numpy()
    feats = np.concatenate([x[:, None], emb], axis=1)
    expected_pairs = [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    for k, (i, j) in enumerate(expected_pairs):
        np.testing.assert_allclose(out[:, 3 + k], np.sum(feats[:, i] * feats[:, j], -1), rtol=1e-5)
    assert out.shape == (2, 3 + 6)
    out_self = DotInteraction(self_interaction=True)((x, emb)).numpy()
    assert out_self.shape == (2, 3 + 10)
    np.testing.assert_allclose(out_self[:, 3], np.sum(x * x, -1), rtol=1e-5)  # (0, 0)


def test_criteo_dot_width_is_367():
    config = ModelConfig(
        embedding_dim=16,
        table_sizes=(10,) * 26,
        bottom_mlp=(13, 512, 256, 64, 16),
        top_mlp=(512, 256, 1),
    )
    assert config.interaction_width == 367


def test_initialisation_statistics():
    keras.utils.set_random_seed(3)
    layer = MLP((400,), final_activation="relu")
    layer.build((None, 600))
    kernel = layer.dense_layers[0].kernel.numpy()
    bias = layer.dense_layers[0].bias.numpy()
    assert abs(kernel.std() - np.sqrt(2 / 1000)) < 0.02 * np.sqrt(2 / 1000)
    assert abs(bias.std() - np.sqrt(1 / 400)) < 0.1 * np.sqrt(1 / 400)
    # Not truncated: values beyond two standard deviations exist (~4.6 % of them).
    assert np.mean(np.abs(kernel) > 2 * np.sqrt(2 / 1000)) > 0.03
    bags = EmbeddingBags((10000,), 8)
    bags.build((None, 1))
    table = bags.tables[0].numpy()
    bound = np.sqrt(1 / 10000)
    assert table.min() >= -bound and table.max() <= bound
    assert abs(table.std() - bound / np.sqrt(3)) < 0.02 * bound


def test_gradients_match_numpy_oracle_with_repeated_ids():
    config = small_config()
    keras.utils.set_random_seed(4)
    model = build_model(config)
    rng = np.random.default_rng(5)
    inputs = random_inputs(config, 6, rng, bag=3)
    inputs["sparse_features"][:, 0, :] = [[1, 1, 2]] * 6  # repeated ids inside and across bags
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(inputs))
    grads = tape.gradient(loss, model.embeddings.tables)

    # Finite differences on the NumPy oracle for a few rows of table 0.
    weights = model_weights(model)
    table0 = weights[1][0]
    dense_grad = tf.convert_to_tensor(grads[0]).numpy()
    assert isinstance(grads[0], tf.IndexedSlices)
    eps = 1e-3

    def oracle_sum(tables):
        dense, ids = inputs["dense_features"], inputs["sparse_features"]
        return numpy_dlrm((weights[0], tables, weights[2]), config, dense, ids).sum()

    for row in (1, 2, 0):
        for col in range(config.embedding_dim):
            plus, minus = [w.copy() for w in weights[1]], [w.copy() for w in weights[1]]
            plus[0][row, col] += eps
            minus[0][row, col] -= eps
            f_plus, f_minus = oracle_sum(plus), oracle_sum(minus)
            assert dense_grad[row, col] == pytest.approx((f_plus - f_minus) / (2 * eps), abs=1e-4)
    assert table0.shape == dense_grad.shape


def test_layer_configs_round_trip():
    for layer in (
        EmbeddingBags((3, 4), 2, name="bags"),
        MLP((4, 1), final_activation="sigmoid", name="mlp"),
        DotInteraction(self_interaction=True, name="dot"),
        CatInteraction(name="cat"),
    ):
        clone = layer.__class__.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert type(restored) is type(layer)


def test_model_save_load_round_trip(tmp_path):
    config = small_config(interaction_itself=True, loss_threshold=0.01)
    model = build_model(config)
    inputs = random_inputs(config, 5, np.random.default_rng(6), bag=2, empty_last=True)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, DLRM)
    assert restored.model_config == config
    np.testing.assert_array_equal(restored(inputs).numpy(), model(inputs).numpy())
