"""Keras callbacks of a training run, one job each, composed by ``dlrm_tf.training.trainer``.

``ProgressPrinter`` prints the reference's training lines, ``DivergenceGuard``
stops at a non-finite loss, ``PeriodicEvaluator`` evaluates every
``test_freq`` steps and at epoch ends, ``BestModelSaver`` keeps the best model
by test AUC, ``TensorBoardWriter`` writes the scalars and hyperparameters,
``BackupCallback`` and ``ProfileCallback`` write backups and a profiler trace.
The printer and the evaluator add their records to one ``RunHistory``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from dlrm_tf.training.metrics import NonFiniteScoresError


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


class EpochPosition:
    """Where the current ``fit`` call is in its epoch; shared by the callbacks that
    number iterations (a resumed epoch starts at ``first_step``)."""

    def __init__(self, steps_per_epoch: int, global_batch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.global_batch = global_batch
        self.epoch = 0
        self.first_step = 0
        self._fit_examples: int | None = None

    def start(self, epoch: int, first_step: int = 0, examples: int | None = None) -> None:
        """Called before each ``fit``: the epoch, the step it starts at (resume) and the
        examples the epoch holds (its last batch may be partial), if known."""
        self.epoch = epoch
        self.first_step = first_step
        self._fit_examples = None if examples is None else examples - first_step * self.global_batch

    def iteration(self, batch: int) -> int:
        """The 1-based iteration within the epoch of ``fit``'s batch ``batch``."""
        return self.first_step + batch + 1

    def seen(self, batch: int) -> int:
        """Examples trained since this ``fit`` call began, through batch ``batch``."""
        seen = (batch + 1) * self.global_batch
        return seen if self._fit_examples is None else min(seen, self._fit_examples)


def _global_step(model) -> int:
    return int(model.optimizer.iterations.numpy())


class RunHistory:
    """The run's printed records, in order (``history.json``), passed on to each
    subscriber (e.g. the TensorBoard writer) as they are added."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.subscribers: list[Callable[[dict], None]] = []

    def add(self, record: dict) -> None:
        self.records.append(record)
        for subscriber in self.subscribers:
            subscriber(record)


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the step whose training loss is NaN or infinite."""

    def __init__(self, position: EpochPosition) -> None:
        super().__init__()
        self.position = position

    def on_train_batch_end(self, batch, logs=None):
        running_loss = float((logs or {}).get("loss", np.nan))
        if not np.isfinite(running_loss):
            raise TrainingDivergedError(
                f"the training loss became {running_loss} at iteration "
                f"{self.position.iteration(batch)} of epoch {self.position.epoch} "
                f"(step {_global_step(self.model)}): training diverged; lower "
                "`learning_rate` (or add warm-up steps)"
            )


