"""Training with the tables spread over devices (``--embedding_placement``) under
``MirroredStrategy`` on logical CPUs: the same weights as one device, each table and
its slots on exactly the planned device, and files a single device reads back."""

import dataclasses
import json
import re

import numpy as np
import pytest
from cli_check import PLACEMENT_MODEL, cli_job_command, kill_after_backup, run_cli_job

from dlrm_tf.config import OPTIMIZERS

TOL = 1e-5
TINY = [*PLACEMENT_MODEL, "--num_batches=4", "--num_indices_per_lookup=3"]


def job(tmp_path, name: str, *extra: str):
    """One CLI run: (trained weights, where each weight and slot lives, stdout)."""
    out = tmp_path / f"{name}.npz"
    proc = run_cli_job(out, *TINY, f"--run_dir={tmp_path}/{name}", *extra)
    data = np.load(out)
    with open(f"{out}.devices.json") as f:
        placed = json.load(f)
    return [data[k] for k in data.files if k != "steps"], placed, proc.stdout


PLAN_LINE = r"  (CPU:\d+): (?:tables? ([\d, ]+) \([\d,]+ rows\); )?holds ([\d,]+)"


def planned(stdout: str) -> dict[str, tuple[list[int], int]]:
    """The printed plan: device -> (its own tables, the bytes it holds)."""
    plan = {}
    for line in stdout.splitlines():
        match = re.match(PLAN_LINE, line)
        if match:
            tables = [int(t) for t in match[2].split(", ")] if match[2] else []
            plan[match[1]] = (tables, int(match[3].replace(",", "")))
    return plan


def check_placement(placed: list[dict], stdout: str, devices: int) -> None:
    """Each table and its slots on the one planned device; every device's bytes as planned."""
    plan = planned(stdout)
    assert sorted(plan) == [f"CPU:{i}" for i in range(devices)]
    owner = {t: device for device, (tables, _) in plan.items() for t in tables}
    assert sorted(owner) == [0, 1, 2, 3]
    held = dict.fromkeys(plan, 0)
    for entry in placed:
        table = re.search(r"embedding_table_(\d+)", entry["path"].replace("/", "_"))
        if table:
            assert entry["devices"] == [owner[int(table[1])]], entry
        else:
            assert sorted(entry["devices"]) == sorted(plan), entry
        for device in entry["devices"]:
            held[device] += entry["bytes"]
    assert held == {device: total for device, (_, total) in plan.items()}


def assert_same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b) == 12  # 4 tables, 4 + 4 MLP kernels and biases
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=TOL)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_table_wise_on_2_devices_trains_as_one_device(optimizer, tmp_path):
    flags = [f"--optimizer={optimizer}", "--learning_rate=0.05"]
    one, _, _ = job(tmp_path, "one", *flags)
    spread, placed, out = job(
        tmp_path, "spread", *flags, "--num_cpu_replicas=2", "--embedding_placement=table_wise"
    )
    assert "Placement plan (table_wise over 2 device(s)" in out
    assert "Finished training it 4/4" in out
    check_placement(placed, out, 2)
    assert_same_weights(one, spread)
    # The run moved the tables: not a comparison of two untrained models.
    replicated, _, _ = job(tmp_path, "still", *flags, "--num_batches=1")
    assert any(np.abs(a - b).max() > 10 * TOL for a, b in zip(one, replicated, strict=True))


@pytest.mark.slow
def test_table_wise_on_4_devices_and_auto_on_2(tmp_path):
    one, _, _ = job(tmp_path, "one", "--optimizer=adagrad")
    four, placed, out = job(
        tmp_path, "four", "--optimizer=adagrad", "--num_cpu_replicas=4",
        "--embedding_placement=table_wise",
    )  # fmt: skip
    check_placement(placed, out, 4)
    assert_same_weights(one, four)
    auto, placed, out = job(
        tmp_path, "auto", "--optimizer=adagrad", "--num_cpu_replicas=2",
        "--embedding_placement=auto",
    )  # fmt: skip
    # auto: the 3000-row table (96,000 bytes with its slot) is far below the 1 MiB
    # threshold, like the others: every table is copied to both devices.
    assert "on every device: tables 0, 1, 2, 3" in out
    assert all(sorted(e["devices"]) == ["CPU:0", "CPU:1"] for e in placed)
    assert_same_weights(one, auto)


