"""The command-line programs (train, convert, export, generate, query) print
TensorFlow's start-up lines only when asked."""

import os
import platform
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# An absl/TF log line: severity, date, time, thread, file:line] message.
LOG_HEADER = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ")


def run(args, cwd=ROOT, **env_changes) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHONPATH=ROOT, **env_changes)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def messages(stderr: str) -> set[str]:
    """TensorFlow's log lines without their time stamps."""
    return {LOG_HEADER.sub("", line) for line in stderr.splitlines() if LOG_HEADER.match(line)}


@pytest.fixture(scope="module")
def startup_lines() -> set[str]:
    """What importing TensorFlow and listing the devices prints on this machine."""
    proc = run(["-c", "import tensorflow as tf; tf.config.list_physical_devices()"])
    lines = messages(proc.stderr)
    if not lines:
        pytest.skip("TensorFlow prints no start-up lines on this machine")
    return lines


# Each command's --help, by a short name.
HELP_COMMANDS = {
    "train": ["-m", "dlrm_tf.main", "--help"],
    "convert": ["-m", "input_pipeline.convert", "--help"],
    "export": ["-m", "export.saved_model", "--help"],
    "synthetic": ["-m", "input_pipeline.planted_signal", "--help"],
    "grpc_client": ["-m", "export.grpc_client", "--help"],
}


@pytest.mark.parametrize("command", HELP_COMMANDS.values(), ids=HELP_COMMANDS.keys())
def test_help_of_each_command_is_free_of_startup_lines(command, startup_lines):
    quiet = run(command)
    assert quiet.stdout.strip(), quiet.stderr[-2000:]
    assert not startup_lines & messages(quiet.stderr), quiet.stderr[-2000:]
    loud = run([*command, "--verbose"])
    assert startup_lines & messages(loud.stderr), loud.stderr[-2000:]


def test_a_training_run_prints_its_output_and_no_startup_lines(tmp_path, startup_lines):
    flagfile = os.path.join(ROOT, "configs", "tiny.flags")
    proc = run(["-m", "dlrm_tf.main", f"--flagfile={flagfile}", f"--run_dir={tmp_path}/run"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Finished training it 3/3 of epoch 0" in proc.stdout
    assert not startup_lines & messages(proc.stderr), proc.stderr[-3000:]
    # The device probe's failure (no CUDA driver) is one of them on a CPU machine.
    assert "failed call to cuInit" not in proc.stderr


ONEDNN_ON = "oneDNN custom operations are on"
TENSORFLOW_COMMANDS = ["train", "convert", "export", "synthetic"]  # the gRPC client has none


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="oneDNN is preferred on x86"
)
@pytest.mark.parametrize(
    "command",
    [HELP_COMMANDS[name] for name in TENSORFLOW_COMMANDS],
    ids=TENSORFLOW_COMMANDS,
)
def test_each_command_runs_onednn_kernels_unless_the_environment_says_no(command):
    """TensorFlow's own start-up line tells whether its oneDNN kernels are on: the
    commands turn them on where TensorFlow alone would not (CPUs without AVX-512
    VNNI), and a user's TF_ENABLE_ONEDNN_OPTS=0 still wins."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "environ", env)
        chosen = run([*command, "--verbose"])
        refused = run([*command, "--verbose"], TF_ENABLE_ONEDNN_OPTS="0")
    assert chosen.stdout.strip() and refused.stdout.strip(), chosen.stderr[-2000:]
    assert ONEDNN_ON in chosen.stderr, chosen.stderr[-2000:]
    assert ONEDNN_ON not in refused.stderr, refused.stderr[-2000:]