class ProgressPrinter(keras.callbacks.Callback):
    """Prints the reference's training lines and adds their records to the history.

    Keras reports running means since the start of the epoch; the loss and
    accuracy printed are those of the last ``print_freq`` iterations, as in the
    reference, recovered from the running sums. With ``progress_bar`` a bar shows
    the same numbers for the window in progress, drawn so that the printed lines
    never share its line.
    """

    def __init__(
        self,
        position: EpochPosition,
        history: RunHistory,
        *,
        print_freq: int,
        print_time: bool,
        learning_rate,
        log: Callable[[str], None] = print,
        progress_bar: bool = False,
    ) -> None:
        super().__init__()
        self.position = position
        self.history = history
        self.print_freq = max(1, print_freq)
        self.print_time = print_time
        self._learning_rate = learning_rate
        self.log = log
        self.progress_bar = progress_bar
        self._bar: keras.utils.Progbar | None = None
        self._bar_open = False  # the bar has drawn on a line not yet ended
        self.examples_seen = 0  # training examples of this process's fit calls
        self._window_start: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._window_sum_loss = 0.0
        self._window_sum_acc = 0.0
        self._window_examples = 0
        self._last_seen = 0
        self._window_start = time.perf_counter()
        self._window_iters = 0
        if self.progress_bar:
            self._bar = keras.utils.Progbar(
                self.position.steps_per_epoch, stateful_metrics=["loss", "accuracy %"]
            )

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        it, seen = self.position.iteration(batch), self.position.seen(batch)
        total_loss = float(logs.get("loss", np.nan)) * seen
        total_acc = float(logs.get("accuracy", np.nan)) * seen
        self._window_iters += 1
        self.examples_seen += seen - self._last_seen
        self._last_seen = seen
        printing = it % self.print_freq == 0 or it == self.position.steps_per_epoch
        if self._bar is not None:
            self._update_bar(it, total_loss, total_acc, seen, finalize=printing)
        if printing:
            self._print_window(it, total_loss, total_acc, seen)

    def _print_window(self, it: int, total_loss: float, total_acc: float, seen: int) -> None:
        """Prints and records the window ending at iteration ``it``, then starts the next."""
        examples = seen - self._window_examples
        loss = (total_loss - self._window_sum_loss) / examples
        if not np.isfinite(loss):
            raise TrainingDivergedError(
                f"the training loss became {loss} by iteration {it} of epoch "
                f"{self.position.epoch}: training diverged; lower `learning_rate` "
                "(or add warm-up steps)"
            )
        acc = (total_acc - self._window_sum_acc) / examples
        elapsed = time.perf_counter() - self._window_start
        ms = 1000.0 * elapsed / self._window_iters if self.print_time else -1.0
        steps, epoch = self.position.steps_per_epoch, self.position.epoch
        self.emit(format_train_line(it, steps, epoch, ms, loss, acc))
        step = _global_step(self.model)
        self.history.add({
            "step": step,
            "epoch": epoch,
            "it": it,
            "train_loss": loss,
            "train_accuracy": acc,
            "learning_rate": float(self._current_lr(step)),
            "samples_per_s": examples / max(elapsed, 1e-9),
            "iterations": self._window_iters,  # fewer than print_freq: a partial window
            "examples": examples,
        })  # fmt: skip
        self._window_sum_loss, self._window_sum_acc = total_loss, total_acc
        self._window_examples = seen
        self._window_start = time.perf_counter()
        self._window_iters = 0

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

    def exclude_time(self, seconds: float) -> None:
        """Leaves ``seconds`` (an evaluation) out of the window's ms/it and samples/s."""
        if self._window_start is not None:
            self._window_start += seconds

    def epoch_means(self) -> tuple[float, float] | None:
        """(loss, accuracy) over this ``fit`` call's examples, once its last line printed."""
        if not getattr(self, "_window_examples", 0):
            return None
        n = self._window_examples
        return self._window_sum_loss / n, self._window_sum_acc / n

    def _current_lr(self, step: int):
        lr = self._learning_rate
        if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            return lr(max(step - 1, 0))
        return lr.numpy() if hasattr(lr, "numpy") else lr


class BestMetrics:
    """The best test metrics so far (AUC; accuracy kept apart), carried across resumes."""

    def __init__(self, best: dict | None = None) -> None:
        self.value = best

    def update(self, metrics: dict) -> bool:
        """Takes one evaluation's metrics; True when its model is the new best."""
        best = self.value
        # Predictions are finite here (else NonFiniteScoresError); AUC is NaN only when
        # the test labels hold one class, and then the latest model stands in.
        improved = (
            best is None or metrics["auc"] > best["auc"] or np.isnan(best["auc"])
        ) and np.isfinite(metrics["loss"])
        if best is None:
            self.value = dict(metrics)
        else:
            self.value = {
                "auc": np.nanmax([best["auc"], metrics["auc"]]),
                "accuracy": max(best["accuracy"], metrics["accuracy"]),
            }
        return improved


