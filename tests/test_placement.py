"""The embedding placement plan: greedy table-wise balance against brute force and
hand sums, replication, auto's threshold, the refusal's arithmetic, and the CLI."""

import itertools
import os

import numpy as np
import pytest
from cli_check import PLACEMENT_MODEL, REPO, run_cli_job, run_module

from dlrm_tf.config import PLACEMENTS, ModelConfig
from dlrm_tf.training.memory import ModelTooLargeError, memory_plan
from dlrm_tf.training.placement import format_placement, plan_placement

SLOTS = {"sgd": 0, "adagrad": 1, "adam": 2}  # the optimizers' float32 values per weight


def config(tables, d=2):
    # MLPs 4-3-d and (d + dot pairs)-1: small, their size counted by hand below.
    return ModelConfig(embedding_dim=d, table_sizes=tables, bottom_mlp=(4, 3, d), top_mlp=(1,))


def mlp_params(tables, d=2):
    pairs = (len(tables) + 1) * len(tables) // 2
    return (4 * 3 + 3) + (3 * d + d) + (d + pairs) + 1


def table_bytes(rows, d, optimizer):
    return rows * d * 4 * (1 + SLOTS[optimizer])


def by_device(plan):
    """Device -> the tables the plan puts on it, in table order."""
    return {dev: [t.table for t in plan.tables if dev in t.devices] for dev in plan.devices}


def test_greedy_plan_by_hand():
    # Rows 100, 80, 60, 50, 40 at d=2, sgd (8 bytes a row), on 2 devices. Largest first to
    # the lighter device: 100 -> A; 80 -> B; 60 -> B (80 < 100); 50 -> A (140 > 100);
    # 40 -> B (150 > 140): A holds tables 0, 3 (150 rows), B tables 1, 2, 4 (180 rows).
    tables = (100, 80, 60, 50, 40)
    plan = plan_placement(config(tables), "sgd", ["A", "B"], "table_wise")
    assert by_device(plan) == {"A": [0, 3], "B": [1, 2, 4]}
    mlp = mlp_params(tables) * 4
    assert plan.device_bytes() == {"A": mlp + 150 * 8, "B": mlp + 180 * 8}
    # The reference's round-robin (table k on device k % 2) gives A 200 rows and B 130:
    # an imbalance of 70 rows against the greedy plan's 30.
    imbalance = max(plan.device_bytes().values()) - min(plan.device_bytes().values())
    assert imbalance == 30 * 8 < 70 * 8


def test_ties_go_to_the_earlier_device_and_the_lower_table():
    plan = plan_placement(config((10, 10, 10, 10, 10)), "adagrad", ["X", "Y", "Z"], "table_wise")
    assert by_device(plan) == {"X": [0, 3], "Y": [1, 4], "Z": [2]}


def optimal_max_rows(tables, ndevices):
    """The smallest largest-device load over every assignment (brute force)."""
    best = None
    for assignment in itertools.product(range(ndevices), repeat=len(tables)):
        loads = [0] * ndevices
        for rows, device in zip(tables, assignment, strict=True):
            loads[device] += rows
        best = max(loads) if best is None else min(best, max(loads))
    return best


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_greedy_plan_against_brute_force(seed, optimizer):
    rng = np.random.default_rng(seed)
    ndevices = int(rng.integers(2, 4))
    tables = tuple(int(n) for n in rng.integers(1, 2000, size=int(rng.integers(3, 7))))
    d = 4
    devices = [f"CPU:{i}" for i in range(ndevices)]
    plan = plan_placement(config(tables, d), optimizer, devices, "table_wise")
    assert sorted(t for ts in by_device(plan).values() for t in ts) == list(range(len(tables)))
    mlp = mlp_params(tables, d) * 4 * (1 + SLOTS[optimizer])
    loads = {dev: sum(tables[t] for t in ts) for dev, ts in by_device(plan).items()}
    assert plan.device_bytes() == {
        dev: mlp + table_bytes(rows, d, optimizer) for dev, rows in loads.items()
    }
    # Largest-first greedy is within 4/3 - 1/(3m) of the best assignment (Graham's
    # bound), and a device ends at most one table (the largest) above the lightest.
    optimum = optimal_max_rows(tables, ndevices)
    assert max(loads.values()) <= (4 / 3 - 1 / (3 * ndevices)) * optimum
    assert max(loads.values()) - min(loads.values()) <= max(tables)


