"""What a run shows its user: the plot, TensorBoard, the end-of-run summary, the progress bar."""

import json
import os
import re
import subprocess
import sys

import pytest

from dlrm_tf.reports.plot import render_history

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = re.compile(r"^Finished training it (\d+)/\d+ of epoch \d+, \S+ ms/it, loss (\S+), accuracy")
TEST = re.compile(r"^Testing at - (\d+)/\d+ of epoch \d+, loss \S+, auc (\S+), log loss (\S+),")
BATCH = 64


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short run on converted planted-signal data, with tests and the progress bar."""
    tmp = tmp_path_factory.mktemp("run")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    cmd = [
        sys.executable, "-m", "dlrm_tf.main",
        f"--flagfile={ROOT}/configs/default.flags",
        "--generate_criteo_rows=6000",
        f"--processed_data_dir={tmp}/data",
        "--arch_mlp_bot=13-16-16", "--arch_mlp_top=16-1",
        f"--mini_batch_size={BATCH}", "--print_freq=20", "--test_freq=30",
        "--progress_bar",
        f"--run_dir={tmp}/run", f"--save_model={tmp}/best.keras", f"--export_dir={tmp}/export",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp / "data" / "metadata.json") as f:
        rows = json.load(f)["rows"]["train"]
    with open(tmp / "run" / "history.json") as f:
        history = json.load(f)
    return tmp, proc.stdout, rows, history


def visible_lines(stdout: str) -> list[str]:
    """The lines as a terminal shows them: each line's text after its last redraw."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", stdout).replace("\b", "")
    return [line.split("\r")[-1] for line in plain.split("\n")]


def test_summary_matches_the_data_and_history(run):
    tmp, stdout, rows, history = run
    lines = visible_lines(stdout)
    block = "\n".join(lines[lines.index("==== Run summary ====") :])
    # Converted data trains full global batches only (the partial last one is dropped).
    steps = rows // BATCH
    examples = steps * BATCH
    assert history["steps"] == steps
    trained = re.search(
        r"trained: ([\d,]+) steps \(1 epoch\(s\) of ([\d,]+) steps\), ([\d,]+) ex", block
    )
    assert [int(g.replace(",", "")) for g in trained.groups()] == [steps, steps, examples]
    tests = [(int(m[1]), float(m[2]), float(m[3])) for m in map(TEST.match, lines) if m]
    best = max(tests, key=lambda t: t[1])
    got = re.search(r"best test: AUC (\S+), accuracy \S+ %, log loss (\S+) at step (\d+)", block)
    assert (float(got[1]), float(got[2]), int(got[3])) == (best[1], best[2], best[0])
    rate = re.search(
        r"time: (\S+) s training loop \((\S+) s of it testing\), ([\d,]+) training", block
    )
    expected = examples / (history["seconds"] - history["test_seconds"])
    assert float(rate[1]) == pytest.approx(history["seconds"], abs=0.06)
    assert float(rate[2]) == pytest.approx(history["test_seconds"], abs=0.06)
    assert int(rate[3].replace(",", "")) == pytest.approx(expected, abs=1)
    export_base = tmp / "export"
    assert f"-v {export_base}:/models/dlrm -e MODEL_NAME=dlrm tensorflow/serving" in block
    for name in ("history", "tensorboard", "model", "plot", "saved_model"):
        path = re.search(rf"^{name}: (\S+)", block, re.M)[1]
        assert os.path.exists(path if os.path.isabs(path) else tmp / path), name


def test_progress_bar_ends_its_line_and_shows_the_printed_numbers(run):
    _, stdout, _, _ = run
    lines = visible_lines(stdout)
    printed = [(i, m) for i, m in ((i, TRAIN.match(line)) for i, line in enumerate(lines)) if m]
    assert len(printed) >= 3
    for i, m in printed:
        bar = re.search(r"^\s*(\d+)/\d+ .* - loss: (\S+) - accuracy %: (\S+)", lines[i - 1])
        assert bar and bar[1] == m[1], lines[i - 1]
        assert float(bar[2]) == pytest.approx(float(m[2]), abs=6e-5)
    assert all(line.startswith("Testing at") for line in lines if "Testing at" in line)


