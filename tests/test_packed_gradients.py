"""The tables' sparse gradients all-reduced as one (``packed_gradients``) under a
2-replica MirroredStrategy: the same sums as one reduction per table, bit for bit,
and a number of collectives that does not grow with the number of tables."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

DIM = 4


@pytest.fixture(scope="module")
def report() -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "check"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_packed_reduction_equals_one_reduction_per_table(report):
    # Unequal row counts on the two replicas (the padded gather), int32 and int64
    # ids, a dense gradient, a table of another width and a None gradient.
    assert report["kinds"] == ["slices", "slices", "slices", "dense", "slices", "none"]
    assert report["identical"], report["mismatches"]
    assert report["replicas_agree"]


def test_collectives_do_not_grow_with_the_number_of_tables(report):
    packed, per_table = report["collectives_packed"], report["collectives_per_table"]
    assert packed["2"] == packed["8"] > 0
    assert per_table["8"] > per_table["2"] >= packed["2"]


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
def test_optimizer_step_reduces_the_tables_together(report, name):
    """A mirrored optimizer step over 2 or 8 tables: as many collectives either way,
    and each table moved by the replicas' summed gradient."""
    step = report["optimizer"][name]
    assert step["collectives"]["2"] == step["collectives"]["8"] > 0
    assert step["max_error"] < 1e-6


def test_the_environment_switch_reduces_each_table_on_its_own(report):
    step = report["optimizer_switched_off"]["sgd"]
    assert step["collectives"]["8"] > step["collectives"]["2"]
    assert step["max_error"] < 1e-6


def _replica_gradients(replica: int, num_tables: int):
    """Replica ``replica``'s gradients of ``num_tables`` tables of DIM columns, plus a
    dense gradient, a table of width 2 and a missing gradient."""
    import tensorflow as tf

    rng = np.random.default_rng([replica, num_tables])
    pairs = []
    for t in range(num_tables):
        rows = 10 + t
        n = 3 + 2 * replica + t  # unequal across replicas
        dtype = tf.int32 if t % 2 else tf.int64
        ids = tf.constant(rng.integers(0, rows, n), dtype)
        values = tf.constant(rng.normal(size=(n, DIM)).astype(np.float32))
        pairs.append((tf.IndexedSlices(values, ids, tf.constant([rows, DIM], tf.int64)), rows))
    pairs.append((tf.constant(rng.normal(size=(3, DIM)).astype(np.float32)), 3))
    ids = tf.constant(rng.integers(0, 7, 2 + replica), tf.int64)
    values = tf.constant(rng.normal(size=(2 + replica, 2)).astype(np.float32))
    pairs.append((tf.IndexedSlices(values, ids, tf.constant([7, 2], tf.int64)), 7))
    pairs.append((None, 5))
    return pairs


def _variables(num_tables: int):
    import tensorflow as tf

    sizes = [(10 + t, DIM) for t in range(num_tables)] + [(3, DIM), (7, 2), (5, DIM)]
    return [tf.Variable(tf.zeros(shape)) for shape in sizes]


def _as_arrays(gradient):
    import tensorflow as tf

    if gradient is None:
        return "none", None
    if isinstance(gradient, tf.IndexedSlices):
        return "slices", (
            gradient.values.numpy(),
            gradient.indices.numpy(),
            str(gradient.indices.dtype.name),
            gradient.dense_shape.numpy().tolist(),
        )
    return "dense", (gradient.numpy(),)


def _collectives(concrete) -> int:
    graph = concrete.graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return sum(n.op.startswith("Collective") for n in nodes)


def _optimizer_steps(strategy, names=("sgd", "adagrad", "adam")) -> dict:
    """Per optimizer: collectives of an ``apply_gradients`` step over 2 and 8 tables
    under ``strategy``, and the largest error of one SGD-like step against the
    NumPy sum of the replicas' gradients (first step of each rule, lr 0.1)."""
    import keras
    import tensorflow as tf

    from dlrm_tf.model.optimizers import make_optimizer

    report = {}
    for name in names:
        counts, error = {}, 0.0
        for num_tables in (2, 8):
            with strategy.scope():
                tables = [
                    keras.Variable(np.ones([10 + t, DIM], np.float32)) for t in range(num_tables)
                ]
                optimizer = make_optimizer(name, 0.1)
                optimizer.build(tables)

            def replica_fn(tables=tables, optimizer=optimizer, num_tables=num_tables):
                context = tf.distribute.get_replica_context()
                replica = int(tf.get_static_value(context.replica_id_in_sync_group))
                grads = [g for g, _ in _replica_gradients(replica, num_tables)[:num_tables]]
                optimizer.apply_gradients(zip(grads, tables, strict=True))

            step = tf.function(lambda replica_fn=replica_fn: strategy.run(replica_fn))
            counts[str(num_tables)] = _collectives(step.get_concrete_function())
            step()
            for t, table in enumerate(tables):
                total = np.zeros([10 + t, DIM], np.float32)
                for replica in range(2):
                    g = _replica_gradients(replica, num_tables)[t][0]
                    np.add.at(total, g.indices.numpy(), g.values.numpy())
                want = 1.0 - 0.1 * _first_step_direction(name, total)
                got = strategy.experimental_local_results(table.value)
                error = max(error, *(float(np.max(np.abs(g.numpy() - want))) for g in got))
        report[name] = {"collectives": counts, "max_error": error}
    return report


