"""Tests of dlrm_tf.model.optimizers against NumPy oracles of the PyTorch update rules.

The mirrored checks need two logical CPU devices, which must be configured
before TensorFlow initialises: they run this file as a script in a subprocess
(``python tests/test_optimizers.py mirrored``) that prints a JSON report.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile

if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from oracles import numpy_bags  # noqa: E402

from dlrm_tf.config import OPTIMIZER_SLOTS, OPTIMIZERS, ModelConfig  # noqa: E402
from dlrm_tf.model.dlrm import DENSE_KEY, SPARSE_KEY, build_model  # noqa: E402
from dlrm_tf.model.layers import EmbeddingBags, replica_local_variable  # noqa: E402
from dlrm_tf.model.optimizers import (  # noqa: E402
    SparseAdagrad,
    SparseAdam,
    SparseSGD,
    deduplicate,
    gathered_from,
    make_optimizer,
    padded_length,
    scatter_sub_rows,
)

TOL = 1e-5
SLOT_NAMES = {"sgd": (), "adagrad": ("accumulator",), "adam": ("momentum", "velocity")}
SLOT_ARRAYS = {"sgd": 0, "adagrad": 1, "adam": 1}  # variables holding them


# ----------------------------------------------------------------------------
# NumPy oracles: the PyTorch rules, applied densely to the whole array.
# ----------------------------------------------------------------------------


class NumpyOptimizer:
    """One variable's update, as torch.optim does it, in float64.

    ``lazy`` (tables): only rows in ``touched`` change, slots included, as
    torch does for a sparse gradient; otherwise every entry is updated.
    """

    def __init__(self, name: str, shape, lazy: bool, epsilon: float | None = None):
        self.name = name
        self.lazy = lazy
        self.step = 0
        defaults = {"sgd": 0.0, "adagrad": 1e-10, "adam": 1e-8}
        self.eps = defaults[name] if epsilon is None else epsilon
        self.slots = {slot: np.zeros(shape) for slot in SLOT_NAMES[name]}

    def apply(self, w, grad, lr, touched=None):
        self.step += 1
        w = np.array(w, np.float64)
        grad = np.asarray(grad, np.float64)
        rows = touched if self.lazy else np.ones(w.shape[0], bool)
        g = grad[rows]
        if self.name == "sgd":
            w[rows] -= lr * g
        elif self.name == "adagrad":
            acc = self.slots["accumulator"]
            acc[rows] += g * g
            w[rows] -= lr * g / (np.sqrt(acc[rows]) + self.eps)
        else:
            m, v = self.slots["momentum"], self.slots["velocity"]
            m[rows] = 0.9 * m[rows] + 0.1 * g
            v[rows] = 0.999 * v[rows] + 0.001 * g * g
            c1, c2 = 1 - 0.9**self.step, 1 - 0.999**self.step
            if self.lazy:  # torch.optim.SparseAdam
                w[rows] -= lr * np.sqrt(c2) / c1 * m[rows] / (np.sqrt(v[rows]) + self.eps)
            else:  # torch.optim.Adam
                w[rows] -= lr / c1 * m[rows] / (np.sqrt(v[rows]) / np.sqrt(c2) + self.eps)
        return w


def np_table_grads(tables, ids, upstream):
    """Dense gradient of each table given dLoss/dOutput ``upstream`` [B, T, d]."""
    grads = [np.zeros_like(table, dtype=np.float64) for table in tables]
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            for i in ids[b, t]:
                if i >= 0:
                    grads[t][i] += upstream[b, t]
    return grads


def touched_rows(ids, t, rows):
    mask = np.zeros(rows, bool)
    present = ids[:, t][ids[:, t] >= 0]
    mask[present] = True
    return mask


# Adam keeps m and v side by side in one "moments" slot: [m | v] on the last axis.
MOMENT_HALVES = {"momentum": 0, "velocity": 1}


def slot_arrays(optimizer, variable) -> list:
    """The optimizer's slot variables of model variable ``variable`` (by Keras's naming)."""
    prefix = f"{variable.path.replace('/', '_')}_"
    return [
        v for v in optimizer.variables
        if v.name.startswith(prefix) and v.name[len(prefix):] in ("accumulator", "moments")
    ]  # fmt: skip


def slot_value(optimizer, variable, slot) -> np.ndarray:
    """The value of ``slot`` (``accumulator``, ``momentum`` or ``velocity``) of ``variable``."""
    name = "moments" if slot in MOMENT_HALVES else slot
    matches = [v for v in slot_arrays(optimizer, variable) if v.name.endswith(f"_{name}")]
    assert len(matches) == 1, (slot, [v.name for v in optimizer.variables])
    value = matches[0].numpy()
    if slot in MOMENT_HALVES:
        value = np.split(value, 2, axis=-1)[MOMENT_HALVES[slot]]
    return value


def dense_gradient(grad) -> np.ndarray:
    return tf.convert_to_tensor(grad).numpy()


# Multi-hot bags with ids repeated inside a bag and across the batch; the last
# example's bags are empty (a trailing empty bag) and one bag is only padding.
IDS = np.array(
    [
        [[2, 2, -1], [0, 3, 3]],
        [[5, 2, 0], [-1, -1, -1]],
        [[6, -1, -1], [3, 1, 3]],
        [[2, 6, 2], [1, -1, -1]],
        [[-1, -1, -1], [-1, -1, -1]],
    ],
    dtype=np.int64,
)
TABLE_SIZES = (9, 5)  # table 0: rows 1, 3, 4, 7, 8 never looked up; table 1: row 2, 4
DIM = 3

FIT_CONFIG = ModelConfig(
    embedding_dim=4, table_sizes=(40, 30), bottom_mlp=(13, 8, 4), top_mlp=(8, 1)
)


def fit_data(seed: int = 3, n: int = 32):
    """Data whose ids use rows < 20 of table 0 and the even rows < 20 of table 1."""
    rng = np.random.default_rng(seed)
    x = {
        DENSE_KEY: rng.random((n, 13), dtype=np.float32),
        SPARSE_KEY: np.stack([rng.integers(0, 20, n), 2 * rng.integers(0, 10, n)], axis=1).astype(
            np.int64
        ),
    }
    y = rng.integers(0, 2, (n, 1)).astype(np.float32)
    return x, y


# ----------------------------------------------------------------------------
# Unit tests
# ----------------------------------------------------------------------------


def test_deduplicate_sums_rows_of_repeated_ids():
    grad = tf.IndexedSlices(
        tf.constant([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]),
        tf.constant([4, 1, 4, 4], tf.int64),
        tf.constant([6, 2], tf.int64),
    )
    ids, values = deduplicate(grad)
    got = dict(zip(ids.numpy().tolist(), values.numpy().tolist(), strict=True))
    assert got == {4: [13.0, 16.0], 1: [3.0, 4.0]}


@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000, 4095, 4096, 4097, 2**40 + 1])
def test_padded_length_rounds_up_within_an_eighth(n):
    length = int(padded_length(tf.constant(n, tf.int64)).numpy())
    assert length >= max(n, 64)
    assert length - max(n, 64) <= max(n, 64) // 8
    # 8 lengths per power of two: multiples of 1/8 of the power of two below n.
    step = 1 << (max(n, 64).bit_length() - 4)
    assert length % step == 0


def test_padded_length_gives_eight_lengths_per_doubling():
    lengths = padded_length(tf.range(1025, 2049, dtype=tf.int64)).numpy()
    assert sorted(set(lengths.tolist())) == list(range(1152, 2049, 128))


def _scatter_oracle(table, ids, rows, scale):
    expected = table.astype(np.float64)
    np.subtract.at(expected, ids, scale * rows.astype(np.float64))
    return expected


@pytest.mark.parametrize("n", [5, 64, 300, 2500])
def test_scatter_sub_rows_subtracts_every_row_of_repeated_ids(n):
    rng = np.random.default_rng(n)
    start = rng.standard_normal((50, 4)).astype(np.float32)
    ids = rng.integers(1, 50, n)  # row 0 never touched: the padding must leave it alone
    ids[:3] = 7  # repeated ids
    rows = rng.standard_normal((n, 4)).astype(np.float32)
    table = tf.Variable(start)
    tf.function(lambda: scatter_sub_rows(table, tf.constant(ids), tf.constant(rows), 0.5))()
    got = table.numpy()
    np.testing.assert_allclose(got, _scatter_oracle(start, ids, rows, 0.5), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[0], start[0])
    untouched = np.setdiff1d(np.arange(50), ids)
    np.testing.assert_array_equal(got[untouched], start[untouched])


@pytest.mark.parametrize("bag_of_id", [[0, 0, 1, 3, 3, 3], [2, 2, 2, 2, 2, 2]])
def test_scatter_sub_rows_reads_gathered_rows_from_their_source(bag_of_id):
    """Rows made as ``source[positions]`` (an embedding bag's gradient) are read from the
    source; the result is the same as for the materialised rows, and the padding (58
    entries here) changes no row, the first and last included."""
    rng = np.random.default_rng(1)
    start = rng.standard_normal((20, 3)).astype(np.float32)
    source = rng.standard_normal((4, 3)).astype(np.float32)
    ids = np.array([3, 9, 3, 5, 18, 9])
    table = tf.Variable(start)
    seen = []

    @tf.function
    def step():
        rows = tf.reshape(tf.gather(tf.constant(source), tf.constant(bag_of_id)), [-1, 3])
        seen.append(gathered_from(rows) is not None)
        scatter_sub_rows(table, tf.constant(ids), rows, tf.constant(0.25))

    step()
    assert seen == [True]
    rows = source[np.array(bag_of_id)]
    got = table.numpy()
    np.testing.assert_allclose(got, _scatter_oracle(start, ids, rows, 0.25), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[[0, 19]], start[[0, 19]])
    assert gathered_from(tf.constant(rows)) is None  # eager: nothing to look through


def test_sgd_step_on_a_nonfinite_gradient_row_is_not_hidden():
    table = tf.Variable(np.zeros((4, 2), np.float32))
    rows = tf.constant([[np.inf, 1.0]], tf.float32)
    tf.function(lambda: scatter_sub_rows(table, tf.constant([2]), rows, 0.1))()
    assert np.isneginf(table.numpy()[2, 0])
    np.testing.assert_array_equal(table.numpy()[[0, 1, 3]], 0.0)


def test_make_optimizer_names_and_config():
    assert isinstance(make_optimizer("sgd", 0.1), SparseSGD)
    adagrad = make_optimizer("adagrad", 0.1)
    assert isinstance(adagrad, SparseAdagrad)
    assert adagrad.epsilon == 1e-10 and adagrad.initial_accumulator_value == 0.0
    adam = make_optimizer("adam", 0.1, beta_2=0.99)
    assert isinstance(adam, SparseAdam)
    assert (adam.beta_1, adam.beta_2, adam.epsilon) == (0.9, 0.99, 1e-8)
    restored = SparseAdam.from_config(adam.get_config())
    assert (restored.beta_2, float(restored.learning_rate)) == (0.99, pytest.approx(0.1))
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_optimizer("rmsprop", 0.1)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_apply_sums_repeated_ids_and_updates_dense_variables(name):
    """Hand-made IndexedSlices with repeated indices, and a dense variable; 2 steps."""
    rng = np.random.default_rng(1)
    table0 = rng.normal(size=(6, 2)).astype(np.float32)
    dense0 = rng.normal(size=(3, 2)).astype(np.float32)
    table = keras.Variable(table0, name="table")
    dense = keras.Variable(dense0, name="dense")
    # A large epsilon makes its placement in the formula visible.
    optimizer = make_optimizer(name, 0.1, **({} if name == "sgd" else {"epsilon": 0.05}))
    oracle_table = NumpyOptimizer(name, table0.shape, lazy=True, epsilon=0.05)
    oracle_dense = NumpyOptimizer(name, dense0.shape, lazy=False, epsilon=0.05)
    want_table, want_dense = table0.astype(np.float64), dense0.astype(np.float64)
    for indices in ([4, 1, 4, 4, 0], [1, 1, 5]):
        values = rng.normal(size=(len(indices), 2)).astype(np.float32)
        dense_grad = rng.normal(size=dense0.shape).astype(np.float32)
        sparse_grad = tf.IndexedSlices(
            tf.constant(values), tf.constant(indices, tf.int64), tf.constant([6, 2], tf.int64)
        )
        optimizer.apply([sparse_grad, tf.constant(dense_grad)], [table, dense])
        full = np.zeros(table0.shape)
        np.add.at(full, indices, values)
        touched = np.isin(np.arange(6), indices)
        want_table = oracle_table.apply(want_table, full, 0.1, touched)
        want_dense = oracle_dense.apply(want_dense, dense_grad, 0.1)
        np.testing.assert_allclose(table.numpy(), want_table, atol=TOL, rtol=TOL)
        np.testing.assert_allclose(dense.numpy(), want_dense, atol=TOL, rtol=TOL)
        for slot in SLOT_NAMES[name]:
            np.testing.assert_allclose(
                slot_value(optimizer, table, slot), oracle_table.slots[slot], atol=TOL
            )
            np.testing.assert_allclose(
                slot_value(optimizer, dense, slot), oracle_dense.slots[slot], atol=TOL
            )
    # Row 2 and 3 were never in a gradient: weights and slots untouched.
    np.testing.assert_array_equal(table.numpy()[[2, 3]], table0[[2, 3]])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_embedding_bags_gradients_and_two_steps_match_numpy(name):
    """Multi-hot bags with repeated ids, a squared loss, a schedule; 2 steps, in tf.function."""
    rng = np.random.default_rng(2)
    layer = EmbeddingBags(TABLE_SIZES, DIM)
    layer.build(IDS.shape)
    tables0 = [rng.normal(size=(rows, DIM)).astype(np.float32) for rows in TABLE_SIZES]
    for variable, value in zip(layer.tables, tables0, strict=True):
        variable.assign(value)
    target = rng.normal(size=(IDS.shape[0], len(TABLE_SIZES), DIM)).astype(np.float32)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    optimizer = make_optimizer(name, schedule)

    @tf.function
    def gradients(ids):
        with tf.GradientTape() as tape:
            out = layer(ids)
            loss = 0.5 * tf.reduce_sum(tf.square(out - target))
        return out, tape.gradient(loss, layer.tables)

    @tf.function
    def apply(grads):
        optimizer.apply(grads, layer.tables)

    oracles = [NumpyOptimizer(name, t.shape, lazy=True) for t in tables0]
    want = [t.astype(np.float64) for t in tables0]
    for step, lr in enumerate((0.1, 0.05)):
        out, grads = gradients(tf.constant(IDS))
        np_out = numpy_bags(want, IDS)
        np.testing.assert_allclose(out.numpy(), np_out, atol=TOL, rtol=TOL)
        np_grads = np_table_grads(want, IDS, np_out - target)
        for t, grad in enumerate(grads):
            assert isinstance(grad, tf.IndexedSlices)
            np.testing.assert_allclose(dense_gradient(grad), np_grads[t], atol=TOL, rtol=TOL)
        apply(grads)
        assert int(optimizer.iterations.numpy()) == step + 1
        for t, variable in enumerate(layer.tables):
            touched = touched_rows(IDS, t, TABLE_SIZES[t])
            want[t] = oracles[t].apply(want[t], np_grads[t], lr, touched)
            np.testing.assert_allclose(variable.numpy(), want[t], atol=TOL, rtol=TOL)
            np.testing.assert_array_equal(variable.numpy()[~touched], tables0[t][~touched])
            for slot in SLOT_NAMES[name]:
                value = slot_value(optimizer, variable, slot)
                np.testing.assert_allclose(value, oracles[t].slots[slot], atol=TOL, rtol=TOL)
                np.testing.assert_array_equal(value[~touched], 0.0)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_memory_checks_slot_count_is_what_the_optimizer_allocates(name):
    """``config.OPTIMIZER_SLOTS`` (the memory arithmetic) against the optimizer's own
    variables: their values per table entry, scalars such as the step count aside."""
    table = keras.Variable(np.zeros((50, 4), np.float32))
    optimizer = make_optimizer(name, 0.1)
    optimizer.build([table])
    values = sum(int(np.prod(v.shape)) for v in optimizer.variables if len(v.shape))
    assert values == OPTIMIZER_SLOTS[name] * 50 * 4


# ----------------------------------------------------------------------------
# No step reads a whole table
# ----------------------------------------------------------------------------


def table_reads(graph, handle) -> set[str]:
    """Types of the ops in ``graph`` that consume the captured resource ``handle``."""
    internal = [inner for outer, inner in graph.captures if outer is handle]
    assert len(internal) == 1
    return {consumer.type for consumer in internal[0].consumers()}


# Ops that touch only some rows of a resource variable (the Dlrm ones: the fused
# kernels of dlrm_tf.kernels, which read and write rows by id).
ROW_OPS = {
    "ResourceGather", "ResourceScatterSub", "ResourceScatterUpdate", "ResourceScatterAdd",
    "DlrmBagSum", "DlrmBagSums", "DlrmScatterSubRows",
}  # fmt: skip


def optimized_resource_consumers(run, rows, width, log_dir) -> list[set[str]]:
    """Op types consuming each resource shaped like a table (``[rows, width]``) or like
    Adam's moments of one (``[rows, 2 * width]``) in the training steps ``run()`` executes.

    The graphs are those after Grappler (``post_optimization_graph`` of the run
    metadata that ``tf.summary.trace_on(graph=True)`` records), so rewrites such
    as the arithmetic optimizer's are included; a training step is a graph that
    takes a batch from an iterator. Functions must be traced inside ``run``.
    """
    writer = tf.summary.create_file_writer(str(log_dir))
    tf.summary.trace_on(graph=True, profiler=False)
    try:
        run()
        with writer.as_default():
            tf.summary.trace_export("graphs", step=0)
    finally:
        tf.summary.trace_off()
    writer.close()
    wanted = [tf.TensorShape((rows, w)).as_proto() for w in (width, 2 * width)]
    found = []
    for path in tf.io.gfile.glob(os.path.join(str(log_dir), "*")):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                metadata = tf.compat.v1.RunMetadata.FromString(value.tensor.string_val[0])
                for function_graph in metadata.function_graphs:
                    nodes = function_graph.post_optimization_graph.node
                    if not any(node.op == "IteratorGetNext" for node in nodes):
                        continue
                    for arg in nodes:
                        shapes = arg.attr["_handle_shapes"].list.shape
                        if arg.op != "_Arg" or len(shapes) != 1 or shapes[0] not in wanted:
                            continue
                        library = function_graph.post_optimization_graph.library
                        found.append(_consumer_ops(nodes, arg.name, library))
    return found


CALL_OPS = ("StatefulPartitionedCall", "PartitionedCall")


def _consumer_ops(nodes, name: str, library) -> set[str]:
    """Op types reading ``name`` among ``nodes``; through a function call, those in its body."""
    ops = set()
    for node in nodes:
        inputs = [i.lstrip("^").split(":")[0] for i in node.input]
        if name not in inputs:
            continue
        if node.op not in CALL_OPS:
            ops.add(node.op)
            continue
        body = next(f for f in library.function if f.signature.name == node.attr["f"].func.name)
        arg = body.signature.input_arg[inputs.index(name)].name
        ops |= _consumer_ops(body.node_def, arg, library)
    return ops


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fit_step_after_grappler_touches_table_rows_only(name, tmp_path):
    """In model.fit's optimized step, the table and its slots are only gathered and scattered."""
    config = dataclasses.replace(FIT_CONFIG, table_sizes=(1009, 30))
    model = build_model(config)
    model.compile(optimizer=make_optimizer(name, 0.05), loss="mse")
    model.optimizer.build(model.trainable_variables)  # slot initialisers out of the trace
    x, y = fit_data()
    consumers = optimized_resource_consumers(
        lambda: model.fit(x, y, batch_size=16, epochs=1, verbose=0), 1009, 4, tmp_path
    )
    assert len(consumers) >= 1 + SLOT_ARRAYS[name]
    for ops in consumers:
        assert ops and ops <= ROW_OPS, ops


# ----------------------------------------------------------------------------
# model.fit and saving
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fit_updates_only_touched_rows(name):
    keras.utils.set_random_seed(0)
    model = build_model(FIT_CONFIG)
    schedule = keras.optimizers.schedules.PolynomialDecay(
        0.05, decay_steps=10, end_learning_rate=0.01
    )
    model.compile(optimizer=make_optimizer(name, schedule), loss="mse")
    before = {v.path: v.numpy() for v in model.trainable_variables}
    x, y = fit_data()
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 2
    for variable in model.trainable_variables:
        assert not np.allclose(variable.numpy(), before[variable.path]), variable.path
    for t, table in enumerate(model.embedding_variables()):
        used = np.unique(x[SPARSE_KEY][:, t])
        unused = np.setdiff1d(np.arange(table.shape[0]), used)
        new, old = table.numpy(), before[table.path]
        np.testing.assert_array_equal(new[unused], old[unused])
        assert np.all(np.any(new[used] != old[used], axis=1))
        for slot in SLOT_NAMES[name]:
            value = slot_value(model.optimizer, table, slot)
            np.testing.assert_array_equal(value[unused], 0.0)
            assert np.all(np.any(value[used] != 0.0, axis=1))


@pytest.mark.parametrize("name", ["adagrad", "adam"])
def test_save_and_load_keeps_optimizer_state_and_resumes(name, tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model(FIT_CONFIG)
    learning_rate = (
        0.05
        if name == "adagrad"
        else keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=1, decay_rate=0.9)
    )
    model.compile(optimizer=make_optimizer(name, learning_rate), loss="mse")
    x, y = fit_data()
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    saved = {v.path: v.numpy() for v in model.optimizer.variables}
    restored = {v.path: v.numpy() for v in loaded.optimizer.variables}
    assert saved.keys() == restored.keys()
    for key, value in saved.items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)
    # Resuming: one more step from the saved state gives the same weights.
    x2, y2 = fit_data(seed=4, n=16)
    model.fit(x2, y2, batch_size=16, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x2, y2, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=TOL, rtol=TOL, err_msg=a.path)


