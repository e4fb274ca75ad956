"""The README's real-data commands, run on generated files of Criteo's format."""

import json
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--arch_sparse_feature_size=16",
    "--arch_mlp_bot=13-8-16",
    "--arch_mlp_top=8-1",
    "--num_batches=2",
    "--mini_batch_size=128",  # the generated splits hold fewer rows than Terabyte's 2048
    "--export_dir=",
]


def readme_commands() -> list[list[str]]:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text[text.index("### Real Criteo data") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)[1].replace("\\\n", " ")
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_real_data_commands_run_on_generated_files(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = ROOT
    subprocess.run(
        [sys.executable, "-m", "input_pipeline.planted_signal", "--output=train.txt",
         "--num_rows=2000", "--seed=3"],
        cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    lines = (tmp_path / "train.txt").read_text().splitlines(keepends=True)
    for day in range(2):  # Terabyte's day files, gzipped as downloaded
        (tmp_path / f"day_{day}").write_text("".join(lines[day * 1000 : (day + 1) * 1000]))
        subprocess.run(["gzip", f"day_{day}"], cwd=tmp_path, check=True)
    commands = readme_commands()
    assert [c[2] for c in commands] == ["dlrm_tf.main"] * 2  # one command converts and trains
    for cmd in commands:
        cmd = [sys.executable, *cmd[1:]]
        cmd = [a.replace("configs/", f"{ROOT}/configs/") for a in cmd]
        cmd += [*TINY, f"--run_dir={tmp_path}/runs", f"--save_model={tmp_path}/best.keras"]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, (cmd, proc.stderr[-2000:])
    kaggle, terabyte = (
        json.loads((tmp_path / "data" / name / "metadata.json").read_text())
        for name in ("kaggle", "terabyte")
    )
    assert kaggle["data_set"] == "kaggle" and terabyte["data_set"] == "terabyte"
    assert sum(kaggle["rows"].values()) == len(lines)  # every line of train.txt
    # Terabyte: the flag file's --data_sub_sample_rate=0.875 drops training negatives.
    assert sum(terabyte["rows"].values()) < len(lines)
    # Tables of the values the data holds, even with --max_ind_range=10000000.
    for metadata in (kaggle, terabyte):
        assert max(metadata["table_sizes"]) <= len(lines) + 2
