"""Tests of saving and restoring models (dlrm_tf/model/saving.py): what a save may
replace, what it cleans up, the files' permissions."""

import os
import stat

import pytest

from dlrm_tf.config import ModelConfig
from dlrm_tf.model import saving as model_files
from dlrm_tf.model.dlrm import build_model
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
        ".other.keras.k1l2m3.keras",
        "best.keras",
        "best.keras.json",
    ]
    for name in ("best.keras", "best.keras.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640


def test_architecture_mismatch_names_the_differing_fields(tmp_path):
    path = str(tmp_path / "m.keras")
    model_files.save_model(model((5, 3)), path)
    with pytest.raises(ValueError) as error:
        model_files.restore_model_state(model((5, 4)), path, with_optimizer=False)
    message = str(error.value)
    assert "its architecture differs from the flags' (table_sizes: saved (5, 3), flags (5, 4))" in (
        message
    ), message
