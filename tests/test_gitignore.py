"""Every output path that README.md and configs/ tell a user to write is ignored by git."""

import glob
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT_FLAGS = (
    "output_dir", "export_dir", "run_dir", "save_model", "save_onnx", "output",
    "probabilities_output", "tensorboard_dir", "backup_dir", "processed_data_dir",
)  # fmt: skip
OUTPUT = re.compile(rf"--(?:{'|'.join(OUTPUT_FLAGS)})=([\w./-]+)")


def written_paths() -> set[str]:
    """Relative output paths of the README's commands and the config files."""
    texts = [open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()]
    for path in glob.glob(os.path.join(ROOT, "configs", "*.flags")):
        texts.append(open(path, encoding="utf-8").read())
    paths = {m for text in texts for m in OUTPUT.findall(text)}
    # Absolute paths are the user's own; upper-case words are placeholders (DIR).
    return {p for p in paths if not p.startswith("/") and not p.isupper()}


def test_every_output_path_a_user_is_told_to_write_is_ignored():
    if shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")
    paths = written_paths()
    assert {"data/kaggle", "serving/dlrm", "runs/tiny", "best.keras"} <= paths
    # A file inside each (the directories need not exist), and the default run directory.
    probes = sorted({os.path.join(p, "x") for p in paths} | paths | {"runs/20261202-010000/x"})
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *probes],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    not_ignored = [row.split("\t")[-1] for row in proc.stdout.splitlines() if row.startswith("::")]
    assert not not_ignored, not_ignored
