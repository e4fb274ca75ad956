"""Tables spread over two ``MultiWorkerMirroredStrategy`` workers on 127.0.0.1
(``--embedding_placement=table_wise``): the weights of one-device training, each
table on exactly its planned worker, files one device reads, and a killed pair of
workers that resumes as if never stopped."""

import json
import os
import re
import signal
import time

import numpy as np
import pytest
from cli_check import PLACEMENT_MODEL, REPO, cli_job_command, job_env, run_cli_job
from loopback_workers import run_workers, start_workers

from dlrm_tf.config import OPTIMIZERS

TOL = 1e-5
TINY = [*PLACEMENT_MODEL, "--num_batches=4", "--num_indices_per_lookup=3", "--test_freq=2"]
SPREAD = ["--distribution_strategy=multi_worker_mirrored", "--embedding_placement=table_wise"]
PLAN_LINE = r"  worker (\d) CPU:0: (?:tables? ([\d, ]+) \([\d,]+ rows\); )?holds ([\d,]+)"


def worker_command(tmp_path, name: str, index: int, *flags: str) -> list[str]:
    return cli_job_command(
        tmp_path / f"{name}{index}.npz", *TINY, *SPREAD, *flags,
        f"--run_dir={tmp_path}/{name}{index}",
    )[1:]  # fmt: skip


def spread_job(tmp_path, name: str, *flags: str):
    """Two workers: (worker 0's weights, each worker's placed variables, outputs)."""
    outputs = run_workers(
        lambda i: worker_command(tmp_path, name, i, *flags), job_env(), lambda i: REPO, 300
    )
    weights = [load(tmp_path / f"{name}{i}.npz") for i in range(2)]
    for a, b in zip(*weights, strict=True):  # both workers end with the same model
        np.testing.assert_array_equal(a, b)
    placed = []
    for i in range(2):
        with open(tmp_path / f"{name}{i}.npz.devices.json") as f:
            placed.append(json.load(f))
    return weights[0], placed, outputs


def one_device_job(tmp_path, name: str, *flags: str):
    run_cli_job(tmp_path / f"{name}.npz", *TINY, *flags, f"--run_dir={tmp_path}/{name}")
    return load(tmp_path / f"{name}.npz")


def load(path) -> list[np.ndarray]:
    data = np.load(path)
    return [data[k] for k in data.files if k != "steps"]


def assert_same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b) == 12  # 4 tables, 4 + 4 MLP kernels and biases
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=TOL)


def check_placement(placed: list[list[dict]], stdout: str) -> None:
    """Each table's rows and slots on its planned worker only; each worker's bytes
    as the printed plan says."""
    plan = {}
    for line in stdout.splitlines():
        match = re.match(PLAN_LINE, line)
        if match:
            tables = [int(t) for t in match[2].split(", ")] if match[2] else []
            plan[int(match[1])] = (tables, int(match[3].replace(",", "")))
    assert sorted(plan) == [0, 1] and sorted(plan[0][0] + plan[1][0]) == [0, 1, 2, 3]
    for worker, entries in enumerate(placed):
        held = 0
        for entry in entries:
            table = re.search(r"embedding_table_(\d+)", entry["path"].replace("/", "_"))
            if table and int(table[1]) not in plan[worker][0]:
                assert entry["bytes"] == 0, entry  # another worker's table: no rows here
            held += entry["bytes"]
            assert entry["devices"] == ["CPU:0"], entry
        assert held == plan[worker][1], (worker, held, plan)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_table_wise_on_2_workers_trains_as_one_device(optimizer, tmp_path):
    flags = [f"--optimizer={optimizer}", "--learning_rate=0.05"]
    one = one_device_job(tmp_path, "one", *flags)
    spread, placed, outputs = spread_job(tmp_path, "spread", *flags)
    assert "Placement plan (table_wise over 2 device(s)" in outputs[0]
    check_placement(placed, outputs[0])
    assert_same_weights(one, spread)
    # Both workers evaluated the test data with the spread tables, to the same metrics.
    tests = [re.findall(r"Testing at - .*", out) for out in outputs]
    assert len(tests[0]) == 2 and tests[0] == tests[1]
    # The run moved the weights: not a comparison of two untrained models.
    still = one_device_job(tmp_path, "still", *flags, "--num_batches=1")
    assert any(np.abs(a - b).max() > 10 * TOL for a, b in zip(one, still, strict=True))