def test_spread_run_saves_loads_and_exports_as_a_one_device_model(tmp_path):
    from dlrm_tf.model.saving import load_model
    from export.session_loader import ServingSession
    from export.signatures import OUTPUT_KEY
    from input_pipeline.features import DENSE_KEY, SPARSE_KEY

    runs = {}
    spread = ["--num_cpu_replicas=2", "--embedding_placement=table_wise"]
    for name, extra in (("one", []), ("spread", spread)):
        weights, _, _ = job(
            tmp_path, name, "--optimizer=adam", "--learning_rate=0.01",
            f"--save_model={tmp_path}/{name}.keras", f"--export_dir={tmp_path}/{name}_export",
            *extra,
        )  # fmt: skip
        runs[name] = weights
    assert_same_weights(runs["one"], runs["spread"])
    # The saved file loads on one device with the spread run's weights.
    loaded = load_model(str(tmp_path / "spread.keras"))
    assert_same_weights([w.numpy() for w in loaded.weights], runs["spread"])
    # TF Serving's loader runs both exports alike.
    rng = np.random.default_rng(0)
    inputs = {
        DENSE_KEY: rng.random((32, 4), dtype=np.float32),
        SPARSE_KEY: np.stack([rng.integers(0, n, 32) for n in (50, 3000, 20, 400)], axis=1),
    }
    served = {}
    for name in runs:
        with ServingSession(tmp_path / f"{name}_export" / "1") as session:
            served[name] = session.run("serving_default", inputs)[OUTPUT_KEY]
    np.testing.assert_allclose(served["one"], served["spread"], rtol=0, atol=TOL)
    np.testing.assert_allclose(served["spread"], loaded(inputs).numpy(), rtol=0, atol=TOL)
    # --load_model puts the tables back on their devices and trains on from there.
    more = [f"--load_model={tmp_path}/spread.keras", "--nepochs=2", "--optimizer=adam"]
    on_one, _, _ = job(tmp_path, "more_one", *more, "--learning_rate=0.01")
    on_two, placed, out = job(tmp_path, "more_spread", *more, "--learning_rate=0.01", *spread)
    assert "Loaded model state from" in out and "it 4/4 of epoch 1," in out
    check_placement(placed, out, 2)
    assert_same_weights(on_one, on_two)
    assert any(np.abs(a - b).max() > 10 * TOL for a, b in zip(on_two, runs["spread"], strict=True))


def test_spreading_over_workers_of_several_devices_is_refused_before_training():
    """Two workers of two devices each: a spreading plan stops the run with one line
    (one device per worker spreads, see ``test_worker_tables``)."""
    from types import SimpleNamespace

    from dlrm_tf.config import ConfigError, ModelConfig
    from dlrm_tf.training import trainer

    devices = tuple(f"/job:worker/replica:0/task:0/device:CPU:{i}" for i in range(2))
    strategy = SimpleNamespace(
        num_replicas_in_sync=4, extended=SimpleNamespace(worker_devices=devices)
    )
    config = ModelConfig(embedding_dim=4, table_sizes=(50, 3000), bottom_mlp=(4, 4), top_mlp=(2, 1))
    lines = []
    train = trainer.TrainConfig(embedding_placement="table_wise", optimizer="sgd")
    with pytest.raises(ConfigError, match="needs one device per worker, and each of these has 2"):
        trainer.plan_tables(config, train, strategy, lines.append)
    assert lines[0].startswith("Placement plan (table_wise over 4 device(s)")
    assert "  worker 1 CPU:1: " in "\n".join(lines)
    # Copies on every device stay possible there.
    replicated = dataclasses.replace(train, embedding_placement="auto")
    plan = trainer.plan_tables(config, replicated, strategy, lines.append)
    assert not plan.spread and trainer.table_devices(plan, strategy) is None


@pytest.mark.slow
def test_spread_run_killed_then_resumed_reproduces_the_uninterrupted_run(tmp_path):
    flags = [
        "--optimizer=adagrad", "--num_batches=600", "--print_freq=300", "--backup_every=50",
        "--num_cpu_replicas=2", "--embedding_placement=table_wise",
    ]  # fmt: skip
    want, _, _ = job(tmp_path, "whole", *flags)
    backup = tmp_path / "backup"
    cmd = cli_job_command(
        tmp_path / "resumed.npz", *TINY, *flags, f"--backup_dir={backup}",
        f"--run_dir={tmp_path}/resumed",
    )  # fmt: skip
    kill_after_backup(cmd, backup, r"ckpt-(1\d\d|[2-9]\d\d)\b")
    got, _, stdout = job(tmp_path, "resumed", *flags, f"--backup_dir={backup}")
    resumed = re.search(r"Resumed from backup .* at step (\d+)", stdout)
    assert resumed and 100 <= int(resumed[1]) < 600, stdout[-2000:]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
