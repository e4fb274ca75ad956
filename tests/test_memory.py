"""The up-front memory check: parameter arithmetic and the failure message."""

import pytest

from dlrm_tf.config import ModelConfig
from dlrm_tf.training.memory import (
    DiskSpaceError,
    ModelTooLargeError,
    check_disk,
    check_memory,
    disk_needs,
    format_plan,
    memory_plan,
    parameter_counts,
    required_bytes,
)
from input_pipeline.criteo import KAGGLE_CARDINALITIES

KAGGLE = KAGGLE_CARDINALITIES  # its values are pinned in test_criteo.py


def kaggle_config(d=16):
    return ModelConfig(
        embedding_dim=d, table_sizes=KAGGLE, bottom_mlp=(13, 512, 256, 64, d), top_mlp=(512, 256, 1)
    )


def test_parameter_counts_by_hand():
    cfg = ModelConfig(
        embedding_dim=2, table_sizes=(4, 3, 2), bottom_mlp=(4, 3, 2), top_mlp=(4, 2, 1)
    )
    embedding, mlp = parameter_counts(cfg)
    assert embedding == 9 * 2
    # bottom 4->3->2, top 8->4->2->1 (8 = 2 + 6 dot pairs)
    assert mlp == (4 * 3 + 3) + (3 * 2 + 2) + (8 * 4 + 4) + (4 * 2 + 2) + (2 * 1 + 1)
    assert required_bytes(cfg, "sgd") == (18 + mlp) * 4
    assert required_bytes(cfg, "adam", replicas_per_host=2) == (18 + mlp) * 4 * 3 * 2


def test_kaggle_tables_are_33_8m_rows():
    embedding, _ = parameter_counts(kaggle_config())
    assert embedding == 33_762_577 * 16


def test_too_large_fails_early_with_the_arithmetic():
    cfg = kaggle_config(d=128)
    with pytest.raises(ModelTooLargeError) as err:
        check_memory(cfg, "adagrad", available_bytes=8 * 2**30)
    message = str(err.value)
    assert "33,762,577 rows x 128" in message
    assert "1 weight + 1 adagrad slots" in message
    assert "8.00 GiB available" in message
    assert check_memory(kaggle_config(), "sgd", available_bytes=64 * 2**30) == required_bytes(
        kaggle_config(), "sgd"
    )


def planned_config():
    # 3 tables of 1.75M rows in all, d = 32; MLPs 13-512-256-32 and 38-512-256-1
    # (38 = 32 + 6 dot pairs of the 4 vectors).
    return ModelConfig(
        embedding_dim=32, table_sizes=(1_000_000, 500_000, 250_000),
        bottom_mlp=(13, 512, 256, 32), top_mlp=(512, 256, 1),
    )  # fmt: skip


MLP_PARAMS = (13 * 512 + 512) + (512 * 256 + 256) + (256 * 32 + 32) + (
    38 * 512 + 512) + (512 * 256 + 256) + (256 + 1)  # fmt: skip
TABLE_BYTES = 1_750_000 * 32 * 4
CHECKPOINT = (TABLE_BYTES + MLP_PARAMS * 4) * 2 + 2**20  # adagrad: weights + 1 slot, + 1 MiB
EXPORT = TABLE_BYTES + MLP_PARAMS * 4 + 8 * 2**20 + 5000  # weights, graph allowance, assets


def test_memory_plan_line_by_hand():
    plan = memory_plan(planned_config(), "adagrad", replicas_per_host=2, export_assets=5000)
    line = format_plan(plan)
    gib = 2**30
    assert f"tables 1,750,000 rows x 32 = {TABLE_BYTES / gib:.3f} GiB" in line  # 0.209
    assert f"their adagrad slots {TABLE_BYTES / gib:.3f} GiB" in line
    assert f"MLPs {MLP_PARAMS * 4 / 2**20:.1f} MiB" in line  # 1.1 MiB
    host = (TABLE_BYTES + MLP_PARAMS * 4) * 2 * 2
    assert f"2 replica(s) in host memory: {host / gib:.3f} GiB" in line  # 0.839
    assert f"backup) {CHECKPOINT / gib:.3f} GiB" in line  # 0.420
    assert f"an export (--export_dir) {EXPORT / gib:.3f} GiB" in line  # 0.218
    assert "0.209 GiB" in line and "0.839 GiB" in line and "0.420 GiB" in line


def test_disk_needs_by_hand(tmp_path):
    plan = memory_plan(planned_config(), "adagrad", export_assets=5000)
    needs = disk_needs(
        plan, save_model=str(tmp_path / "best.keras"), backup_dir=str(tmp_path / "backup"),
        export_dir=str(tmp_path / "export"), backup_copies=3,
    )  # fmt: skip
    assert [(n.flag, n.bytes) for n in needs] == [
        ("--save_model", CHECKPOINT), ("--backup_dir", 3 * CHECKPOINT), ("--export_dir", EXPORT),
    ]  # fmt: skip
    # Backups already there are replaced one by one: they count as room (at least one copy).
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "ckpt-1.data-00000-of-00001").write_bytes(b"x" * 1000)
    (_, backup_need, _) = disk_needs(plan, "a", str(backup), "b", backup_copies=3)
    assert backup_need.bytes == 3 * CHECKPOINT - 1000
    (_, backup_need, _) = disk_needs(plan, "a", str(backup), "b", 3, held=lambda p: 10**12)
    assert backup_need.bytes == CHECKPOINT


def test_disk_check_refuses_with_the_path_and_the_numbers(tmp_path):
    plan = memory_plan(planned_config(), "adagrad", export_assets=5000)
    target = tmp_path / "not" / "yet" / "best.keras"
    needs = disk_needs(plan, save_model=str(target), export_dir=str(tmp_path / "export"))
    total = CHECKPOINT + EXPORT  # one file system: the needs add up
    check_disk(needs, free=lambda path: total)
    seen = []
    with pytest.raises(DiskSpaceError) as err:
        check_disk(needs, free=lambda path: seen.append(path) or total - 1)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"--save_model={target}: its file system (at {tmp_path})")
    assert f"has {(total - 1) / 2**30:.3f} GiB free" in message
    assert f"will write {total / 2**30:.3f} GiB there" in message
    assert f"a checkpoint for --save_model {CHECKPOINT / 2**30:.3f} GiB" in message
    assert seen == [str(target)]