def test_tensorboard_tags_and_hparams(run):
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    tmp, stdout, _, history = run
    # The run's events are in a directory of its own under <run_dir>/tensorboard.
    (run_id,) = os.listdir(tmp / "run" / "tensorboard")
    tb = f"tensorboard/{run_id}"
    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(str(tmp / "run"))
    mux.Reload()
    tags = {r: set(t["tensors"]) for r, t in mux.Runs().items()}
    assert tags[f"{tb}/train"] == {
        "window_loss", "window_accuracy", "epoch_loss", "epoch_accuracy",
        "learning_rate", "samples_per_s",
    }  # fmt: skip
    assert tags[f"{tb}/test"] == {"test_loss", "test_auc", "test_accuracy", "test_log_loss"}
    # Train and test on one step axis: the steps of the printed lines and test lines.
    lines = visible_lines(stdout)
    steps = lambda run, tag: [e.step for e in mux.Tensors(run, tag)]  # noqa: E731
    assert steps(f"{tb}/train", "window_loss") == [int(m[1]) for m in map(TRAIN.match, lines) if m]
    assert steps(f"{tb}/test", "test_auc") == [int(m[1]) for m in map(TEST.match, lines) if m]

    provider = data_provider.MultiplexerDataProvider(mux, str(tmp / "run"))
    ctx = backend_context.Context(
        base_plugin.TBContext(logdir=str(tmp / "run"), data_provider=provider, multiplexer=mux)
    )
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=10, allowed_statuses=[api_pb2.STATUS_UNKNOWN]
    )
    groups = list_session_groups.Handler(context.RequestContext(), ctx, "", request).run()
    (group,) = groups.session_groups
    hparams = {k: v.string_value or v.number_value for k, v in group.hparams.items()}
    assert hparams["optimizer"] == "sgd" and hparams["learning_rate"] == pytest.approx(0.1)
    assert hparams["mini_batch_size"] == BATCH and hparams["precision"] == "float32"
    assert hparams["bottom_mlp"] == "13-16-16" and hparams["placement"] == "one device (/cpu:0)"
    metrics = {m.name.tag: (m.value, m.training_step) for m in group.metric_values}
    final = history["history"][-1]
    assert metrics["test_auc"] == (pytest.approx(final["test"]["auc"]), history["steps"])


def train_records(its):
    return [
        {"step": s, "epoch": 0, "it": s, "train_loss": 0.5, "train_accuracy": 0.75,
         "iterations": n}
        for s, n in its
    ]  # fmt: skip


def test_plot_of_a_run_with_tests():
    history = train_records([(500, 500), (1000, 500), (1009, 9)])
    history.append(
        {"step": 1009, "epoch": 0, "it": 1009,
         "test": {"loss": 0.47, "auc": 0.76, "accuracy": 0.778, "log_loss": 0.47}}
    )  # fmt: skip
    fig = render_history(history, "configs/x.flags | data: d\nsgd", "bce", print_freq=500)
    loss, acc, auc = fig.axes
    assert fig._suptitle.get_text() == "configs/x.flags | data: d\nsgd"
    assert loss.get_ylabel() == "loss (binary cross-entropy)"
    assert acc.get_ylabel() == "accuracy (%)" and auc.get_ylabel() == "test ROC AUC"
    assert loss.get_xlabel() == "iteration (global step)"
    train, partial, test = acc.get_lines()
    assert list(train.get_xdata()) == [500, 1000]  # the 9-iteration window is not on the curve
    assert list(partial.get_xdata()) == [1009] and partial.get_linestyle() == "None"
    assert "partial window (9 its)" in partial.get_label()
    assert list(train.get_ydata()) == [75.0, 75.0] and list(test.get_ydata()) == [77.8]


def test_plot_of_a_run_without_tests_has_no_auc_panel():
    fig = render_history(train_records([(1, 1), (2, 1), (3, 1)]), "tiny", "mse", print_freq=1)
    assert len(fig.axes) == 2
    assert "no test run" in fig._suptitle.get_text()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert all(float(t).is_integer() for t in ticks)
