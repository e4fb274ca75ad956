"""The reference's printed lines: per-window loss and accuracy from Keras's running means."""

import re
import types

import numpy as np
import pytest

from dlrm_tf.training.callbacks import (
    DivergenceGuard,
    EpochPosition,
    ProgressPrinter,
    RunHistory,
    TrainingDivergedError,
)


class FakeIterations:
    def __init__(self):
        self.value = 0

    def numpy(self):
        return self.value


class Callbacks:
    """The guard and the printer, called in the trainer's order."""

    def __init__(self, *callbacks):
        self.callbacks = callbacks
        self.position = callbacks[0].position

    def start_epoch(self, epoch, examples):
        self.position.start(epoch, examples=examples)

    def on_epoch_begin(self, epoch):
        for c in self.callbacks:
            c.on_epoch_begin(epoch)

    def on_train_batch_end(self, batch, logs):
        for c in self.callbacks:
            c.on_train_batch_end(batch, logs)


def make_logger(lines, print_freq):
    position, history = EpochPosition(steps_per_epoch=3, global_batch=2), RunHistory()
    printer = ProgressPrinter(
        position, history, print_freq=print_freq, print_time=False, learning_rate=0.1,
        log=lines.append,
    )  # fmt: skip
    logger = Callbacks(DivergenceGuard(position), printer)
    iterations = FakeIterations()
    model = types.SimpleNamespace(optimizer=types.SimpleNamespace(iterations=iterations))
    for c in logger.callbacks:
        c.set_model(model)
    return logger, iterations


def feed(logger, iterations, batch_losses, batch_sizes, batch_accs):
    """Feeds Keras-style running means (weighted by batch size) batch by batch."""
    logger.on_epoch_begin(0)
    seen = loss_sum = acc_sum = 0.0
    for b, (loss, n, acc) in enumerate(zip(batch_losses, batch_sizes, batch_accs, strict=True)):
        seen += n
        loss_sum += loss * n
        acc_sum += acc * n
        iterations.value += 1
        logger.on_train_batch_end(b, {"loss": loss_sum / seen, "accuracy": acc_sum / seen})


def printed(lines):
    pattern = r"it (\d+)/3 of epoch 0, -1.00 ms/it, loss (\S+), accuracy (\S+) %"
    return [
        (int(m[1]), float(m[2]), float(m[3]))
        for m in map(re.search, [pattern] * len(lines), lines)
        if m
    ]


def test_each_line_reports_its_own_iterations_with_a_partial_last_batch():
    lines = []
    logger, iterations = make_logger(lines, print_freq=1)
    logger.start_epoch(0, examples=5)  # batches of 2, 2 and 1 examples
    feed(logger, iterations, [0.5, 0.3, 0.9], [2, 2, 1], [1.0, 0.5, 0.0])
    got = printed(lines)
    assert [it for it, _, _ in got] == [1, 2, 3]
    np.testing.assert_allclose([loss for _, loss, _ in got], [0.5, 0.3, 0.9], atol=1e-6)
    np.testing.assert_allclose([acc for _, _, acc in got], [100.0, 50.0, 0.0], atol=1e-3)


def test_window_of_several_iterations_averages_over_examples():
    lines = []
    logger, iterations = make_logger(lines, print_freq=2)
    logger.start_epoch(0, examples=5)
    feed(logger, iterations, [0.5, 0.3, 0.9], [2, 2, 1], [1.0, 0.5, 0.0])
    got = printed(lines)
    assert [it for it, _, _ in got] == [2, 3]  # every 2 iterations, and the epoch's last
    np.testing.assert_allclose([loss for _, loss, _ in got], [0.4, 0.9], atol=1e-6)


def test_diverged_loss_stops_with_a_clear_error():
    logger, iterations = make_logger([], print_freq=1)
    logger.start_epoch(0, examples=6)
    with pytest.raises(TrainingDivergedError, match="lower `learning_rate`"):
        feed(logger, iterations, [0.5, float("nan")], [2, 2], [1.0, 1.0])


def test_evaluator_prints_records_and_the_saver_keeps_only_improvements():
    from dlrm_tf.training.callbacks import BestMetrics, BestModelSaver, PeriodicEvaluator

    aucs = iter([0.60, 0.70, 0.65, 0.80])
    position, history = EpochPosition(steps_per_epoch=4, global_batch=2), RunHistory()
    lines, saved = [], []
    evaluator = PeriodicEvaluator(
        position, history, test_freq=1,
        evaluate=lambda: {"loss": 0.5, "auc": next(aucs), "log_loss": 0.5, "accuracy": 0.5},
        best=BestMetrics({"auc": 0.65, "accuracy": 0.4}),  # carried from an earlier run
        log=lines.append,
    )  # fmt: skip
    saver = BestModelSaver("best.keras", lambda path, metrics: saved.append(metrics["auc"]))
    evaluator.on_test.append(saver)
    iterations = FakeIterations()
    evaluator.set_model(
        types.SimpleNamespace(optimizer=types.SimpleNamespace(iterations=iterations))
    )
    position.start(0)
    for batch in range(4):  # tests after iterations 1, 2, 3; the 4th is the epoch's end
        iterations.value += 1
        evaluator.on_train_batch_end(batch)
    evaluator.on_epoch_end(0)
    # Saved only when the AUC beats the best so far, the carried 0.65 included.
    assert saved == [0.70, 0.80] and saver.saved
    best = [float(re.search(r"best auc (\S+),", line)[1]) for line in lines]
    assert best == [0.65, 0.70, 0.70, 0.80]
    assert [(r["step"], r["it"]) for r in history.records] == [(1, 1), (2, 2), (3, 3), (4, 4)]
