"""Checks shared by the tests of every command-line entry point's failures."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
