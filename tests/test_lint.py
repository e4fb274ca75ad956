"""The code base is ruff clean (settings in pyproject.toml)."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_check_is_clean():
    ruff = shutil.which("ruff")
    cmd = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    try:
        proc = subprocess.run([*cmd, "check", "."], cwd=ROOT, capture_output=True, text=True)
    except FileNotFoundError:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    assert proc.returncode == 0, proc.stdout[-4000:]
