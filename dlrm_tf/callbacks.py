"""Keras callbacks of a training run: the reference's progress lines, evaluation,
TensorBoard scalars, the best model, backups and profiling."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from dlrm_tf.metrics import NonFiniteScoresError


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


class ReferenceLogger(keras.callbacks.Callback):
    """Prints progress like the reference, evaluates every ``test_freq`` steps and at
    epoch ends, writes TensorBoard scalars and keeps the best model by test AUC.

    Keras reports running means since the start of the epoch; the loss and
    accuracy printed are those of the last ``print_freq`` iterations, as in the
    reference, recovered from the running sums.
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
        self._window_start = time.perf_counter()
        self._window_iters = 0

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
                "--learning_rate (or add warm-up steps)"
            )
        total_loss = running_loss * seen
        total_acc = float(logs.get("accuracy", np.nan)) * seen
        self._window_iters += 1
        last = it == self.steps_per_epoch
        if it % self.print_freq == 0 or last:
            examples = seen - self._window_examples
            loss = (total_loss - self._window_sum_loss) / examples
            if not np.isfinite(loss):
                raise TrainingDivergedError(
                    f"the training loss became {loss} by iteration {it} of epoch {self.epoch}: "
                    "training diverged; lower --learning_rate (or add warm-up steps)"
                )
            acc = (total_acc - self._window_sum_acc) / examples
            elapsed = time.perf_counter() - self._window_start
            ms = 1000.0 * elapsed / self._window_iters if self.print_time else -1.0
            self.log(format_train_line(it, self.steps_per_epoch, self.epoch, ms, loss, acc))
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
            }
            self.history.append(record)
            if self._writers:
                with self._writers["train"].as_default(step=step):
                    tf.summary.scalar("loss", loss)
                    tf.summary.scalar("accuracy", acc)
                    tf.summary.scalar("learning_rate", lr)
                    tf.summary.scalar("samples_per_s", record["samples_per_s"])
            self._window_sum_loss, self._window_sum_acc = total_loss, total_acc
            self._window_examples = seen
            self._window_start = time.perf_counter()
            self._window_iters = 0
        if self.test_freq > 0 and it % self.test_freq == 0 and not last:
            self.run_test(self._global_step(), it=it)

    def on_epoch_end(self, epoch, logs=None):
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
        self.log(format_test_line(it, self.steps_per_epoch, self.epoch, metrics, self.best))
        entry = {"step": step, "epoch": self.epoch, "it": it, "test": metrics}
        self.history.append(entry)
        if self._writers:
            with self._writers["test"].as_default(step=step):
                for key in ("loss", "auc", "accuracy", "log_loss"):
                    tf.summary.scalar(key, metrics[key])
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

    def __init__(self, log_dir: str, start: int, num_steps: int) -> None:
        super().__init__()
        self.log_dir = log_dir
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
    log("initial parameters (weights and bias):")
    for weight in model.weights:
        log(f"{weight.path} {tuple(weight.shape)}")
        log(str(weight.numpy()))
