"""Training throughput through ``model.fit``, after warm-up.

    python bench/train_throughput.py --flagfile=configs/bench.flags [--bench_steps=60]
    python bench/train_throughput.py --flagfile=configs/bench.flags \
        --data_generation=dataset --processed_data_dir=DIR          # input + training
    python bench/train_throughput.py --flagfile=configs/bench.flags \
        --num_cpu_replicas=2 --distribution_strategy=mirrored      # mirrored path

Takes the trainer's flags. Measured in the same process as the training run:

* the machine: its CPU model and the rate of ``tf.matmul`` 2048x1024x1024 in
  float32 and bfloat16, and from it the model's GEMM time, i.e. the MLPs'
  multiply-adds of a training step (forward and both backward products, no
  interaction) at that rate, in the run's precision; ``ratio_to_gemm`` is the
  step time over it;
* the dense-only bound: the same MLPs trained on the same batch size with the
  embedding lookups replaced by a constant tensor (what the model would reach if
  embeddings, input and optimizer scatters cost nothing).

Generated data is made by NumPy inside the input pipeline, which on a small
machine competes with training for the cores; ``--bench_cache_batches=N``
(default 10, at most the warm-up steps) trains on the first N batches again and
again from a cache filled during warm-up, so the timed steps measure training
alone (as the reference's printed ms/it, which excludes its data generation);
0 generates every batch. Last line: one JSON object with ``samples_per_s``,
``ms_per_step``, ``gemm_ms_per_step``, ``ratio_to_gemm``,
``dense_only_samples_per_s`` and the ratio to it, the CPU and its GEMM rates.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from input_pipeline.tf_startup import prefer_onednn  # noqa: E402  (run as a script: the repo root first)

prefer_onednn()  # the kernels the trainer's command runs on

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from bench.machine import cpu_model, onednn_enabled  # noqa: E402
from bench.op_profile import ProfileSteps, breakdown  # noqa: E402
from dlrm_tf import flags as dlrm_flags  # noqa: E402  (the trainer's flags and their configs)
from dlrm_tf import job  # noqa: E402
from dlrm_tf.kernels import embedding_rows  # noqa: E402
from dlrm_tf.model import packed_gradients  # noqa: E402
from dlrm_tf.model.dlrm import build_model  # noqa: E402
from dlrm_tf.training.strategy import is_chief  # noqa: E402
from dlrm_tf.training.trainer import compile_model, plan_tables, set_precision, table_devices  # noqa: E402

flags.DEFINE_integer("bench_warmup_steps", 15, "Steps not timed.")
flags.DEFINE_integer("bench_steps", 60, "Steps timed.")
flags.DEFINE_integer(
    "bench_profile_steps",
    0,
    "Trace this many steps after the timed ones and print where their time went.",
)
flags.DEFINE_integer(
    "bench_cache_batches", 10, "Repeat the first N batches from a cache (0: generate all)."
)
FLAGS = flags.FLAGS


class StepTimer(keras.callbacks.Callback):
    """Wall time of the steps after ``warmup``."""

    def __init__(self, warmup: int, last: int) -> None:
        super().__init__()
        self.warmup, self.last = warmup, last
        self.start: float | None = None
        self.end: float | None = None
        self.timed = 0
        self._first = 0

    def on_train_batch_end(self, batch, logs=None):
        # ``batch`` is the last step of the call (several with steps_per_execution).
        done = batch + 1
        if self.start is None and done >= self.warmup:
            self.start, self._first = time.perf_counter(), done
        elif self.start is not None and done <= self.last:
            self.timed, self.end = done - self._first, time.perf_counter()


def gemm_gflops(dtype: tf.DType, m: int = 2048, k: int = 1024, n: int = 1024) -> float:
    """Best-of-5 rate of ``tf.matmul`` [m, k] x [k, n] in ``dtype``, GFLOP/s."""
    a = tf.cast(tf.random.normal([m, k]), dtype)
    b = tf.cast(tf.random.normal([k, n]), dtype)
    matmul = tf.function(tf.matmul)
    for _ in range(3):
        matmul(a, b).numpy()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(10):
            c = matmul(a, b)
        c.numpy()
        best = min(best, (time.perf_counter() - started) / 10)
    return 2.0 * m * k * n / best / 1e9


def mlp_flops_per_sample(model_config) -> float:
    """Training FLOPs of the MLPs per example: 3 products (forward, 2 backward) per layer."""
    widths = list(model_config.bottom_mlp)
    macs = sum(a * b for a, b in zip(widths, widths[1:], strict=False))
    top = [model_config.interaction_width, *model_config.top_mlp]
    macs += sum(a * b for a, b in zip(top, top[1:], strict=False))
    return 3 * 2.0 * macs


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
    # Table sizes come from converted data; the flag file's random-data sizes stand unused.
    run = dlrm_flags.run_config(FLAGS, "runs/bench", ignore_table_sizes=True)
    timed_end = FLAGS.bench_warmup_steps + FLAGS.bench_steps
    total = timed_end + FLAGS.bench_profile_steps
    run = dataclasses.replace(run, data=dataclasses.replace(run.data, num_batches=total))
    train_config = run.train
    strategy, source, model_config = job.set_up(run)
    set_precision(train_config.mixed_precision)
    batch = train_config.mini_batch_size
    plan = plan_tables(model_config, train_config, strategy)
    devices = table_devices(plan, strategy)
    with strategy.scope():
        model = build_model(
            model_config, jit_compile=train_config.jit_compile, table_devices=devices
        )
        compile_model(model, train_config)
    source = source.with_batches(batch)
    steps = min(total, source.steps_per_epoch())
    data = source.train_dataset(strategy)
    cache = FLAGS.bench_cache_batches
    generated = run.data.generation != "dataset"
    if cache > FLAGS.bench_warmup_steps:
        print("error: --bench_cache_batches must be <= --bench_warmup_steps", file=sys.stderr)
        return 2
    cache = cache if generated and strategy.num_replicas_in_sync == 1 else 0
    if cache > 0:
        data = data.take(cache).cache().repeat()
    timer = StepTimer(FLAGS.bench_warmup_steps, timed_end)
    callbacks = [timer]
    profiler = None
    # Every worker of a cluster runs the traced steps; only the first traces them
    # (two of TensorFlow's profilers stopping at once in one host aborted a worker).
    if FLAGS.bench_profile_steps > 0 and is_chief(strategy):
        profiler = ProfileSteps(timed_end + 1, FLAGS.bench_profile_steps)
        callbacks.append(profiler)
    model.fit(data, epochs=1, steps_per_epoch=steps, callbacks=callbacks, verbose=0, shuffle=False)
    if timer.start is None or timer.end is None or timer.timed == 0:
        print(f"error: need more than {FLAGS.bench_warmup_steps} steps of data", file=sys.stderr)
        return 2
    seconds = timer.end - timer.start
    rate = batch * timer.timed / seconds
    # The baseline runs on one device: a fresh copy of the model outside the strategy.
    dense_rate = dense_only_rate(build_model(model_config), batch, FLAGS.bench_steps, 5)
    rates = {
        name: gemm_gflops(dtype) for name, dtype in (("fp32", tf.float32), ("bf16", tf.bfloat16))
    }
    precision = "bf16" if train_config.mixed_precision == "bfloat16" else "fp32"
    gemm_ms = 1000 * mlp_flops_per_sample(model_config) * batch / (rates[precision] * 1e9)
    ms_per_step = 1000 * seconds / timer.timed
    result = {
        "cpu": cpu_model(),
        "onednn": onednn_enabled(),
        "fused_kernels": embedding_rows.available(),
        "pooled_lookup": embedding_rows.pooled(),
        "packed_gradients": packed_gradients.enabled(),
        "gemm_gflops_fp32": round(rates["fp32"], 1),
        "gemm_gflops_bf16": round(rates["bf16"], 1),
        "samples_per_s": round(rate, 1),
        "ms_per_step": round(ms_per_step, 3),
        "gemm_ms_per_step": round(gemm_ms, 3),
        "ratio_to_gemm": round(ms_per_step / gemm_ms, 3),
        "dense_only_samples_per_s": round(dense_rate, 1),
        "ratio_to_dense_only": round(rate / dense_rate, 3),
        "batch": batch,
        "timed_steps": timer.timed,
        "replicas": strategy.num_replicas_in_sync,
        "data": run.data.generation,
        "optimizer": train_config.optimizer,
        "mixed_precision": train_config.mixed_precision,
        "jit_compile": train_config.jit_compile,
        "steps_per_execution": train_config.steps_per_execution,
        "cached_batches": cache,
        "embedding_placement": train_config.embedding_placement,
        "device_bytes": plan.device_bytes(),
    }
    if profiler is not None and profiler.traced:
        parts, ops = breakdown(profiler.log_dir, profiler.traced)
        print(f"Op self-time per step, ms, over {profiler.traced} traced step(s): {parts}")
        for op_type, part, ms in ops:
            print(f"  {op_type:32s} {part:12s} {ms:9.2f}")
        result.update({f"profile_ms_{part}": ms for part, ms in parts.items()})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    dlrm_flags.run_app(main)
