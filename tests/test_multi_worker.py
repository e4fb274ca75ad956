"""Two MultiWorkerMirroredStrategy workers on 127.0.0.1 train to identical weights."""

import os
import re

import numpy as np
import pytest
from loopback_workers import run_workers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_two_workers_train_identical_weights(tmp_path):
    flags = [
        "--distribution_strategy=multi_worker_mirrored",
        "--arch_sparse_feature_size=4",
        "--arch_embedding_size=50-30-20",
        "--arch_mlp_bot=4-8-4",
        "--arch_mlp_top=8-1",
        "--mini_batch_size=16",
        "--num_batches=10",
        "--optimizer=adagrad",
        "--learning_rate=0.1",
        "--num_indices_per_lookup=3",
        "--print_freq=5",
        "--test_freq=5",
        "--plot=false",
    ]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    outputs = run_workers(
        lambda index: [
            os.path.join(ROOT, "tests", "cli_job.py"),
            str(tmp_path / f"w{index}.npz"),
            *flags,
            f"--run_dir={tmp_path}/run{index}",
            f"--backup_dir={tmp_path}/backup",
            "--backup_every=4",
        ],
        env,
        lambda index: ROOT,
        timeout=240,
    )
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert int(w0["steps"]) == int(w1["steps"]) == 10
    keys = [k for k in w0.files if k != "steps"]
    assert len(keys) == 3 + 4 + 4  # 3 tables; 2 bottom and 2 top layers (kernel + bias)
    for k in keys:
        np.testing.assert_array_equal(w0[k], w1[k])
    assert sum("Finished training it 10/10" in out for out in outputs) == 2
    # Each worker evaluated the whole test data: the same metrics, twice (steps 5 and 10).
    tests = [re.findall(r"Testing at - .*", out) for out in outputs]
    assert len(tests[0]) == 2 and tests[0] == tests[1]
    # The chief's backups are in the backup directory, the other worker's beside them.
    chief = tf_checkpoint_steps(tmp_path / "backup")
    assert chief and max(chief) == 10
    assert (tmp_path / "backup" / ".worker-1").is_dir()


def tf_checkpoint_steps(directory):
    return sorted(int(p.name.split("-")[1].split(".")[0]) for p in directory.glob("ckpt-*.index"))