@pytest.mark.slow
def test_auto_over_2_workers_spreads_the_large_table_and_copies_the_rest(tmp_path):
    # 70,000 rows x d=4 x 4 bytes: 1.12 MB, above auto's 1 MiB; the rest far below. (SGD:
    # Adagrad's first step, lr * g / |g|, would turn the rounding of a gradient near 0,
    # summed in another order over the workers, into a visible difference.)
    flags = ["--optimizer=sgd", "--arch_embedding_size=50-70000-20-400"]
    one = one_device_job(tmp_path, "one", *flags)
    auto, placed, outputs = spread_job(tmp_path, "auto", *flags, "--embedding_placement=auto")
    assert "on every device: tables 0, 2, 3 (470 rows)" in outputs[0]
    assert "  worker 0 CPU:0: table 1 (70,000 rows); holds" in outputs[0]
    assert_same_weights(one, auto)
    # Worker 1 holds no table of its own: its stand-in for table 1 has no rows.
    sizes = [
        {e["path"]: e["bytes"] for e in entries if "embedding_table_1" in e["path"]}
        for entries in placed
    ]
    assert all(b > 0 for b in sizes[0].values()) and all(b == 0 for b in sizes[1].values())
    assert len(sizes[0]) == len(sizes[1]) == 1  # the table (SGD has no slot)


@pytest.mark.slow
def test_spread_over_workers_saves_loads_and_exports_as_one_device(tmp_path):
    from dlrm_tf.model.saving import load_model
    from export.session_loader import ServingSession
    from export.signatures import OUTPUT_KEY
    from input_pipeline.features import DENSE_KEY, SPARSE_KEY

    flags = ["--optimizer=adam", "--learning_rate=0.01"]
    files = [f"--save_model={tmp_path}/spread.keras", f"--export_dir={tmp_path}/spread_export"]
    spread, _, _ = spread_job(tmp_path, "spread", *flags, *files)
    one = one_device_job(
        tmp_path, "one", *flags, f"--save_model={tmp_path}/one.keras",
        f"--export_dir={tmp_path}/one_export",
    )  # fmt: skip
    assert_same_weights(one, spread)
    # The saved files (the best model by test AUC) load on one device, with the same weights.
    saved = [load_model(str(tmp_path / f"{name}.keras")) for name in ("one", "spread")]
    assert_same_weights(*[[w.numpy() for w in model.weights] for model in saved])
    rng = np.random.default_rng(0)
    inputs = {
        DENSE_KEY: rng.random((32, 4), dtype=np.float32),
        SPARSE_KEY: np.stack([rng.integers(0, n, 32) for n in (50, 3000, 20, 400)], axis=1),
    }
    served = {}
    for name in ("one", "spread"):
        with ServingSession(tmp_path / f"{name}_export" / "1") as session:
            served[name] = session.run("serving_default", inputs)[OUTPUT_KEY]
    np.testing.assert_allclose(served["one"], served["spread"], rtol=0, atol=TOL)
    # --load_model scatters the tables to their workers, optimizer state included.
    more = [f"--load_model={tmp_path}/spread.keras", "--nepochs=2", *flags]
    on_one = one_device_job(tmp_path, "more_one", *more)
    on_two, placed, outputs = spread_job(tmp_path, "more_spread", *more)
    assert "Loaded model state from" in outputs[0] and "it 4/4 of epoch 1," in outputs[0]
    check_placement(placed, outputs[0])
    assert_same_weights(on_one, on_two)
    assert any(np.abs(a - b).max() > 10 * TOL for a, b in zip(on_two, spread, strict=True))


