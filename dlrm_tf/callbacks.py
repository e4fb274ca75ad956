"""Keras callbacks of a training run: the reference's progress lines, evaluation,
TensorBoard scalars, the best model, backups and profiling."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from dlrm_tf.metrics import NonFiniteScoresError
from dlrm_tf.reference_init import reference_parameters


class TrainingDivergedError(ValueError):
    """The training loss became NaN or infinite."""


def format_train_line(it: int, total: int, epoch: int, ms: float, loss: float, acc: float) -> str:
    """The reference's training line."""
    return (
        f"Finished training it {it}/{total} of epoch {epoch}, {ms:.2f} ms/it, "
        f"loss {loss:.6f}, accuracy {acc * 100:3.3f} %"
    )


def format_test_line(it: int, total: int, epoch: int, metrics: dict, best: dict) -> str:
    """The reference's test line, with AUC and log loss added."""
    return (
        f"Testing at - {it}/{total} of epoch {epoch}, loss {metrics['loss']:.6f}, "
        f"auc {metrics['auc']:.4f}, log loss {metrics['log_loss']:.6f}, "
        f"accuracy {metrics['accuracy'] * 100:3.3f} %, best auc {best['auc']:.4f}, "
        f"best accuracy {best['accuracy'] * 100:3.3f} %"
    )


# TensorBoard scalars, named for what they average. All are plotted against the global
# step (optimizer iterations), train and test alike; accuracies are in percent as printed.
TB_SCALARS = {
    "train": {
        "window_loss": "training loss over the iterations since the previous printed line "
        "(the loss of the printed line)",
        "window_accuracy": "training accuracy (%) over the iterations since the previous "
        "printed line (the accuracy of the printed line)",
        "epoch_loss": "training loss over the whole epoch, written at the epoch's end",
        "epoch_accuracy": "training accuracy (%) over the whole epoch, written at its end",
        "learning_rate": "learning rate at the printed line's step",
        "samples_per_s": "training examples per second over the printed line's window "
        "(evaluation time excluded)",
    },
    "test": {
        "test_loss": "loss (the training loss function) over the whole test split",
        "test_auc": "exact ROC AUC over the whole test split",
        "test_accuracy": "accuracy (%) over the whole test split",
        "test_log_loss": "log loss (binary cross-entropy) over the whole test split",
    },
}


def _scalar(tag: str, value: float, run: str) -> None:
    tf.summary.scalar(tag, value, description=TB_SCALARS[run][tag])


def write_hparams(log_dir: str, hparams: dict) -> None:
    """Writes the run's hyperparameters for TensorBoard's HParams dashboard into
    ``log_dir``, with the test metrics (the last value of each: the final test) as its
    metrics, so runs under one ``--logdir`` compare side by side."""
    from tensorboard.plugins.hparams import api as hp

    metrics = [
        hp.Metric("test_auc", group="test", display_name="test AUC"),
        hp.Metric("test_accuracy", group="test", display_name="test accuracy (%)"),
        hp.Metric("test_log_loss", group="test", display_name="test log loss"),
    ]
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        hp.hparams_config(hparams=[hp.HParam(name) for name in hparams], metrics=metrics)
        hp.hparams(hparams)
    writer.close()


