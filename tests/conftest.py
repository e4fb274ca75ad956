"""Shared pytest setup: quiet TensorFlow logs, two logical CPU devices for mirrored tests,
and the one CLI run several test files read."""

import os

import pytest

from input_pipeline.tf_startup import prefer_onednn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
prefer_onednn()  # tests in this process run the kernels the commands run
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The reference's sample run (configs/tiny.flags) through the CLI, once per session:
    (its run dir, the CompletedProcess). With --print_time and --debug_mode, which only
    print (the dump comes before training); no --enable_profiling."""
    from cli_check import run_module

    tmp = tmp_path_factory.mktemp("tiny")
    proc = run_module(
        "dlrm_tf.main",
        f"--flagfile={os.path.join(ROOT, 'configs', 'tiny.flags')}",
        f"--run_dir={tmp}/run",
        "--print_time",
        "--debug_mode",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run", proc