class PeriodicEvaluator(keras.callbacks.Callback):
    """Evaluates every ``test_freq`` iterations and at each epoch's end: prints the
    reference's test line, adds the record to the history and tells each
    ``on_test`` listener ``(metrics, improved)``."""

    def __init__(
        self,
        position: EpochPosition,
        history: RunHistory,
        *,
        test_freq: int,
        evaluate: Callable[[], dict],
        best: BestMetrics,
        log: Callable[[str], None] = print,
        exclude_time: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        super().__init__()
        self.position = position
        self.history = history
        self.test_freq = test_freq
        self._evaluate = evaluate
        self.best = best
        self.log = log
        self._exclude_time = exclude_time
        self.on_test: list[Callable[[dict, bool], None]] = []
        self.test_seconds = 0.0  # time spent evaluating
        self.last_test_step = -1

    def on_train_batch_end(self, batch, logs=None):
        it = self.position.iteration(batch)
        if self.test_freq > 0 and it % self.test_freq == 0 and it != self.position.steps_per_epoch:
            self.run_test(_global_step(self.model), it=it)

    def on_epoch_end(self, epoch, logs=None):
        self.run_test(_global_step(self.model))

    def run_test(self, step: int, it: int | None = None) -> dict:
        """Evaluates on the test data at global ``step`` (iteration ``it`` of the epoch,
        default its last), prints, records and tells the listeners."""
        started = time.perf_counter()
        try:
            metrics = self._evaluate()
        except NonFiniteScoresError as error:
            raise TrainingDivergedError(f"at step {step}: {error}") from error
        metrics["seconds"] = time.perf_counter() - started
        self.test_seconds += metrics["seconds"]
        self._exclude_time(metrics["seconds"])  # ms/it and samples/s: training only
        self.last_test_step = step
        improved = self.best.update(metrics)
        steps, epoch = self.position.steps_per_epoch, self.position.epoch
        it = steps if it is None else it
        self.log(format_test_line(it, steps, epoch, metrics, self.best.value))
        self.history.add({"step": step, "epoch": epoch, "it": it, "test": metrics})
        for listener in self.on_test:
            listener(metrics, improved)
        return metrics


class BestModelSaver:
    """An ``on_test`` listener that saves the model whenever its evaluation is the best."""

    def __init__(self, path: str, save_model: Callable[[str, dict], object]) -> None:
        self.path = path
        self._save_model = save_model
        self.saved = False  # whether this run wrote the best model

    def __call__(self, metrics: dict, improved: bool) -> None:
        if improved:
            self._save_model(self.path, metrics)
            self.saved = True


class TensorBoardWriter(keras.callbacks.Callback):
    """Writes the history's records as TensorBoard scalars (``train/``, ``test/``),
    the epoch means at each epoch's end, and the run's hyperparameters.

    Subscribe ``write`` to the run's ``RunHistory``; the epoch means come from
    ``epoch_means`` (the printer's).
    """

    def __init__(
        self,
        log_dir: str,
        epoch_means: Callable[[], tuple[float, float] | None],
        hparams: dict | None = None,
    ) -> None:
        super().__init__()
        self.log_dir = log_dir
        self._epoch_means = epoch_means
        self._writers = {
            run: tf.summary.create_file_writer(os.path.join(log_dir, run))
            for run in ("train", "test")
        }
        if hparams:
            write_hparams(log_dir, hparams)

    def write(self, record: dict) -> None:
        """Writes one history record (a printed training window or a test)."""
        step = record["step"]
        if "test" in record:
            metrics = record["test"]
            with self._writers["test"].as_default(step=step):
                for key in ("loss", "auc", "log_loss"):
                    _scalar(f"test_{key}", metrics[key], "test")
                _scalar("test_accuracy", 100.0 * metrics["accuracy"], "test")
            for writer in self._writers.values():
                writer.flush()
            return
        with self._writers["train"].as_default(step=step):
            _scalar("window_loss", record["train_loss"], "train")
            _scalar("window_accuracy", 100.0 * record["train_accuracy"], "train")
            _scalar("learning_rate", record["learning_rate"], "train")
            _scalar("samples_per_s", record["samples_per_s"], "train")

    def on_epoch_end(self, epoch, logs=None):
        means = self._epoch_means()
        if means is None:
            return
        # After the epoch's last printed line the window sums are the epoch's sums.
        with self._writers["train"].as_default(step=_global_step(self.model)):
            _scalar("epoch_loss", means[0], "train")
            _scalar("epoch_accuracy", 100.0 * means[1], "train")
        self._writers["train"].flush()


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
