"""The fused embedding kernels (dlrm_tf.kernels): against NumPy, in the layer and the
optimizers, and their fallback."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from graph_ops import graph_op_types

from dlrm_tf.kernels import build, embedding_rows
from dlrm_tf.model.layers import EmbeddingBags
from dlrm_tf.model.optimizers import make_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(
    not embedding_rows.available(), reason="fused kernels turned off in this environment"
)


def random_bags(rng, rows: int, num_bags: int, longest: int):
    """Sorted bag ids with some empty bags (the last ones among them), and the ids."""
    lengths = rng.integers(0, longest + 1, num_bags)
    lengths[-2:] = 0
    bag_of_id = np.repeat(np.arange(num_bags), lengths)
    ids = rng.integers(0, rows, len(bag_of_id))
    ids[: len(ids) // 4] = ids[0]  # a repeated id, as hot ids are
    return ids, bag_of_id


def numpy_bag_sums(table, ids, bag_of_id, num_bags):
    """Each bag's rows added one after another in float32 (the reference's EmbeddingBag order)."""
    out = np.zeros((num_bags, table.shape[1]), np.float32)
    for i, b in zip(ids, bag_of_id, strict=True):
        out[b] += table[i]
    return out


def test_bag_sum_equals_numpy_bit_for_bit():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((500, 24)).astype(np.float32)
    ids, bag_of_id = random_bags(rng, 500, 64, 30)
    table = tf.Variable(values)
    got = embedding_rows.bag_sum(table, ids, bag_of_id, 64).numpy()
    np.testing.assert_array_equal(got, numpy_bag_sums(values, ids, bag_of_id, 64))


def test_bag_sum_gradient_is_one_row_per_id():
    rng = np.random.default_rng(1)
    table = tf.Variable(rng.standard_normal((50, 8)).astype(np.float32))
    ids, bag_of_id = random_bags(rng, 50, 10, 6)
    weight = tf.constant(rng.standard_normal((10, 8)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(embedding_rows.bag_sum(table, ids, bag_of_id, 10) * weight)
    grad = tape.gradient(loss, table)
    assert isinstance(grad, tf.IndexedSlices)
    np.testing.assert_array_equal(grad.indices.numpy(), ids)
    np.testing.assert_array_equal(grad.values.numpy(), weight.numpy()[bag_of_id])
    assert tuple(grad.dense_shape.numpy()) == (50, 8)


def test_scatter_sub_rows_equals_numpy_with_repeated_ids():
    rng = np.random.default_rng(2)
    values = rng.standard_normal((300, 16)).astype(np.float32)
    ids, positions = random_bags(rng, 300, 40, 20)
    source = rng.standard_normal((40, 16)).astype(np.float32)
    scale = np.float32(0.37)
    table = tf.Variable(values)
    embedding_rows.scatter_sub_rows(table, ids, source, positions, scale)
    expected = values.copy()
    for i, p in zip(ids, positions, strict=True):
        expected[i] -= scale * source[p]
    np.testing.assert_array_equal(table.numpy(), expected)


def test_out_of_range_id_fails_and_changes_nothing():
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    table = tf.Variable(values)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"id 4 at position 1 is outside"):
        embedding_rows.bag_sum(table, [0, 4], [0, 0], 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"id -2 at position 2 is outside"):
        source = np.ones((1, 3), np.float32)
        embedding_rows.scatter_sub_rows(table, [1, 2, -2], source, [0, 0, 0], 1.0)
    np.testing.assert_array_equal(table.numpy(), values)
    with pytest.raises(tf.errors.InvalidArgumentError, match="sorted"):
        embedding_rows.bag_sum(table, [0, 1], [1, 0], 2)


def padded_ids(rng, sizes, batch: int, slots: int) -> np.ndarray:
    """``[T, B, H]`` ids with -1 padding, empty bags and a repeated id per table."""
    ids = np.stack([rng.integers(-1, n, (batch, slots)) for n in sizes])
    ids[:, -1] = -1  # the last bag of every table is empty
    ids[:, : batch // 3, 0] = ids[:, :1, 0].clip(0)
    return ids


def test_bag_sums_of_several_tables_equal_numpy_bit_for_bit():
    rng = np.random.default_rng(5)
    sizes = (60, 1, 300)
    values = [rng.standard_normal((n, 8)).astype(np.float32) for n in sizes]
    ids = padded_ids(rng, sizes, 33, 5)
    got = embedding_rows.bag_sums([tf.Variable(v) for v in values], ids).numpy()
    assert got.shape == (33, 3, 8)
    for t, table in enumerate(values):
        bags, slots = np.nonzero(ids[t] >= 0)
        expected = numpy_bag_sums(table, ids[t][bags, slots], bags, 33)
        np.testing.assert_array_equal(got[:, t], expected)


def test_bag_sums_gradient_is_each_tables_rows_in_bag_order():
    rng = np.random.default_rng(6)
    sizes = (20, 45)
    tables = [tf.Variable(rng.standard_normal((n, 4)).astype(np.float32)) for n in sizes]
    ids = padded_ids(rng, sizes, 12, 3)
    weight = tf.constant(rng.standard_normal((12, 2, 4)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(embedding_rows.bag_sums(tables, ids) * weight)
    grads = tape.gradient(loss, tables)
    for t, grad in enumerate(grads):
        assert isinstance(grad, tf.IndexedSlices)
        bags, slots = np.nonzero(ids[t] >= 0)
        np.testing.assert_array_equal(grad.indices.numpy(), ids[t][bags, slots])
        np.testing.assert_array_equal(grad.values.numpy(), weight.numpy()[bags, t])
        assert tuple(grad.dense_shape.numpy()) == (sizes[t], 4)


def test_bag_sums_reject_an_id_outside_its_table():
    tables = [tf.Variable(np.ones((4, 2), np.float32)), tf.Variable(np.ones((9, 2), np.float32))]
    ids = np.array([[[0], [3]], [[8], [-1]]])
    assert embedding_rows.bag_sums(tables, ids).numpy()[0, 1].tolist() == [1.0, 1.0]
    ids[0, 1, 0] = 4
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"id 4 of feature 0 at example 1 "):
        embedding_rows.bag_sums(tables, ids)
    ids[0, 1, 0], ids[1, 1, 0] = 0, -2
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"id -2 of feature 1 at example 1 "):
        embedding_rows.bag_sums(tables, ids)


def test_layer_uses_the_kernel_in_training_only_with_the_same_result():
    """Training pools all tables through one DlrmBagSums; inference (and so every
    export) through TensorFlow's ops; both give NumPy's bag sums."""
    rng = np.random.default_rng(3)
    layer = EmbeddingBags((40, 70), 5)
    ids = rng.integers(-1, 40, (9, 2, 4))
    layer.build(ids.shape)

    def train(x):
        return layer(x, training=True)

    def infer(x):
        return layer(x, training=False)

    spec = tf.TensorSpec([None, 2, 4], tf.int64)
    trained_ops, inferred_ops = graph_op_types(train, spec), graph_op_types(infer, spec)
    assert "DlrmBagSums" in trained_ops and "GatherV2" not in trained_ops
    assert not {op for op in inferred_ops if op.startswith("Dlrm")}
    trained, inferred = train(ids).numpy(), infer(ids).numpy()
    for t, table in enumerate(layer.tables):
        kept = ids[:, t] >= 0
        bags = np.nonzero(kept)[0]
        expected = numpy_bag_sums(table.numpy(), ids[:, t][kept], bags, 9)
        np.testing.assert_array_equal(trained[:, t], expected)
        np.testing.assert_allclose(inferred[:, t], expected, rtol=1e-6, atol=1e-6)


def test_pooled_lookup_switched_off_pools_each_table_on_its_own(monkeypatch):
    rng = np.random.default_rng(7)
    layer = EmbeddingBags((40, 70, 5), 3)
    ids = rng.integers(-1, 5, (6, 3, 2))
    layer.build(ids.shape)
    spec = tf.TensorSpec([None, 3, 2], tf.int64)

    def train(x):
        return layer(x, training=True)

    pooled = train(ids).numpy()
    monkeypatch.setenv(embedding_rows.POOLED_ENV, "0")
    assert not embedding_rows.pooled()
    ops = graph_op_types(train, spec)
    assert "DlrmBagSum" in ops and "DlrmBagSums" not in ops
    np.testing.assert_array_equal(train(ids).numpy(), pooled)


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
def test_optimizer_step_matches_the_tensorflow_ops_path(name, monkeypatch):
    """One step through the kernels and one through TensorFlow's ops (the kernels
    hidden) leave the same table."""
    rng = np.random.default_rng(4)
    values = rng.standard_normal((30, 4)).astype(np.float32)
    ids = rng.integers(0, 30, (16, 1, 3))
    ids[:, :, 0] = 7  # the same row from every example

    def one_step() -> np.ndarray:
        keras.utils.set_random_seed(0)
        layer = EmbeddingBags((30,), 4)
        layer.build(ids.shape)
        layer.tables[0].assign(values)
        optimizer = make_optimizer(name, 0.1)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(layer(ids, training=True)))
            grads = tape.gradient(loss, layer.tables)
            optimizer.apply_gradients(zip(grads, layer.tables, strict=True))

        step()
        return layer.tables[0].numpy()

    fused = one_step()
    monkeypatch.setattr(embedding_rows, "usable", lambda table: False)
    stock = one_step()
    assert not np.array_equal(fused, values)
    np.testing.assert_allclose(fused, stock, rtol=1e-5, atol=1e-6)


def run_probe(env: dict) -> subprocess.CompletedProcess:
    code = "from dlrm_tf.kernels import embedding_rows; print(embedding_rows.available())"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **env),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_fresh_cache_builds_the_library_and_a_missing_compiler_falls_back(tmp_path):
    built = run_probe({build.CACHE_ENV: str(tmp_path / "cache")})
    assert built.returncode == 0, built.stderr[-3000:]
    assert built.stdout.split()[-1] == "True"
    assert [p for p in os.listdir(tmp_path / "cache") if p.endswith(".so")]

    missing = run_probe({build.CACHE_ENV: str(tmp_path / "empty"), "CXX": "no-such-compiler"})
    assert missing.returncode == 0, missing.stderr[-3000:]
    assert missing.stdout.split()[-1] == "False"
    assert "no C++ compiler" in missing.stderr

    off = run_probe({build.DISABLE_ENV: "0"})
    assert off.stdout.split()[-1] == "False"


def test_a_changed_shared_header_names_a_new_library(tmp_path, monkeypatch):
    (tmp_path / "k.cc").write_text('#include "tf_kernel.h"\n')
    (tmp_path / "tf_kernel.h").write_text("// one\n")
    monkeypatch.setattr(build, "_SOURCE_DIR", str(tmp_path))
    source = str(tmp_path / "k.cc")
    before = build._library_path("k", ["g++"], build._source_text(source))
    (tmp_path / "tf_kernel.h").write_text("// two\n")
    after = build._library_path("k", ["g++"], build._source_text(source))
    assert before != after
    assert os.path.basename(before).startswith("k-") and before.endswith(".so")
