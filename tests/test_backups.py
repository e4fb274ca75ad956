"""Tests of the training backups (dlrm_tf/training/backups.py): one writer per backup
directory, and what a killed save left behind is cleaned up."""

import os
import subprocess
import sys

import pytest
from cli_check import REPO

from dlrm_tf.training import backups
from input_pipeline import safe_files


def test_backup_dir_has_one_writer(tmp_path):
    backup_dir = tmp_path / "backups"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from dlrm_tf.training import backups as c\n"
         "with c.backup_lock(sys.argv[1]):\n    print('locked', flush=True); sys.stdin.read()\n",
         str(backup_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(safe_files.OutputLockedError, match=f"pid {holder.pid} on "):
            with backups.backup_lock(str(backup_dir)):
                pass
    finally:
        holder.communicate("")
    (backup_dir / "ckpt-7_temp").mkdir()  # a save killed mid-write
    (backup_dir / "ckpt-6.index").write_text("a complete backup")
    with backups.backup_lock(str(backup_dir)):
        assert sorted(os.listdir(backup_dir)) == ["ckpt-6.index"]
