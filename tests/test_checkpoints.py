"""Tests of saving and restoring models (dlrm_tf/model_files.py): what a save may
replace, what it cleans up, the files' permissions and the backups' lock."""

import os
import stat
import subprocess
import sys

import pytest
from cli_check import REPO

from dlrm_tf import backups, model_files
from dlrm_tf.config import ModelConfig
from dlrm_tf.model import build_model
from input_pipeline import safe_files


def model(table_sizes=(5, 3), dim=2):
    """A small compiled model (as the trainer saves them)."""
    built = build_model(
        ModelConfig(embedding_dim=dim, table_sizes=table_sizes, bottom_mlp=(4, dim), top_mlp=(3, 1))
    )
    built.compile(optimizer="sgd", loss="mse")
    return built


def test_save_refuses_to_replace_a_file_that_is_not_a_model(tmp_path):
    path = tmp_path / "best.keras"
    path.write_text("my notes")
    with pytest.raises(safe_files.NotOursError, match="not a .keras model file"):
        model_files.save_model(model(), str(path))
    assert path.read_text() == "my notes"
    assert sorted(os.listdir(tmp_path)) == ["best.keras"]


def test_save_removes_leftovers_of_killed_saves_and_uses_the_umask(tmp_path):
    path = tmp_path / "best.keras"
    leftovers = [tmp_path / ".best.keras.k1l2m3.keras", tmp_path / ".best.keras.json.x9.json"]
    for leftover in leftovers:
        leftover.write_bytes(b"\0" * 100)  # what a save killed mid-write leaves
    (tmp_path / ".other.keras.k1l2m3.keras").write_text("another output's")
    old = os.umask(0o027)
    try:
        model_files.save_model(model(), str(path))
        model_files.save_model(model(), str(path))  # replaces its own file
    finally:
        os.umask(old)
    assert sorted(os.listdir(tmp_path)) == [
        ".other.keras.k1l2m3.keras", "best.keras", "best.keras.json"]
    for name in ("best.keras", "best.keras.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640


def test_architecture_mismatch_names_the_differing_fields(tmp_path):
    path = str(tmp_path / "m.keras")
    model_files.save_model(model((5, 3)), path)
    with pytest.raises(ValueError) as error:
        model_files.restore_model_state(model((5, 4)), path, with_optimizer=False)
    message = str(error.value)
    assert "its architecture differs from the flags' (table_sizes: saved (5, 3), flags (5, 4))" in (
        message), message


def test_backup_dir_has_one_writer(tmp_path):
    backup_dir = tmp_path / "backups"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from dlrm_tf import backups as c\n"
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