# ----------------------------------------------------------------------------
# MirroredStrategy on two logical CPUs (subprocess)
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mirrored_report() -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "mirrored"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mirrored_lookup_uses_the_replica_component(mirrored_report):
    report = mirrored_report["lookup"]
    assert report["components_on_replica_devices"] == ["CPU:0", "CPU:1"]
    assert report["table_reads"] == ["ResourceGather"]


def test_mirrored_lookup_matches_single_device(mirrored_report):
    report = mirrored_report["lookup"]
    assert report["max_output_error"] < TOL
    assert report["max_gradient_error"] < TOL
    assert report["gradients_are_indexed_slices"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_mirrored_fit_matches_single_device(mirrored_report, name):
    report = mirrored_report["fit"][name]
    assert report["max_weight_error"] < TOL
    assert report["unused_rows_unchanged"]
    assert report["replicas_agree"]
    # The table's and each slot's component on both replicas, only gathered and scattered.
    assert report["table_and_slot_reads"] >= 2 * (1 + SLOT_ARRAYS[name])
    assert report["reads_rows_only"]


def _mirrored_checks() -> dict:
    """Runs in a fresh process: compares 2-replica MirroredStrategy with one device."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(5)
    tables0 = [rng.normal(size=(rows, DIM)).astype(np.float32) for rows in TABLE_SIZES]

    # Per-replica lookup: outputs and gradients of each replica's shard.
    single = EmbeddingBags(TABLE_SIZES, DIM)
    single.build(IDS.shape)
    with strategy.scope():
        mirrored = EmbeddingBags(TABLE_SIZES, DIM)
        mirrored.build(IDS.shape)
    for layer in (single, mirrored):
        for variable, value in zip(layer.tables, tables0, strict=True):
            variable.assign(value)
    shards = [IDS, IDS[::-1].copy()]
    seen_devices = []

    def replica_step(ids):
        component = replica_local_variable(mirrored.tables[0].value)
        assert not isinstance(component, tf.distribute.DistributedValues)
        seen_devices.append(tf.DeviceSpec.from_string(component.device))
        with tf.GradientTape() as tape:
            out = mirrored(ids)
            loss = tf.reduce_sum(out * out)
        return out, tape.gradient(loss, mirrored.tables)

    @tf.function
    def mirrored_step():
        ids = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(shards[ctx.replica_id_in_sync_group])
        )
        return strategy.run(replica_step, args=(ids,))

    outs, grads = mirrored_step()
    graph = mirrored_step.get_concrete_function().graph
    reads = set()
    for component in strategy.experimental_local_results(mirrored.tables[0].value):
        reads |= table_reads(graph, component.handle)
    output_error = gradient_error = 0.0
    all_slices = True
    for replica, ids in enumerate(shards):
        with tf.GradientTape() as tape:
            out = single(ids)
            loss = tf.reduce_sum(out * out)
        want_grads = tape.gradient(loss, single.tables)
        got_out = strategy.experimental_local_results(outs)[replica]
        output_error = max(output_error, float(np.max(np.abs(got_out.numpy() - out.numpy()))))
        for t in range(len(TABLE_SIZES)):
            got = strategy.experimental_local_results(grads[t])[replica]
            all_slices &= isinstance(got, tf.IndexedSlices)
            diff = dense_gradient(got) - dense_gradient(want_grads[t])
            gradient_error = max(gradient_error, float(np.max(np.abs(diff))))
    report = {
        "lookup": {
            "components_on_replica_devices": sorted(
                f"{d.device_type}:{d.device_index}" for d in seen_devices
            ),
            "table_reads": sorted(reads),
            "max_output_error": output_error,
            "max_gradient_error": gradient_error,
            "gradients_are_indexed_slices": bool(all_slices),
        },
        "fit": {},
    }

    # model.fit: 2 steps of a global batch of 16 (8 per replica, overlapping ids).
    x, y = fit_data()
    for name in OPTIMIZERS:
        keras.utils.set_random_seed(0)
        reference = build_model(FIT_CONFIG)
        weights = [v.numpy() for v in reference.trainable_variables]
        table0_before = reference.embedding_variables()[0].numpy()
        reference.compile(optimizer=make_optimizer(name, 0.05), loss="mse")
        reference.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        with strategy.scope():
            model = build_model(FIT_CONFIG)
            for variable, value in zip(model.trainable_variables, weights, strict=True):
                variable.assign(value)
            model.compile(optimizer=make_optimizer(name, 0.05), loss="mse")
            model.optimizer.build(model.trainable_variables)
        consumers = optimized_resource_consumers(
            functools.partial(model.fit, x, y, batch_size=16, epochs=1, shuffle=False, verbose=0),
            FIT_CONFIG.table_sizes[0],
            FIT_CONFIG.embedding_dim,
            tempfile.mkdtemp(),
        )
        error = max(
            float(np.max(np.abs(a.numpy() - b.numpy())))
            for a, b in zip(model.trainable_variables, reference.trainable_variables, strict=True)
        )
        table = model.embedding_variables()[0]
        components = [c.numpy() for c in strategy.experimental_local_results(table.value)]
        replicas_agree = all(np.array_equal(components[0], c) for c in components[1:])
        slots = slot_arrays(model.optimizer, table)
        for slot in slots:
            parts = [c.numpy() for c in strategy.experimental_local_results(slot.value)]
            replicas_agree &= all(np.array_equal(parts[0], p) for p in parts[1:])
        unused = np.setdiff1d(np.arange(FIT_CONFIG.table_sizes[0]), x[SPARSE_KEY][:, 0])
        unchanged = np.array_equal(components[0][unused], table0_before[unused]) and all(
            np.all(s.numpy()[unused] == 0.0) for s in slots
        )
        report["fit"][name] = {
            "max_weight_error": error,
            "unused_rows_unchanged": bool(unchanged),
            "replicas_agree": bool(replicas_agree),
            "table_and_slot_reads": len(consumers),
            "reads_rows_only": all(ops and ops <= ROW_OPS for ops in consumers),
        }
    return report


if __name__ == "__main__" and sys.argv[1:] == ["mirrored"]:
    print(json.dumps(_mirrored_checks()))
