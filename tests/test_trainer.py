"""Training runs: crash-safe resume after SIGKILL, best-model checkpoints, --inference_only."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from cli_check import kill_after_backup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = [
    "--arch_sparse_feature_size=4",
    "--arch_embedding_size=200-30-1000",
    "--arch_mlp_bot=4-8-4",
    "--arch_mlp_top=8-1",
    "--num_indices_per_lookup=2",
    "--learning_rate=0.05",
    "--plot=false",
]


def env():
    e = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    e.pop("TF_CONFIG", None)
    return e


def job(out, *flags):
    return [sys.executable, os.path.join(ROOT, "tests", "cli_job.py"), str(out), *ARCH, *flags]


def run_job(out, *flags):
    """Runs the CLI's job to completion; fails the test with its stderr if it fails."""
    proc = subprocess.run(
        job(out, *flags), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(path):
    data = np.load(path)
    return [data[k] for k in data.files if k != "steps"], int(data["steps"])


@pytest.mark.slow
def test_resume_after_sigkill_continues_from_backup(tmp_path):
    flags = [
        "--mini_batch_size=8",
        "--num_batches=1500",
        "--optimizer=adam",
        "--print_freq=500",
        "--backup_every=100",
    ]
    ref_out = tmp_path / "ref.npz"
    run_job(ref_out, *flags, f"--run_dir={tmp_path}/ref")

    backup = tmp_path / "backup"
    out = tmp_path / "resumed.npz"
    cmd = job(out, *flags, f"--backup_dir={backup}", f"--run_dir={tmp_path}/run")
    kill_after_backup(cmd, backup, r"ckpt-(\d*[1-9]\d\d)")
    assert not out.exists()

    proc = run_job(out, *flags, f"--backup_dir={backup}", f"--run_dir={tmp_path}/run")
    resumed = re.search(r"Resumed from backup .* at step (\d+)", proc.stdout)
    assert resumed, proc.stdout[-2000:]
    step = int(resumed[1])
    assert 100 <= step < 1500 and step % 100 == 0
    # Only the steps after the backup were run again...
    printed = [int(m) for m in re.findall(r"Finished training it (\d+)/1500", proc.stdout)]
    assert printed and min(printed) > step
    # ...and they reproduce the uninterrupted run.
    got, got_steps = weights(out)
    want, want_steps = weights(ref_out)
    assert got_steps == want_steps == 1500
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# A short run with two tests in it: enough for a best model to be chosen and saved.
BEST_MODEL_RUN = [
    "--mini_batch_size=16",
    "--num_batches=20",
    "--test_freq=10",
    "--print_freq=10",
    "--loss_function=bce",
    "--round_targets",
    "--optimizer=adagrad",
]


@pytest.fixture(scope="module")
def best_run(tmp_path_factory):
    """One training run that keeps its best model: (its directory, its stdout). The
    tests that resume from the model work on copies (``best_model_copy``)."""
    tmp = tmp_path_factory.mktemp("best")
    proc = run_job(
        tmp / "a.npz", *BEST_MODEL_RUN, f"--save_model={tmp / 'best.keras'}", f"--run_dir={tmp}/a"
    )
    return tmp, proc.stdout


def best_model_copy(best_run, directory):
    """Copies the shared best model and its metrics into ``directory``; returns the model."""
    for name in ("best.keras", "best.keras.json"):
        shutil.copyfile(best_run[0] / name, directory / name)
    return directory / "best.keras"


def test_best_model_and_inference_only(best_run, tmp_path):
    tmp, stdout = best_run
    tests = re.findall(r"Testing at - .* loss (\S+), auc (\S+),", stdout)
    assert len(tests) == 2
    info = json.loads((tmp / "best.keras.json").read_text())
    best_auc = max(float(auc) for _, auc in tests)
    assert info["test"]["auc"] == pytest.approx(best_auc, abs=5e-5)
    assert info["step"] in (10, 20)

    proc = run_job(
        tmp_path / "b.npz",
        *BEST_MODEL_RUN,
        f"--load_model={tmp / 'best.keras'}",
        "--inference_only",
        f"--run_dir={tmp_path}/b",
    )
    again = re.findall(r"Testing at - .* loss (\S+), auc (\S+),", proc.stdout)
    assert len(again) == 1
    assert float(again[0][1]) == pytest.approx(info["test"]["auc"], abs=5e-5)
    assert float(again[0][0].rstrip(",")) == pytest.approx(info["test"]["loss"], abs=5e-6)
    assert "Finished training" not in proc.stdout


def test_load_model_resumes_training_where_it_stopped(tmp_path):
    common = ["--mini_batch_size=8", "--num_batches=10", "--optimizer=adam", "--print_freq=5"]
    saved = tmp_path / "epoch1.keras"
    # One epoch, saved; then two epochs starting from it ...
    run_job(tmp_path / "a.npz", *common, f"--save_model={saved}", f"--run_dir={tmp_path}/a")
    resumed = run_job(
        tmp_path / "b.npz",
        *common,
        "--nepochs=2",
        f"--load_model={saved}",
        f"--run_dir={tmp_path}/b",
    )
    assert "at step 10" in resumed.stdout
    assert "of epoch 0" not in resumed.stdout and "Finished training it 10/10 of epoch 1" in (
        resumed.stdout
    )
    # ... equal two epochs in one go (weights and Adam's state carried over).
    run_job(tmp_path / "c.npz", *common, "--nepochs=2", f"--run_dir={tmp_path}/c")
    got, got_steps = weights(tmp_path / "b.npz")
    want, want_steps = weights(tmp_path / "c.npz")
    assert got_steps == want_steps == 20
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def run_cli(*flags):
    cmd = [sys.executable, "-m", "dlrm_tf.main", *ARCH, *flags]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)


