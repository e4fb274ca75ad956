"""Training throughput through ``model.fit``, after warm-up.

    python bench/train_throughput.py --flagfile=configs/bench.flags [--bench_steps=60]
    python bench/train_throughput.py --flagfile=configs/bench.flags \
        --data_generation=dataset --processed_data_dir=DIR          # input + training
    python bench/train_throughput.py --flagfile=configs/bench.flags \
        --num_cpu_replicas=2 --distribution_strategy=mirrored      # mirrored path

Takes the trainer's flags. Measured in the same process as the baseline: the
dense-only bound, i.e. the same MLPs trained on the same batch size with the
embedding lookups replaced by a constant tensor (what the model would reach if
embeddings, input and optimizer scatters cost nothing). Last line: one JSON
object with ``samples_per_s``, ``ms_per_step``, ``dense_only_samples_per_s`` and
their ratio.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from dlrm_tf import main as cli
from dlrm_tf.model import build_model
from dlrm_tf.train import compile_model, set_precision

flags.DEFINE_integer("bench_warmup_steps", 15, "Steps not timed.")
flags.DEFINE_integer("bench_steps", 60, "Steps timed.")
FLAGS = flags.FLAGS


class StepTimer(keras.callbacks.Callback):
    """Wall time of the steps after ``warmup``."""

    def __init__(self, warmup: int) -> None:
        super().__init__()
        self.warmup = warmup
        self.start: float | None = None
        self.end: float | None = None
        self.timed = 0

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.warmup:
            self.start = time.perf_counter()
        elif batch + 1 > self.warmup:
            self.timed += 1
            self.end = time.perf_counter()


def dense_only_rate(model, batch: int, steps: int, warmup: int) -> float:
    """Samples/s of the MLPs and interaction alone, with fixed embedding outputs."""
    cfg = model.model_config
    rng = np.random.default_rng(0)
    dense = tf.constant(rng.random((batch, cfg.num_dense), dtype=np.float32))
    embedded = tf.constant(rng.random((batch, cfg.num_tables, cfg.embedding_dim), np.float32))
    labels = tf.constant(rng.integers(0, 2, (batch, 1)).astype(np.float32))
    variables = model.bottom_mlp.trainable_variables + model.top_mlp.trainable_variables
    opt = keras.optimizers.SGD(0.01)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            p = model.top_mlp(model.interaction((model.bottom_mlp(dense), embedded)))
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(labels, p))
        opt.apply(tape.gradient(loss, variables), variables)
        return loss

    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.numpy()
    return batch * steps / (time.perf_counter() - started)


def main(argv) -> int:
    del argv
    if FLAGS.data_generation == "dataset":
        # Table sizes come from the data; the flag file's random-data sizes do not apply.
        FLAGS["arch_embedding_size"].present = 0
    data_config = cli.data_config_from_flags()
    run_dir = FLAGS.run_dir or "runs/bench"
    train_config = cli.train_config_from_flags(run_dir)
    strategy = cli.strategy_from_flags()
    total = FLAGS.bench_warmup_steps + FLAGS.bench_steps
    data_config = dataclasses.replace(data_config, num_batches=total)
    source, model_config = cli.source_and_model_config(data_config)
    set_precision(train_config.mixed_precision)
    batch = train_config.mini_batch_size
    with strategy.scope():
        model = build_model(model_config, jit_compile=train_config.jit_compile)
        compile_model(model, train_config)
    steps = min(total, source.steps_per_epoch(batch))
    data = source.train_dataset(strategy, batch, steps)
    timer = StepTimer(FLAGS.bench_warmup_steps)
    model.fit(data, epochs=1, steps_per_epoch=steps, callbacks=[timer], verbose=0, shuffle=False)
    if timer.start is None or timer.end is None or timer.timed == 0:
        print(f"error: need more than {FLAGS.bench_warmup_steps} steps of data", file=sys.stderr)
        return 2
    seconds = timer.end - timer.start
    rate = batch * timer.timed / seconds
    # The baseline runs on one device: a fresh copy of the model outside the strategy.
    dense_rate = dense_only_rate(build_model(model_config), batch, FLAGS.bench_steps, 5)
    result = {
        "samples_per_s": round(rate, 1),
        "ms_per_step": round(1000 * seconds / timer.timed, 3),
        "dense_only_samples_per_s": round(dense_rate, 1),
        "ratio_to_dense_only": round(rate / dense_rate, 3),
        "batch": batch,
        "timed_steps": timer.timed,
        "replicas": strategy.num_replicas_in_sync,
        "data": FLAGS.data_generation,
        "optimizer": FLAGS.optimizer,
        "mixed_precision": FLAGS.mixed_precision,
        "jit_compile": FLAGS.jit_compile,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    from input_pipeline.errors import parse_absl_flags, run_cli

    app.run(lambda argv: run_cli(lambda: main(argv)), flags_parser=parse_absl_flags)
