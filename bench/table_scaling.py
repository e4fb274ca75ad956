"""Step time of ``model.fit`` against embedding-table size, for each optimizer.

One DLRM with a single table (d = 16), bottom MLP 13-64-16, top MLP 64-1,
batch 2048, one uniformly random id per example, MSE loss,
``steps_per_execution=1``. For each optimizer one model with 10^4 rows and
one with 10^7 rows are warmed up, then their timed epochs alternate (so load
from other processes falls on both alike); a callback times every training
batch and the median is reported in ms. A step time that does not depend on
the table size shows that no step reads or writes a whole table.

Keras's stock optimizers are measured the same way, with fewer steps (keys
``ms_1e4_keras_<opt>``, ``ms_1e7_keras_<opt>``, ``ratio_keras_<opt>``, and
``keras_over_ours_1e7_<opt>``), to show what the sparse updates save.

    python bench/table_scaling.py [--mirrored] [--rounds 5] [--steps 20]

``--mirrored`` runs the same under ``tf.distribute.MirroredStrategy`` on two
logical CPU devices (keys prefixed ``mirrored_``). The last line printed is
one JSON object with ``ms_1e4_<opt>``, ``ms_1e7_<opt>``, ``ratio_<opt>``.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from input_pipeline.tf_startup import prefer_onednn  # noqa: E402

prefer_onednn()  # the kernels the trainer's command runs on

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from dlrm_tf.config import OPTIMIZERS, ModelConfig  # noqa: E402
from dlrm_tf.model.dlrm import DENSE_KEY, SPARSE_KEY, build_model  # noqa: E402
from dlrm_tf.model.optimizers import make_optimizer  # noqa: E402

EMBEDDING_DIM = 16
BATCH = 2048
LEARNING_RATES = {"sgd": 0.01, "adagrad": 0.01, "adam": 0.001}
STOCK = {
    "sgd": lambda lr: keras.optimizers.SGD(lr),
    "adagrad": lambda lr: keras.optimizers.Adagrad(lr, initial_accumulator_value=0.0),
    "adam": lambda lr: keras.optimizers.Adam(lr),
}


class BatchTimer(keras.callbacks.Callback):
    """Records the wall time of every training batch, in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_begin(self, batch, logs=None) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.times.append(time.perf_counter() - self._start)


def make_dataset(rows: int, steps: int, seed: int = 0) -> tf.data.Dataset:
    """``steps`` batches of random dense features, one random id per example, 0/1 labels."""
    rng = np.random.default_rng(seed)
    n = steps * BATCH
    features = {
        DENSE_KEY: rng.random((n, 13), dtype=np.float32),
        SPARSE_KEY: rng.integers(0, rows, (n, 1), dtype=np.int64),
    }
    labels = rng.integers(0, 2, (n, 1)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((features, labels)).batch(BATCH).cache().repeat()


class Setting:
    """One compiled model (one table of ``rows`` rows) with its data and batch timer."""

    def __init__(self, rows: int, make_opt, strategy) -> None:
        config = ModelConfig(
            embedding_dim=EMBEDDING_DIM,
            table_sizes=(rows,),
            bottom_mlp=(13, 64, EMBEDDING_DIM),
            top_mlp=(64, 1),
        )
        with strategy.scope():
            self.model = build_model(config)
            # Created in the strategy's scope: a Keras optimizer binds the current strategy.
            self.model.compile(optimizer=make_opt(), loss="mse", steps_per_execution=1)
        self.data = make_dataset(rows, 16)
        self.timer = BatchTimer()
        self.model.fit(self.data, epochs=1, steps_per_epoch=3, verbose=0)  # trace, warm up

    def run(self, steps: int) -> None:
        """One timed epoch of ``steps`` steps."""
        self.model.fit(
            self.data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[self.timer]
        )

    def median_ms(self) -> float:
        return 1000.0 * float(np.median(self.timer.times))


def compare(make_opt, strategy, rounds: int, steps: int) -> tuple[float, float]:
    """Median ms/step at 10^4 and 10^7 rows, the timed epochs of the two interleaved.

    Interleaving spreads any load from other processes over both sizes alike.
    """
    small = Setting(10**4, make_opt, strategy)
    large = Setting(10**7, make_opt, strategy)
    for _ in range(rounds):
        small.run(steps)
        large.run(steps)
    result = small.median_ms(), large.median_ms()
    del small, large
    gc.collect()
    return result


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark and prints the JSON result as the last line."""
    from input_pipeline.errors import ArgumentParser

    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirrored", action="store_true", help="MirroredStrategy, 2 CPUs")
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs per setting")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
    parser.add_argument(
        "--stock_steps",
        type=int,
        default=4,
        help="steps per timed epoch for Keras's stock optimizers (slow on 10^7 rows)",
    )
    parser.add_argument("--no_stock", action="store_true", help="skip Keras's stock optimizers")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    args = parser.parse_args(argv)

    if args.mirrored:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        prefix = "mirrored_"
    else:
        strategy = tf.distribute.get_strategy()
        prefix = ""
    keras.utils.set_random_seed(0)

    result: dict[str, float | str] = {
        "setup": f"1 table d={EMBEDDING_DIM}, bottom 13-64-{EMBEDDING_DIM}, top 64-1, "
        f"batch {BATCH}, 1 id/example, mse, steps_per_execution=1, median of "
        f"{args.rounds}x{args.steps} steps"
        + (", MirroredStrategy 2 logical CPUs" if args.mirrored else "")
    }
    for name in args.optimizers.split(","):
        lr = LEARNING_RATES[name]
        small, large = compare(
            functools.partial(make_optimizer, name, lr), strategy, args.rounds, args.steps
        )
        result[f"{prefix}ms_1e4_{name}"] = round(small, 3)
        result[f"{prefix}ms_1e7_{name}"] = round(large, 3)
        result[f"{prefix}ratio_{name}"] = round(large / small, 3)
        print(f"{prefix}{name}: {small:.2f} ms/step at 1e4 rows, {large:.2f} at 1e7", flush=True)
        if args.no_stock:
            continue
        stock_small, stock_large = compare(
            functools.partial(STOCK[name], lr), strategy, 2, args.stock_steps
        )
        result[f"{prefix}ms_1e4_keras_{name}"] = round(stock_small, 3)
        result[f"{prefix}ms_1e7_keras_{name}"] = round(stock_large, 3)
        result[f"{prefix}ratio_keras_{name}"] = round(stock_large / stock_small, 3)
        result[f"{prefix}keras_over_ours_1e7_{name}"] = round(stock_large / large, 2)
        print(
            f"{prefix}keras {name}: {stock_small:.2f} ms/step at 1e4 rows, "
            f"{stock_large:.2f} at 1e7",
            flush=True,
        )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    from input_pipeline.errors import run_cli

    run_cli(main)