def test_replicated_puts_every_table_on_every_device():
    tables = (100, 80, 60)
    plan = plan_placement(config(tables), "adagrad", ["CPU:0", "CPU:1"])
    assert by_device(plan) == {"CPU:0": [0, 1, 2], "CPU:1": [0, 1, 2]}
    every = (mlp_params(tables) + 240 * 2) * 4 * 2  # weights + 1 adagrad slot
    assert plan.device_bytes() == {"CPU:0": every, "CPU:1": every}
    assert every == memory_plan(config(tables), "adagrad").replica_bytes
    assert not plan.spread


def test_auto_copies_the_tables_under_the_threshold():
    # d=4, adam: 4 * 4 * 3 = 48 bytes a row; 1 MiB = 21,845.33 rows.
    tables = (21_845, 21_846, 100, 50_000)
    plan = plan_placement(config(tables, 4), "adam", ["A", "B"], "auto")
    assert by_device(plan) == {"A": [0, 2, 3], "B": [0, 1, 2]}
    assert [len(t.devices) for t in plan.tables] == [2, 1, 2, 1]
    mlp = mlp_params(tables, 4) * 12  # 4 bytes x (1 weight + 2 adam slots)
    shared = (21_845 + 100) * 48
    assert plan.device_bytes() == {"A": mlp + shared + 50_000 * 48, "B": mlp + shared + 21_846 * 48}
    lowered = plan_placement(config(tables, 4), "adam", ["A", "B"], "auto", threshold_bytes=4801)
    assert [len(t.devices) for t in lowered.tables] == [1, 1, 2, 1]


def test_one_device_is_the_trivial_plan_for_every_policy():
    tables = (100, 80, 60)
    plans = [plan_placement(config(tables), "sgd", ["CPU:0"], p) for p in PLACEMENTS]
    assert all(by_device(p) == {"CPU:0": [0, 1, 2]} and not p.spread for p in plans)
    assert len({tuple(p.device_bytes().values()) for p in plans}) == 1


def test_a_plan_that_cannot_fit_names_the_table_and_the_numbers():
    # Rows 100, 80, 60 at d=2 with adagrad (16 bytes a row) on 2 devices: 100 -> A,
    # 80 -> B, then 60 (960 bytes) -> B, which holds the MLPs and 1,280 bytes.
    tables = (100, 80, 60)
    mlp = mlp_params(tables) * 8  # weights + 1 slot, 4 bytes each
    held = mlp + 80 * 16
    limit = held + 959
    with pytest.raises(ModelTooLargeError) as err:
        plan_placement(config(tables), "adagrad", ["A", "B"], "table_wise", limit_bytes=limit)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("embedding table 2 (60 rows, 960 bytes")
    assert "does not fit on B (the least loaded device)" in message
    assert f"already holds {held:,} bytes" in message
    assert f"= {held + 960:,} bytes" in message and f"> its limit {limit:,} bytes" in message
    plan_placement(config(tables), "adagrad", ["A", "B"], "table_wise", limit_bytes=limit + 1)
    # Replicated, every device must hold every table: the first that overflows is named.
    with pytest.raises(ModelTooLargeError, match=r"embedding table 1 \(80 rows.* on every device"):
        plan_placement(config(tables), "adagrad", ["A", "B"], limit_bytes=mlp + 100 * 16 + 1279)


def test_the_plan_lines():
    tables = (100, 80, 60, 5)
    plan = plan_placement(config(tables), "sgd", ["CPU:0", "CPU:1"], "auto", threshold_bytes=100)
    mlp = mlp_params(tables) * 4
    assert format_placement(plan) == [
        f"Placement plan (auto over 2 device(s), weights + sgd slots): MLPs {mlp:,} bytes "
        "(0.0 MiB) on every device; on every device: table 3 (5 rows)",
        f"  CPU:0: table 0 (100 rows); holds {mlp + 105 * 8:,} bytes (0.0 MiB)",
        f"  CPU:1: tables 1, 2 (140 rows); holds {mlp + 145 * 8:,} bytes (0.0 MiB)",
    ]