class ReferenceLogger(keras.callbacks.Callback):
    """Prints progress like the reference, evaluates every ``test_freq`` steps and at
    epoch ends, writes TensorBoard scalars and keeps the best model by test AUC.

    Keras reports running means since the start of the epoch; the loss and
    accuracy printed are those of the last ``print_freq`` iterations, as in the
    reference, recovered from the running sums. With ``progress_bar`` a bar shows
    the same numbers for the window in progress, drawn so that the printed lines
    never share its line.
    """

    def __init__(
        self,
        *,
        steps_per_epoch: int,
        global_batch: int,
        print_freq: int,
        print_time: bool,
        test_freq: int,
        evaluate: Callable[[], dict] | None,
        learning_rate,
        tensorboard_dir: str | None,
        best_model_path: str,
        save_model: Callable[[str, dict], object],
        log: Callable[[str], None] = print,
        progress_bar: bool = False,
        hparams: dict | None = None,
    ) -> None:
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.global_batch = global_batch
        self.print_freq = max(1, print_freq)
        self.print_time = print_time
        self.test_freq = test_freq
        self._evaluate = evaluate
        self._learning_rate = learning_rate
        self._save_model = save_model
        self.best_model_path = best_model_path
        self.log = log
        self.progress_bar = progress_bar
        self._bar: keras.utils.Progbar | None = None
        self._bar_open = False  # the bar has drawn on a line not yet ended
        self.examples_seen = 0  # training examples of this process's fit calls
        self.test_seconds = 0.0  # time spent evaluating
        self.history: list[dict] = []
        self.best: dict | None = None
        self.saved_best = False
        self.last_test_step = -1
        self._writers = None
        if tensorboard_dir:
            self._writers = {
                "train": tf.summary.create_file_writer(os.path.join(tensorboard_dir, "train")),
                "test": tf.summary.create_file_writer(os.path.join(tensorboard_dir, "test")),
            }
            if hparams:
                write_hparams(tensorboard_dir, hparams)
        self.epoch = 0
        self._first_step = 0
        self._fit_examples: int | None = None

    def start_epoch(self, epoch: int, first_step: int = 0, examples: int | None = None) -> None:
        """Called before each ``fit``: the epoch, the step it starts at (resume) and the
        examples the epoch holds (its last batch may be partial), if known."""
        self.epoch = epoch
        self._first_step = first_step
        self._fit_examples = None if examples is None else examples - first_step * self.global_batch

    def on_epoch_begin(self, epoch, logs=None):
        self._window_sum_loss = 0.0
        self._window_sum_acc = 0.0
        self._window_examples = 0
        self._last_seen = 0
        self._window_start = time.perf_counter()
        self._window_iters = 0
        if self.progress_bar:
            self._bar = keras.utils.Progbar(
                self.steps_per_epoch, stateful_metrics=["loss", "accuracy %"]
            )

    def _global_step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        it = self._first_step + batch + 1  # 1-based iteration within the epoch
        seen = (batch + 1) * self.global_batch  # examples since this fit call began
        if self._fit_examples is not None:
            seen = min(seen, self._fit_examples)
        running_loss = float(logs.get("loss", np.nan))
        if not np.isfinite(running_loss):  # checked every step: stop where it happens
            raise TrainingDivergedError(
                f"the training loss became {running_loss} at iteration {it} of epoch "
                f"{self.epoch} (step {self._global_step()}): training diverged; lower "
                "`learning_rate` (or add warm-up steps)"
            )
        total_loss = running_loss * seen
        total_acc = float(logs.get("accuracy", np.nan)) * seen
        self._window_iters += 1
        self.examples_seen += seen - self._last_seen
        self._last_seen = seen
        last = it == self.steps_per_epoch
        printing = it % self.print_freq == 0 or last
        if self._bar is not None:
            self._update_bar(it, total_loss, total_acc, seen, finalize=printing)
        if printing:
            examples = seen - self._window_examples
            loss = (total_loss - self._window_sum_loss) / examples
            if not np.isfinite(loss):
                raise TrainingDivergedError(
                    f"the training loss became {loss} by iteration {it} of epoch {self.epoch}: "
                    "training diverged; lower `learning_rate` (or add warm-up steps)"
                )
            acc = (total_acc - self._window_sum_acc) / examples
            elapsed = time.perf_counter() - self._window_start
            ms = 1000.0 * elapsed / self._window_iters if self.print_time else -1.0
            self.emit(format_train_line(it, self.steps_per_epoch, self.epoch, ms, loss, acc))
            step = self._global_step()
            lr = float(self._current_lr(step))
            record = {
                "step": step,
                "epoch": self.epoch,
                "it": it,
                "train_loss": loss,
                "train_accuracy": acc,
                "learning_rate": lr,
                "samples_per_s": examples / max(elapsed, 1e-9),
                "iterations": self._window_iters,  # fewer than print_freq: a partial window
                "examples": examples,
            }
            self.history.append(record)
            if self._writers:
                with self._writers["train"].as_default(step=step):
                    _scalar("window_loss", loss, "train")
                    _scalar("window_accuracy", 100.0 * acc, "train")
                    _scalar("learning_rate", lr, "train")
                    _scalar("samples_per_s", record["samples_per_s"], "train")
            self._window_sum_loss, self._window_sum_acc = total_loss, total_acc
            self._window_examples = seen
            self._window_start = time.perf_counter()
            self._window_iters = 0
        if self.test_freq > 0 and it % self.test_freq == 0 and not last:
            self.run_test(self._global_step(), it=it)

    def _update_bar(self, it: int, total_loss, total_acc, seen: int, finalize: bool) -> None:
        """Shows the window in progress; at a printed line the bar ends its line first."""
        examples = max(seen - self._window_examples, 1)
        values = [
            ("loss", (total_loss - self._window_sum_loss) / examples),
            ("accuracy %", 100.0 * (total_acc - self._window_sum_acc) / examples),
        ]
        self._bar.update(it, values, finalize=finalize)
        self._bar_open = not finalize

    def emit(self, line: str) -> None:
        """Logs a line; a bar drawn on the current line is ended first, so they never mix."""
        if self._bar_open:
            sys.stdout.write("\n")
            self._bar_open = False
        self.log(line)

    def on_epoch_end(self, epoch, logs=None):
        if self._writers and self._window_examples:
            # After the epoch's last printed line the window sums are the epoch's sums.
            with self._writers["train"].as_default(step=self._global_step()):
                _scalar("epoch_loss", self._window_sum_loss / self._window_examples, "train")
                _scalar(
                    "epoch_accuracy",
                    100.0 * self._window_sum_acc / self._window_examples,
                    "train",
                )
            self._writers["train"].flush()
        if self._evaluate is not None:
            self.run_test(self._global_step(), it=self.steps_per_epoch)

    def _current_lr(self, step: int):
        lr = self._learning_rate
        if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            return lr(max(step - 1, 0))
        return lr.numpy() if hasattr(lr, "numpy") else lr

    def run_test(self, step: int, it: int | None = None, final: bool = False) -> dict | None:
        """Evaluates on the test data, prints, logs and keeps the best model."""
        if self._evaluate is None:
            return None
        started = time.perf_counter()
        try:
            metrics = self._evaluate()
        except NonFiniteScoresError as error:
            raise TrainingDivergedError(f"at step {step}: {error}") from error
        metrics["seconds"] = time.perf_counter() - started
        self.test_seconds += metrics["seconds"]
        if hasattr(self, "_window_start"):
            self._window_start += metrics["seconds"]  # ms/it and samples/s: training only
        self.last_test_step = step
        # Predictions are finite here (else NonFiniteScoresError); AUC is NaN only when
        # the test labels hold one class, and then the latest model stands in.
        improved = (
            self.best is None or metrics["auc"] > self.best["auc"] or np.isnan(self.best["auc"])
        ) and np.isfinite(metrics["loss"])
        if self.best is None:
            self.best = dict(metrics)
        else:
            self.best = {
                "auc": np.nanmax([self.best["auc"], metrics["auc"]]),
                "accuracy": max(self.best["accuracy"], metrics["accuracy"]),
            }
        it = self.steps_per_epoch if it is None else it
        self.emit(format_test_line(it, self.steps_per_epoch, self.epoch, metrics, self.best))
        entry = {"step": step, "epoch": self.epoch, "it": it, "test": metrics}
        self.history.append(entry)
        if self._writers:
            with self._writers["test"].as_default(step=step):
                for key in ("loss", "auc", "log_loss"):
                    _scalar(f"test_{key}", metrics[key], "test")
                _scalar("test_accuracy", 100.0 * metrics["accuracy"], "test")
            for writer in self._writers.values():
                writer.flush()
        if self.best_model_path and improved:
            self._save_model(self.best_model_path, metrics)
            self.saved_best = True
        return metrics


