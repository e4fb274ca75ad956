"""Checks shared by the tests of every command-line entry point's failures."""

import os
import re
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny model whose 4 tables spread unevenly over 2 devices (3000 rows against
# 50 + 20 + 400): the placement tests' architecture and batch, with their plots off.
PLACEMENT_MODEL = [
    "--arch_sparse_feature_size=4",
    "--arch_embedding_size=50-3000-20-400",
    "--arch_mlp_bot=4-8-4",
    "--arch_mlp_top=8-1",
    "--mini_batch_size=16",
    "--learning_rate=0.1",
    "--plot=false",
]


def run_module(module, *args, cwd=None):
    """Runs ``python -m module args`` from the repository; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True, text=True, check=False, cwd=cwd or REPO, timeout=600,
        env={**os.environ, "PYTHONPATH": REPO},
    )  # fmt: skip


def assert_one_error_line(returncode, stderr, expected):
    """Exit status 2 and exactly one ``error:`` line, the last one, containing
    ``expected``; no traceback. (TensorFlow's own C++ start-up lines, which no
    setting silences in TF 2.21, may come before it.)"""
    lines = stderr.strip().splitlines()
    assert returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], stderr[-3000:]
    assert expected in lines[-1], lines[-1]
    return lines[-1]


def job_env() -> dict:
    """The environment of a CLI job in a test: CPU only, quiet, no cluster."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    env.pop("TF_CONFIG", None)
    return env


def cli_job_command(out, *flags) -> list[str]:
    """The command that runs the CLI's job and saves its weights to ``out`` (tests/cli_job.py)."""
    return [sys.executable, os.path.join(REPO, "tests", "cli_job.py"), str(out), *map(str, flags)]


def run_cli_job(out, *flags) -> subprocess.CompletedProcess:
    """Runs ``cli_job_command`` to completion; fails the test with its stderr if it fails."""
    proc = subprocess.run(
        cli_job_command(out, *flags), cwd=REPO, env=job_env(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def kill_after_backup(cmd, backup_dir, pattern: str, timeout: float = 240) -> None:
    """Starts ``cmd`` and SIGKILLs it once ``backup_dir``'s checkpoint index matches
    ``pattern``; fails the test if the run ends first."""
    victim = subprocess.Popen(
        cmd, cwd=REPO, env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + timeout
    index = os.path.join(str(backup_dir), "checkpoint")
    while time.time() < deadline and victim.poll() is None:
        if os.path.exists(index) and re.search(pattern, open(index).read()):
            break
        time.sleep(0.02)
    assert victim.poll() is None, "the run ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
