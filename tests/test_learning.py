"""Training on generated Criteo-shaped data with a planted signal reaches the AUC it allows.

The generator draws labels from a known logistic model; its AUC on the test
split (printed by the run as "the ceiling") is the best any model can do. One
epoch of DLRM must come within MARGIN of it: a model that learned nothing scores
0.5, one that learned only the dense features ~0.70.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARGIN = 0.035


def train(tmp_path, data_dir, *extra):
    """One epoch on ``data_dir`` (generated and converted there first if it is empty):
    (the ceiling, if this run generated the data, else None; the test AUCs; stdout)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    cmd = [
        sys.executable, "-m", "dlrm_tf.main",
        "--generate_criteo_rows=120000",
        "--data_generation=dataset",
        f"--processed_data_dir={data_dir}",
        "--arch_sparse_feature_size=8",
        "--arch_mlp_bot=13-64-8",
        "--arch_mlp_top=64-1",
        "--loss_function=bce",
        "--round_targets",
        "--optimizer=adagrad",
        "--learning_rate=0.01",
        "--mini_batch_size=128",
        "--print_freq=200",
        f"--run_dir={tmp_path}/run",
        f"--save_model={tmp_path}/best.keras",
        "--plot=false",
        *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ceiling = re.search(r"test AUC \(the ceiling\) is (\d\.\d+)", proc.stdout)
    aucs = [float(a) for a in re.findall(r"Testing at - .*?, auc (\d\.\d+),", proc.stdout)]
    return ceiling and float(ceiling[1]), aucs, proc.stdout


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """The single-device run, which also generates the data: (data dir, ceiling, AUCs, stdout).
    The generated data is converted once and shared by the module's runs."""
    tmp = tmp_path_factory.mktemp("learning")
    ceiling, aucs, out = train(tmp, tmp / "data")
    assert ceiling is not None, out[-2000:]
    return tmp / "data", ceiling, aucs, out


def test_one_epoch_reaches_the_planted_auc(one_epoch):
    _, ceiling, aucs, out = one_epoch
    assert 0.72 < ceiling < 0.9
    assert len(aucs) == 1
    assert aucs[-1] > ceiling - MARGIN, out[-2000:]
    losses = [float(x) for x in re.findall(r"Finished training it \d+/\d+ .* loss (\S+),", out)]
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_mirrored_on_converted_data_learns_too(one_epoch, tmp_path):
    data_dir, ceiling, _, _ = one_epoch
    _, aucs, out = train(
        tmp_path, data_dir, "--num_cpu_replicas=2", "--distribution_strategy=mirrored",
        "--test_freq=400",
    )  # fmt: skip
    assert "Using the converted data already in" in out
    assert len(aucs) >= 2
    assert aucs[-1] > ceiling - MARGIN, out[-2000:]


@pytest.mark.slow
def test_bfloat16_reaches_the_float32_auc(one_epoch, tmp_path):
    """Mixed precision (MLPs and interaction in bfloat16, tables and optimizer state in
    float32) learns as well as float32 on the same data and the same initial weights."""
    data_dir, _, fp32_aucs, _ = one_epoch
    _, aucs, out = train(tmp_path, data_dir, "--mixed_precision=bfloat16")
    assert len(aucs) == 1
    assert abs(aucs[-1] - fp32_aucs[-1]) < 0.002, (aucs, fp32_aucs, out[-2000:])
