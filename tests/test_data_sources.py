"""Every training row once per epoch on converted data, under 1-4 mirrored replicas and
two workers, and resumed runs skip exactly the rows already trained.

Rows are counted from the batches themselves: the raw data's first integer
column is the line number, so each training example names its row.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from loopback_workers import run_workers

from input_pipeline import convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = os.path.join(ROOT, "tests", "row_count_job.py")
BATCH = 12  # the jobs' --mini_batch_size


def write_numbered_rows(path, num_rows, seed=0):
    """Criteo text whose integer column I1 is the 0-based line number."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for row in range(num_rows):
            ints = [str(row)] + [""] * 12
            cats = [f"{int(v):08x}" for v in rng.integers(0, 5, 26)]
            f.write("\t".join([str(int(rng.integers(0, 2))), *ints, *cats]) + "\n")


def numbered_data(tmp_path, num_rows):
    """Converted data (shuffled training rows, several shards and blocks) and its train rows."""
    raw = tmp_path / "numbered.txt"
    write_numbered_rows(raw, num_rows)
    out = tmp_path / "data"
    metadata = convert.convert(
        "kaggle", raw, out, num_shards=3, block_rows=10, data_randomize="total"
    )
    # The reference's split: the first 6 of 7 "days" train.
    train_rows = sum(convert.kaggle_day_sizes(num_rows)[:6])
    assert metadata["rows"]["train"] == train_rows
    return str(out), train_rows


def env(**extra):
    e = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    e.pop("TF_CONFIG", None)
    e.update(extra)
    return e


def assert_once_each(counts, train_rows, num_steps):
    """Trained rows: exactly the full global batches; no row twice, none outside train."""
    counts = np.asarray(counts)
    assert counts.max() <= 1, np.flatnonzero(counts > 1)
    assert counts[train_rows:].sum() == 0
    assert counts.sum() == num_steps * BATCH


@pytest.mark.slow
def test_mirrored_replicas_train_every_row_once_and_resume_exactly(tmp_path):
    # 150 lines: 129 train rows = 10 full batches of 12 + 9 rows (the dropped partial batch).
    data_dir, train_rows = numbered_data(tmp_path, 150)
    steps = train_rows // BATCH
    assert (steps, train_rows % BATCH) == (10, 9)
    procs = {}
    for k in (1, 2, 3, 4):  # two at a time: the machine has 2 cores
        work = tmp_path / f"r{k}"
        work.mkdir()
        cmd = [sys.executable, JOB, str(work / "report.json"), data_dir, str(k)]
        procs[k] = subprocess.Popen(
            cmd, cwd=work, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        if k % 2 == 0:
            for j in (k - 1, k):
                err = procs[j].communicate(timeout=600)[1]
                assert procs[j].returncode == 0, err[-4000:]
    report = {k: json.loads((tmp_path / f"r{k}" / "report.json").read_text()) for k in procs}
    for k, run in report.items():
        assert run["steps"] == steps, k
        assert_once_each(run["counts"], train_rows, steps)
        last = f"Finished training it {steps}/{steps} of epoch 0"
        assert any(line.startswith(last) for line in run["lines"]), run["lines"]
    # Every replica count trains the same rows (the same global batches).
    assert report[1]["counts"] == report[2]["counts"] == report[3]["counts"] == report[4]["counts"]
    for k in (3, 4):  # resumed from a backup (3 replicas) and by --load_model (4)
        first, second = report[k]["resumed"]["counts"]
        assert sum(first) == 5 * BATCH and sum(second) == (steps - 5) * BATCH, k
        assert_once_each(np.add(first, second), train_rows, steps)
        printed = [line for line in report[k]["resumed"]["lines"] if line.startswith("Finished")]
        assert printed[0].startswith(f"Finished training it 8/{steps} of epoch 0"), printed


@pytest.mark.slow
def test_two_workers_train_every_row_once(tmp_path):
    data_dir, train_rows = numbered_data(tmp_path, 168)  # 144 train rows: 12 batches
    steps = train_rows // BATCH
    outs = [tmp_path / f"w{index}" / "report.json" for index in range(2)]
    for out in outs:
        out.parent.mkdir()
    run_workers(
        lambda index: [JOB, str(outs[index]), data_dir, "worker"],
        env(),
        lambda index: str(outs[index].parent),
        timeout=300,
    )
    reports = [json.loads(o.read_text()) for o in outs]
    assert [r["steps"] for r in reports] == [steps, steps]
    # Each worker trained half of every global batch; together every row once.
    assert [sum(r["counts"]) for r in reports] == [steps * BATCH // 2] * 2
    assert_once_each(np.add(reports[0]["counts"], reports[1]["counts"]), train_rows, steps)


def rows_of(dataset) -> list[int]:
    """Rows per batch of an (undistributed) dataset, counted from its labels."""
    return [int(labels.shape[0]) for _, labels in dataset]


def test_generated_source_owns_its_batch_sizes():
    import tensorflow as tf

    from dlrm_tf.training.data_sources import DataConfig, DataSource, GeneratedSource

    config = DataConfig(generation="random", data_size=21, test_num_batches=2)
    source = DataSource(config, (5, 7), 3)
    assert isinstance(source, GeneratedSource) and not source.from_files
    batched = source.with_batches(8, test_batch=4)
    assert source.global_batch == 1  # the original keeps its batches
    strategy = tf.distribute.get_strategy()
    # The reference's batches: ceil(21 / 8) = 3, the last one partial (21 = 8 + 8 + 5).
    assert rows_of(batched.train_dataset(strategy)) == [8, 8, 5]
    assert (batched.steps_per_epoch(), batched.examples_per_epoch()) == (3, 21)
    assert rows_of(batched.train_dataset(strategy, skip=2)) == [5]
    assert rows_of(batched.test_dataset(strategy)) == [4, 4]  # --test_num_batches of 4
    assert batched.has_test(test_freq=5) and not batched.has_test(test_freq=-1)


def test_converted_source_owns_its_batch_sizes_and_takes_the_datas_tables(tmp_path):
    import tensorflow as tf

    from dlrm_tf.training.data_sources import ConvertedSource, DataConfig, DataSource

    data_dir, train_rows = numbered_data(tmp_path, 150)  # 129 train rows
    # The reference's test split: the first of np.array_split's two halves of the last day.
    test_rows = len(np.array_split(np.arange(convert.kaggle_day_sizes(150)[6]), 2)[0])
    source = DataSource(DataConfig(generation="dataset", processed_data_dir=data_dir), (1,), 13)
    assert isinstance(source, ConvertedSource) and source.from_files
    assert len(source.table_sizes) == 26  # the data's tables, not the placeholder
    batched = source.with_batches(12, test_batch=50)
    strategy = tf.distribute.get_strategy()
    # Full global batches only: 129 // 12 = 10, the 9 rows left over are dropped.
    assert rows_of(batched.train_dataset(strategy)) == [12] * 10
    assert (batched.steps_per_epoch(), batched.examples_per_epoch()) == (10, 120)
    tested = rows_of(batched.test_dataset(strategy))
    assert sum(tested) == test_rows and max(tested) <= 50
    assert batched.has_test(test_freq=-1)  # converted data is always tested