class BackupCallback(keras.callbacks.Callback):
    """Writes a crash-safe backup every ``every`` steps and at each epoch's end."""

    def __init__(self, backup, every: int, best: Callable[[], dict | None] = lambda: None) -> None:
        super().__init__()
        self.backup = backup
        self.every = max(1, every)
        self.best = best  # the best test metrics so far, saved with each backup

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) % self.every == 0:
            self.backup.save(best=self.best())

    def on_epoch_end(self, epoch, logs=None):
        self.backup.save(best=self.best())


class ProfileCallback(keras.callbacks.Callback):
    """Captures a TensorFlow profiler trace of ``num_steps`` steps (TensorBoard's Profile tab)."""

    def __init__(
        self, log_dir: str, start: int, num_steps: int, log: Callable[[str], None] = print
    ) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.log = log
        self.start = start
        self.stop = start + num_steps - 1  # the last profiled step (1-based)
        self.done = False
        self._running = False

    def on_train_batch_begin(self, batch, logs=None):
        if not self.done and not self._running and batch + 1 >= self.start:
            tf.profiler.experimental.start(self.log_dir)
            self._running = True

    def on_train_batch_end(self, batch, logs=None):
        if self._running and batch + 1 >= self.stop:
            self._finish()

    def on_epoch_end(self, epoch, logs=None):
        if self._running:
            self._finish()

    def _finish(self) -> None:
        tf.profiler.experimental.stop()
        self._running = False
        self.done = True
        self.log(profile_message(self.log_dir))