@pytest.mark.slow
def test_spread_workers_killed_then_resumed_reproduce_the_uninterrupted_run(tmp_path):
    flags = ["--optimizer=adagrad", "--num_batches=400", "--print_freq=200", "--test_freq=0"]
    want, _, _ = spread_job(tmp_path, "whole", *flags)
    backup = tmp_path / "backup"
    resume = [*flags, f"--backup_dir={backup}", "--backup_every=40"]
    workers = start_workers(
        lambda i: worker_command(tmp_path, "resumed", i, *resume), job_env(), lambda i: REPO
    )
    index, deadline = backup / "checkpoint", time.time() + 240
    try:
        while time.time() < deadline and all(w.poll() is None for w in workers):
            if index.exists() and re.search(r"ckpt-(1\d\d|[23]\d\d)\b", index.read_text()):
                break
            time.sleep(0.02)
        assert all(w.poll() is None for w in workers), "the run ended before it was killed"
    finally:
        for w in workers:
            w.send_signal(signal.SIGKILL)
            w.wait()
    # Each worker keeps its own tables' backups.
    assert (backup / ".worker-1").is_dir()
    got, _, outputs = spread_job(tmp_path, "resumed", *resume)
    resumed = [re.search(r"Resumed from backup .*ckpt-(\d+) at step (\d+)", out) for out in outputs]
    assert all(resumed), outputs[0][-2000:]
    steps = {int(m[2]) for m in resumed}
    assert len(steps) == 1 and 100 <= steps.pop() < 400  # both from the same step
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_resume_takes_the_newest_step_every_worker_backed_up(tmp_path):
    """A kill between two workers' saves: the newer step exists for one worker only."""
    from dlrm_tf.training.backups import newest_common_backup

    chief, other = tmp_path, tmp_path / ".worker-1"
    other.mkdir()
    for directory, steps in ((chief, (40, 80)), (other, (40,))):
        for step in steps:
            (directory / f"ckpt-{step}.index").write_bytes(b"")
    (other / "ckpt-80_temp").mkdir()  # the save the kill interrupted
    shards = [str(chief), str(other)]
    assert newest_common_backup(str(other), shards) == os.path.join(other, "ckpt-40")
    assert newest_common_backup(str(chief), shards) == os.path.join(chief, "ckpt-40")
    (other / "ckpt-80.index").write_bytes(b"")
    assert newest_common_backup(str(chief), shards) == os.path.join(chief, "ckpt-80")
    assert newest_common_backup(str(chief), [*shards, str(tmp_path / "none")]) is None


def test_each_worker_checks_the_memory_of_its_own_tables():
    """A worker holds its tables; the chief, writing files, also a whole one-device copy."""
    from types import SimpleNamespace

    import tensorflow as tf

    from dlrm_tf.config import ModelConfig
    from dlrm_tf.training import memory, trainer
    from dlrm_tf.training.placement import plan_placement

    config = ModelConfig(embedding_dim=4, table_sizes=(50, 3000), bottom_mlp=(4, 4), top_mlp=(2, 1))
    plan = plan_placement(config, "sgd", ["worker 0 CPU:0", "worker 1 CPU:0"], "table_wise")
    cluster = tf.train.ClusterSpec({"worker": ["127.0.0.1:1", "127.0.0.1:2"]})

    def worker(index):
        resolver = SimpleNamespace(task_type="worker", task_id=index, cluster_spec=lambda: cluster)
        devices = ("/job:worker/replica:0/task:0/device:CPU:0",)
        return SimpleNamespace(
            cluster_resolver=resolver, extended=SimpleNamespace(worker_devices=devices)
        )

    mlp = plan.mlp_bytes
    assert trainer.host_bytes(plan, worker(0), copies=False) == mlp + 3000 * 16
    assert trainer.host_bytes(plan, worker(1), copies=False) == mlp + 50 * 16
    whole = mlp + 3050 * 16
    assert trainer.host_bytes(plan, worker(0), copies=True) == mlp + 3000 * 16 + whole
    held = mlp + 50 * 16
    assert memory.check_placed_memory(held, available_bytes=2 * held) == held
    with pytest.raises(memory.ModelTooLargeError, match=f"hold {held:,} bytes of weights"):
        memory.check_placed_memory(held, available_bytes=held)
