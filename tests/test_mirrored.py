"""MirroredStrategy on two logical CPU devices matches one device for the same global batch."""

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = [
    "--arch_sparse_feature_size=4",
    "--arch_embedding_size=50-30-20",
    "--arch_mlp_bot=4-8-4",
    "--arch_mlp_top=8-1",
    "--mini_batch_size=16",
    "--num_batches=6",
    "--num_indices_per_lookup=3",
    "--learning_rate=0.1",
    "--print_freq=6",
    "--plot=false",
]


def train(tmp_path, name, *extra):
    out = tmp_path / f"{name}.npz"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tests", "cli_job.py"),
            str(out),
            *COMMON,
            f"--run_dir={tmp_path}/{name}",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = np.load(out)
    return [data[k] for k in data.files if k != "steps"], proc.stdout


@pytest.fixture(scope="module")
def initial_weights(tmp_path_factory):
    """The weights before training: a run with learning rate 0. They do not depend on
    the optimizer (none of them moves a weight at rate 0), so one run serves all."""
    weights, _ = train(tmp_path_factory.mktemp("init"), "init", "--learning_rate=0")
    return weights


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
def test_mirrored_matches_single_device(tmp_path, optimizer, initial_weights):
    single, out1 = train(tmp_path, "single", f"--optimizer={optimizer}")
    mirrored, out2 = train(
        tmp_path,
        "mirrored",
        f"--optimizer={optimizer}",
        "--num_cpu_replicas=2",
        "--distribution_strategy=mirrored",
    )
    assert len(single) == len(mirrored) == 11
    for a, b in zip(single, mirrored, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # Training moved the weights: the comparison is not between two initial states.
    moved = max(np.abs(a - b).max() for a, b in zip(single, initial_weights, strict=True))
    assert moved > 1e-3