def profile_message(log_dir: str) -> str:
    """Where the profiler trace went and what viewing it needs."""
    where = os.path.join(log_dir, "plugins", "profile")
    view = f"tensorboard --logdir {log_dir}, Profile tab"
    if importlib.util.find_spec("tensorboard_plugin_profile") is None:
        view += (
            "; the tab needs the profiler plugin: pip install tensorboard-plugin-profile "
            '(or pip install -e ".[profile]")'
        )
    return f"Profiler trace written to {where} (view it: {view})"


def print_debug(model, model_config, source, global_batch: int, log=print) -> None:
    """The reference's --debug_mode dump: architecture, the first batches, parameters."""
    cfg = model_config
    top = [cfg.interaction_width, *cfg.top_mlp]
    log("model arch:")
    log(f"mlp top arch {len(cfg.top_mlp)} layers, with input to output dimensions:")
    log(str(np.array(top)))
    log("# of interactions")
    log(str(cfg.interaction_width))
    log(f"mlp bot arch {len(cfg.bottom_mlp) - 1} layers, with input to output dimensions:")
    log(str(np.array(cfg.bottom_mlp)))
    log("# of features (sparse and dense)")
    log(str(cfg.num_tables + 1))
    log("dense feature size")
    log(str(cfg.num_dense))
    log("sparse feature size")
    log(str(cfg.embedding_dim))
    log(
        f"# of embeddings (= # of sparse features) {cfg.num_tables}, "
        f"with dimensions {cfg.embedding_dim}x:"
    )
    log(str(np.array(cfg.table_sizes)))
    log("data (inputs and targets):")
    for j, (features, labels) in enumerate(source.sample_batches(global_batch, 3)):
        log(f"mini-batch: {j}")
        log(str(features["dense_features"]))
        ids = features["sparse_features"]
        if ids.ndim == 3:
            bags = [
                [[int(i) for i in bag if i >= 0] for bag in ids[:, t]] for t in range(ids.shape[1])
            ]
        else:
            bags = [[[int(i)] for i in ids[:, t]] for t in range(ids.shape[1])]
        log(str(bags))
        log(str(labels))
    print_parameters(model, "initial parameters (weights and bias):", log)


def print_parameters(model, title: str, log=print) -> None:
    """Prints ``title``, then the weights as the reference's --debug_mode does: tables,
    then each bottom- and top-MLP layer's weight ``[out, in]`` and bias."""
    log(title)
    for array in reference_parameters(model):
        log(str(array))