def _optimizer_steps_switched_off(strategy) -> dict:
    """``_optimizer_steps`` with ``DLRM_TF_PACKED_GRADIENTS=0`` (read when a step traces)."""
    from dlrm_tf.model import packed_gradients

    os.environ[packed_gradients.SWITCH_ENV] = "0"
    try:
        return _optimizer_steps(strategy, names=("sgd",))
    finally:
        del os.environ[packed_gradients.SWITCH_ENV]


def _first_step_direction(name: str, gradient: np.ndarray) -> np.ndarray:
    """The first step's direction of each rule from zero slots (untouched rows: 0)."""
    if name == "sgd":
        return gradient
    if name == "adagrad":
        return gradient / (np.sqrt(gradient * gradient) + 1e-10)
    # Lazy Adam's first step, m = (1-b1) g and v = (1-b2) g^2 (untouched rows keep 0):
    # sqrt(1-b2) / (1-b1) * m / (sqrt(v) + eps).
    b2, eps = 0.999, 1e-8
    step = np.sqrt(1 - b2) * gradient / (np.sqrt(1 - b2) * np.abs(gradient) + eps)
    return np.where(gradient == 0, 0.0, step)


def _check() -> dict:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    from dlrm_tf.model import packed_gradients

    def reduce_fn(num_tables: int, packed: bool):
        variables = _variables(num_tables)

        def replica_fn():
            context = tf.distribute.get_replica_context()
            replica = int(tf.get_static_value(context.replica_id_in_sync_group))
            grads = [g for g, _ in _replica_gradients(replica, num_tables)]
            if packed:
                pairs = packed_gradients.all_reduce_sum(
                    context, list(zip(grads, variables, strict=True))
                )
                return [g for g, _ in pairs]
            present = [g for g in grads if g is not None]
            reduced = iter(context.all_reduce(tf.distribute.ReduceOp.SUM, present))
            return [None if g is None else next(reduced) for g in grads]

        @tf.function
        def step():
            return strategy.run(replica_fn)

        return step

    results = {}
    for packed in (True, False):
        outs = reduce_fn(3, packed)()
        results[packed] = [
            [_as_arrays(g) for g in replica]
            for replica in zip(
                *[
                    strategy.experimental_local_results(o) if o is not None else (None, None)
                    for o in outs
                ],
                strict=True,
            )
        ]
    mismatches = []
    for replica, (got, want) in enumerate(zip(results[True], results[False], strict=True)):
        for k, ((kind_a, a), (kind_b, b)) in enumerate(zip(got, want, strict=True)):
            same = kind_a == kind_b and (
                a is None
                or all(
                    np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
                    for x, y in zip(a, b, strict=True)
                )
            )
            if not same:
                mismatches.append(f"replica {replica} gradient {k}")
    first, second = results[True]
    agree = all(
        a[0] == b[0] and (a[1] is None or np.array_equal(a[1][0], b[1][0]))
        for a, b in zip(first, second, strict=True)
    )
    return {
        "kinds": [kind for kind, _ in first],
        "identical": not mismatches,
        "mismatches": mismatches,
        "replicas_agree": bool(agree),
        "collectives_packed": {
            str(n): _collectives(reduce_fn(n, True).get_concrete_function()) for n in (2, 8)
        },
        "collectives_per_table": {
            str(n): _collectives(reduce_fn(n, False).get_concrete_function()) for n in (2, 8)
        },
        "optimizer": _optimizer_steps(strategy),
        "optimizer_switched_off": _optimizer_steps_switched_off(strategy),
    }


if __name__ == "__main__" and sys.argv[1:] == ["check"]:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    print(json.dumps(_check()))