TINY = [*PLACEMENT_MODEL, "--num_batches=3", "--optimizer=adagrad"]
TINY_MLP = (4 * 8 + 8) + (8 * 4 + 4) + (14 * 8 + 8) + (8 + 1)  # top input: 4 + 10 dot pairs


def test_cli_prints_the_plan_then_trains_with_it(tmp_path):
    proc = run_module(
        "dlrm_tf.main", *TINY, f"--run_dir={tmp_path}/run", "--num_cpu_replicas=2",
        "--embedding_placement=table_wise", "--export_dir=", "--save_model=",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlp = TINY_MLP * 8  # weights + 1 adagrad slot
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Placement plan"))
    assert lines[start : start + 3] == [
        f"Placement plan (table_wise over 2 device(s), weights + adagrad slots): MLPs "
        f"{mlp:,} bytes (0.0 MiB) on every device",
        f"  CPU:0: table 1 (3,000 rows); holds {mlp + 3000 * 32:,} bytes (0.1 MiB)",
        f"  CPU:1: tables 0, 2, 3 (470 rows); holds {mlp + 470 * 32:,} bytes (0.0 MiB)",
    ]
    assert os.path.exists(tmp_path / "run" / "history.json")
    assert "Finished training it 3/3" in proc.stdout


def train_weights(tmp_path, name, *extra):
    out = tmp_path / f"{name}.npz"
    proc = run_cli_job(out, *TINY, f"--run_dir={tmp_path}/{name}", *extra)
    data = np.load(out)
    return [data[k] for k in data.files if k != "steps"], proc.stdout


def test_one_device_trains_as_replicated(tmp_path):
    replicated, out1 = train_weights(tmp_path, "replicated")
    table_wise, out2 = train_weights(tmp_path, "table_wise", "--embedding_placement=table_wise")
    assert "Placement plan" not in out1
    assert "Placement plan (table_wise over 1 device(s)" in out2
    assert "on every device: tables 0, 1, 2, 3 (3,470 rows)" in out2
    assert "Finished training it 3/3" in out2
    assert len(replicated) == len(table_wise) == 12  # 4 tables, 4 + 4 MLP kernels and biases
    for a, b in zip(replicated, table_wise, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_readme_example_is_the_plan_of_criteo_kaggle():
    from input_pipeline.criteo import KAGGLE_CARDINALITIES

    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("#### Placement") :]
    start = section.index("```\n") + 4
    block = section[start : section.index("\n```", start)]
    kaggle = ModelConfig(
        embedding_dim=16, table_sizes=KAGGLE_CARDINALITIES, bottom_mlp=(13, 512, 256, 64, 16),
        top_mlp=(512, 256, 1),
    )  # fmt: skip
    gpus = [f"GPU:{i}" for i in range(4)]
    assert block.splitlines() == format_placement(plan_placement(kaggle, "adagrad", gpus, "auto"))
    replicated = plan_placement(kaggle, "adagrad", gpus).device_bytes()["GPU:0"]
    assert f"`replicated` would put {replicated / 2**30:.3f} GiB on each" in " ".join(text.split())


def test_the_devices_of_several_workers_are_named_by_worker():
    from types import SimpleNamespace

    from dlrm_tf.training.trainer import plan_devices

    local = tuple(f"/job:worker/replica:0/task:0/device:CPU:{i}" for i in range(2))
    two_workers = SimpleNamespace(extended=SimpleNamespace(worker_devices=local),
                                  num_replicas_in_sync=4)  # fmt: skip
    assert plan_devices(two_workers) == [
        "worker 0 CPU:0", "worker 0 CPU:1", "worker 1 CPU:0", "worker 1 CPU:1",
    ]  # fmt: skip
    one_host = SimpleNamespace(extended=SimpleNamespace(worker_devices=local),
                               num_replicas_in_sync=2)  # fmt: skip
    assert plan_devices(one_host) == ["CPU:0", "CPU:1"]