def test_a_diverging_resumed_run_keeps_the_best_model(best_run, tmp_path):
    best = best_model_copy(best_run, tmp_path)
    common = BEST_MODEL_RUN
    model_bytes, info = best.read_bytes(), (tmp_path / "best.keras.json").read_text()
    assert np.isfinite(json.loads(info)["test"]["auc"])
    proc = run_cli(
        *common,
        "--nepochs=2",
        "--learning_rate=1e30",
        f"--load_model={best}",
        f"--save_model={best}",
        f"--run_dir={tmp_path}/b",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: the training loss became nan"), error
    step = int(re.search(r"\(step (\d+)\)", error)[1])
    assert step > json.loads(info)["step"]
    # The best model and its metrics are untouched; the run stopped at the step that
    # diverged, and its history up to there is written.
    assert best.read_bytes() == model_bytes
    assert (tmp_path / "best.keras.json").read_text() == info
    assert json.loads((tmp_path / "b" / "history.json").read_text())["steps"] == step


def test_a_resumed_run_that_does_not_improve_keeps_the_best_model(best_run, tmp_path):
    best = best_model_copy(best_run, tmp_path)
    common = BEST_MODEL_RUN
    info = (tmp_path / "best.keras.json").read_text()
    # lr 0: the resumed epoch ends at the loaded model's AUC, which does not beat it.
    proc = run_job(
        tmp_path / "b.npz",
        *common,
        "--nepochs=2",
        "--learning_rate=0",
        f"--load_model={best}",
        f"--save_model={best}",
        f"--run_dir={tmp_path}/b",
    )
    assert "not replaced" in proc.stdout
    assert (tmp_path / "best.keras.json").read_text() == info


# --- The trainer's steps, called directly (no subprocess) -------------------------------

STEPS = 4  # training batches per epoch of the generated data below


def small_run(tmp_path, name="run", **overrides):
    """The parts of a run on generated data: model and data config, train config, source."""
    from dlrm_tf.config import ModelConfig
    from dlrm_tf.training import trainer as train
    from dlrm_tf.training.data_sources import DataConfig, DataSource

    model_config = ModelConfig(
        embedding_dim=2, table_sizes=(20, 30), bottom_mlp=(4, 2), top_mlp=(1,)
    )
    data = DataConfig(generation="random", num_batches=overrides.pop("num_batches", STEPS))
    source = DataSource(data, model_config.table_sizes, 4)
    config = dict(
        mini_batch_size=8, learning_rate=0.1, print_freq=2, test_freq=2, plot=False,
        run_dir=str(tmp_path / name), loss_function="bce",
    )  # fmt: skip
    config.update(overrides)
    return model_config, train.TrainConfig(**config), source


def model_weights(model):
    return [w.numpy().copy() for w in model.weights]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of one epoch that saved its best model; (its result, the model path)."""
    from dlrm_tf.training import trainer as train

    tmp = tmp_path_factory.mktemp("trained")
    path = str(tmp / "best.keras")
    # Tested at the epoch's end only: the best model is the one at step STEPS.
    model_config, config, source = small_run(tmp, save_model=path, test_freq=STEPS)
    result = train.run(model_config, config, source, tf_default_strategy(), log=lambda _: None)
    return result, path


def tf_default_strategy():
    import tensorflow as tf

    return tf.distribute.get_strategy()


def test_build_state_restores_the_saved_model_step_and_best_metrics(tmp_path, trained):
    from dlrm_tf.training import trainer as train

    result, path = trained
    model_config, config, source = small_run(tmp_path, load_model=path)
    lines = []
    state = train.build_state(model_config, config, source, tf_default_strategy(), lines.append)
    saved = json.loads(open(path + ".json").read())
    assert state.step == saved["step"] and lines == [
        f"Loaded model state from {path} at step {saved['step']}"
    ]
    assert state.best["auc"] == pytest.approx(saved["test"]["auc"])
    # The source now owns the run's batch sizes: 8 rows a batch, STEPS batches an epoch.
    assert (state.source.global_batch, state.steps) == (8, STEPS)
    assert state.has_test  # generated data is tested when --test_freq asks for it


def test_make_callbacks_composes_what_the_run_asks_for(tmp_path):
    from dlrm_tf.training import callbacks as cb
    from dlrm_tf.training import trainer as train

    model_config, config, source = small_run(tmp_path, save_model=str(tmp_path / "m.keras"))
    state = train.build_state(model_config, config, source, tf_default_strategy())
    cbs = train.make_callbacks(state, model_config, config)
    kinds = [type(c) for c in cbs.callbacks]
    assert kinds == [
        cb.DivergenceGuard,
        cb.ProgressPrinter,
        cb.PeriodicEvaluator,
        cb.TensorBoardWriter,
    ]
    assert cbs.saver in cbs.evaluator.on_test
    # No test data (test_freq off on generated data): no evaluator, no saver.
    model_config, config, source = small_run(tmp_path, test_freq=-1, backup_dir="")
    state = train.build_state(model_config, config, source, tf_default_strategy())
    state.chief = False  # a worker that is not the chief writes no TensorBoard events
    cbs = train.make_callbacks(state, model_config, config)
    assert [type(c) for c in cbs.callbacks] == [cb.DivergenceGuard, cb.ProgressPrinter]
    assert cbs.evaluator is None and cbs.saver is None


def test_fit_epochs_resumes_mid_epoch_and_trains_the_rest(tmp_path, trained):
    import keras

    from dlrm_tf.training import trainer as train

    _, path = trained
    # The saved model holds STEPS steps; two epochs of STEPS leave STEPS to train.
    model_config, config, source = small_run(tmp_path, load_model=path, nepochs=2)
    state = train.build_state(model_config, config, source, tf_default_strategy())
    start = state.step
    lines = []
    cbs = train.make_callbacks(state, model_config, config, lines.append)
    batches = []  # counted by Keras's own batch hooks, not the trainer's step variable
    cbs.callbacks.append(
        keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: batches.append(b))
    )
    train.fit_epochs(state, config, cbs)
    assert len(batches) == 2 * STEPS - start
    trained_its = [
        int(m[1]) for m in re.finditer(r"Finished training it (\d+)/4 of epoch 1", "\n".join(lines))
    ]
    assert trained_its == [2, 4] and not any("of epoch 0" in line for line in lines)


def test_write_artifacts_only_on_the_chief(tmp_path, trained):
    from dlrm_tf.training import trainer as train

    _, path = trained
    model_config, config, source = small_run(tmp_path)
    state = train.build_state(model_config, config, source, tf_default_strategy())
    cbs = train.make_callbacks(state, model_config, config)
    train.fit_epochs(state, config, cbs)
    state.chief = False
    assert train.write_artifacts(state, config, cbs, None, 1.0, {}) == {}
    assert not os.path.exists(os.path.join(config.run_dir, "history.json"))
    state.chief = True
    artifacts = train.write_artifacts(state, config, cbs, None, 1.0, {})
    with open(artifacts["history"]) as f:
        written = json.load(f)
    printed = [r for r in written["history"] if "train_loss" in r]
    assert [r["it"] for r in printed] == [2, 4] and written["steps"] == STEPS


def test_load_model_at_the_runs_end_says_it_trains_nothing_then_evaluates(tmp_path, trained):
    from dlrm_tf.training import trainer as train

    result, path = trained
    for name, num_batches, expected in (("same", STEPS, (STEPS, 0)), ("past", 2, (2, 1))):
        lines = []
        model_config, config, source = small_run(
            tmp_path, name, load_model=path, num_batches=num_batches
        )
        again = train.run(model_config, config, source, tf_default_strategy(), lines.append)
        assert lines.pop(0).startswith("Memory plan: ")  # printed before any model exists
        # One line says what will happen, before anything else happens.
        assert lines[0].startswith("Loaded model state") and lines[1] == (
            f"Nothing to train: the model from {path} is at step {STEPS}, at or past this "
            f"run's {num_batches} steps (1 epoch(s) of {num_batches}); it is only evaluated, "
            "and exported only if an export directory is given"
        ), lines
        assert not any(line.startswith("Finished training") for line in lines)
        # The test line names the loaded step's place (step 4 = it 2 of epoch 1 at 2 a epoch).
        (test_line,) = [line for line in lines if line.startswith("Testing at")]
        it, epoch = expected
        assert test_line.startswith(f"Testing at - {it}/{num_batches} of epoch {epoch},")
        assert again.steps == STEPS
        for a, b in zip(model_weights(again.model), model_weights(result.model), strict=True):
            np.testing.assert_array_equal(a, b)


def event_steps(tb_root, tag):
    """{directory of event files: the steps of ``tag``'s events in it}, read from disk."""
    import glob

    import tensorflow as tf

    found = {}
    for path in glob.glob(os.path.join(tb_root, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    found.setdefault(os.path.relpath(os.path.dirname(path), tb_root), []).append(
                        event.step
                    )
    return {d: sorted(s) for d, s in found.items()}


def test_reruns_in_one_run_dir_keep_their_tensorboard_curves_apart(tmp_path):
    from dlrm_tf.training import trainer as train

    artifacts = []
    for _ in range(2):  # the same job twice, with the same run directory
        model_config, config, source = small_run(tmp_path, "shared")
        result = train.run(model_config, config, source, tf_default_strategy(), lambda _: None)
        artifacts.append(result.artifacts["tensorboard"])
    root = tmp_path / "shared" / "tensorboard"
    first, second = (os.path.relpath(a, root) for a in artifacts)
    assert first != second
    # Each run's curve in its own directory, each printed step once.
    assert event_steps(root, "window_loss") == {
        os.path.join(first, "train"): [2, 4], os.path.join(second, "train"): [2, 4]
    }  # fmt: skip
    assert event_steps(root, "test_auc") == {
        os.path.join(first, "test"): [2, 4], os.path.join(second, "test"): [2, 4]
    }  # fmt: skip
