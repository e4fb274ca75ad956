"""Trains on converted data whose first dense feature encodes the row number, and
counts how often each row reached a training step (on any replica).

Usage:
  python tests/row_count_job.py OUT.json DATA_DIR K
      (K mirrored replicas on logical CPUs; see ``mirrored`` for the resumes)
  python tests/row_count_job.py OUT.json DATA_DIR worker
      (one MultiWorkerMirroredStrategy worker; TF_CONFIG set by the caller)

The count is taken inside ``train_step`` from the batch itself (row =
``round(expm1(dense[:, 0]))``, the converter's ``log(x + 1)`` undone), so it
does not depend on the trainer's own step or row bookkeeping.
"""

import json
import os
import sys

import tensorflow as tf

NUM_ROWS = 4096  # more than the rows of any test data set


def install_row_counter():
    """Makes every ``DLRM.train_step`` add its batch's rows to a per-replica counter."""
    from dlrm_tf.model.dlrm import DLRM
    from dlrm_tf.training import trainer as train

    state = {}
    original_build, original_step = train.build_model, DLRM.train_step

    def build_model(*args, **kwargs):
        # Called inside the run's strategy scope: one counter copy per replica.
        state["counts"] = tf.Variable(
            tf.zeros([NUM_ROWS], tf.int32),
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.SUM,
        )
        return original_build(*args, **kwargs)

    def train_step(self, data):
        dense = data[0]["dense_features"]
        rows = tf.cast(tf.round(tf.math.expm1(dense[:, 0])), tf.int32)
        state["counts"].assign_add(tf.math.bincount(rows, minlength=NUM_ROWS, maxlength=NUM_ROWS))
        return original_step(self, data)

    train.build_model = build_model
    DLRM.train_step = train_step

    def local_counts(strategy):
        parts = strategy.experimental_local_results(state["counts"])
        return [int(c) for c in sum(p.numpy() for p in parts)]

    return local_counts


def run_once(strategy, data_dir, run_dir, local_counts, **train_flags):
    """One training run; returns (rows counted, printed lines, steps)."""
    from dlrm_tf.config import ModelConfig
    from dlrm_tf.training import trainer as train
    from dlrm_tf.training.data_sources import DataConfig, DataSource

    data_config = DataConfig(
        generation="dataset",
        processed_data_dir=data_dir,
        num_batches=train_flags.pop("num_batches", 0),
    )
    source = DataSource(data_config, (1,), 13)
    model_config = ModelConfig(
        embedding_dim=2, table_sizes=source.table_sizes, bottom_mlp=(13, 2), top_mlp=(1,)
    )
    config = train.TrainConfig(
        mini_batch_size=12, print_freq=4, run_dir=run_dir, plot=False, **train_flags
    )
    lines = []
    result = train.run(model_config, config, source, strategy, log=lines.append)
    return local_counts(strategy), lines, result.steps


def mirrored(out, data_dir, local_counts, k):
    """``k`` replicas (the default strategy for 1); with 3 a backup resume, with 4 a
    --load_model resume, each after 5 steps. One strategy per process: collectives of
    two mirrored strategies in one process clash."""
    if k > 1:
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration()] * k,
        )
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(k)])
    else:
        strategy = tf.distribute.get_strategy()
    work = os.path.dirname(out)
    counts, lines, steps = run_once(strategy, data_dir, f"{work}/run", local_counts)
    report = {"counts": counts, "lines": lines, "steps": steps}
    if k == 3:
        first = {"num_batches": 5, "backup_dir": f"{work}/backup"}
        second = {"backup_dir": f"{work}/backup"}
    elif k == 4:
        first = {"num_batches": 5, "save_model": f"{work}/after5.keras"}
        second = {"load_model": f"{work}/after5.keras"}
    else:
        return report
    before = run_once(strategy, data_dir, f"{work}/resume1", local_counts, **first)
    after = run_once(strategy, data_dir, f"{work}/resume2", local_counts, **second)
    report["resumed"] = {"counts": [before[0], after[0]], "lines": after[1], "steps": after[2]}
    return report


def worker(out, data_dir, local_counts):
    from dlrm_tf.training.strategy import make_strategy

    strategy = make_strategy("multi_worker_mirrored", ["/cpu:0"])
    counts, lines, steps = run_once(strategy, data_dir, os.path.dirname(out) + "/run", local_counts)
    return {"counts": counts, "lines": lines, "steps": steps}


def main() -> None:
    out, data_dir, mode = sys.argv[1:4]
    local_counts = install_row_counter()
    if mode == "worker":
        report = worker(out, data_dir, local_counts)
    else:
        report = mirrored(out, data_dir, local_counts, int(mode))
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
