"""--enable_profiling: a profiler trace of training steps for TensorBoard's Profile tab."""

import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tiny(run_dir, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "dlrm_tf.main",
            f"--flagfile={os.path.join(ROOT, 'configs', 'tiny.flags')}",
            "--num_batches=12",
            "--data_size=100",
            f"--run_dir={run_dir}",
            "--noplot",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def traces(run_dir) -> list[str]:
    return glob.glob(os.path.join(run_dir, "tensorboard", "plugins", "profile", "*", "*.xplane.pb"))


def test_enable_profiling_writes_a_trace_of_training_steps(tmp_path):
    proc = run_tiny(tmp_path / "run", "--enable_profiling")
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = traces(tmp_path / "run")
    assert len(found) == 1, found
    with open(found[0], "rb") as f:
        trace = f.read()
    # The profiled window covers training steps: forward ops of the model and their
    # gradients appear among the trace's event names.
    assert b"bottom_mlp" in trace and b"gradient_tape" in trace


def test_no_trace_without_the_flag(tiny_run):
    # The shared tiny run (3 steps, no --enable_profiling): with the flag, a run that
    # short is traced too (the window starts at step min(5, steps)).
    run_dir, _ = tiny_run
    assert os.path.isfile(run_dir / "history.json")
    assert traces(run_dir) == []
