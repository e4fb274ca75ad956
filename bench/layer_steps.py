"""One layer's training step alone, two ways, timed alternately in one process.

    python bench/layer_steps.py --flagfile=configs/bench.flags [--layer=embeddings|interaction]
        [--rounds=5] [--steps=20]

Takes the trainer's flags: the layer has their shape (``arch_embedding_size``,
``arch_sparse_feature_size``, ``num_indices_per_lookup`` ids per bag,
``mini_batch_size``, ``arch_interaction_itself``), read through the trainer's
configs:

* ``embeddings``: ``EmbeddingBags``' lookup, gradient and SGD update with the
  fused kernels, one op per table (``DLRM_TF_POOLED_LOOKUP=0``) against one
  pooled op for all tables;
* ``interaction``: ``DotInteraction``'s forward and backward on the bottom
  output and the embeddings, TensorFlow's ops against the fused kernel.

Both variants are traced first, then timed round by round, so they share the
machine's state of the moment. Last line: one JSON object with the CPU, both
variants' ms per step for every round and ``speedup`` (median of the first over
median of the second).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from input_pipeline.tf_startup import prefer_onednn  # noqa: E402  (run as a script: the repo root first)

prefer_onednn()  # the kernels the trainer's command runs on

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from bench.machine import cpu_model  # noqa: E402
from dlrm_tf import flags as dlrm_flags  # noqa: E402  (the trainer's flags and their configs)
from dlrm_tf.config import ModelConfig  # noqa: E402
from dlrm_tf.kernels import build, embedding_rows  # noqa: E402
from dlrm_tf.model.layers import DotInteraction, EmbeddingBags  # noqa: E402
from dlrm_tf.model.optimizers import make_optimizer  # noqa: E402

flags.DEFINE_enum("layer", "embeddings", ["embeddings", "interaction"], "The layer to time.")
flags.DEFINE_integer("rounds", 5, "Rounds, each timing both variants.")
flags.DEFINE_integer("steps", 20, "Steps timed per variant and round.")
FLAGS = flags.FLAGS


def embedding_steps(config: ModelConfig, per_bag: int, batch: int) -> dict:
    """The two traced steps of the embedding layer, by name."""
    sizes, dim = config.table_sizes, config.embedding_dim
    rng = np.random.default_rng(0)
    ids = tf.constant(np.stack([rng.integers(0, n, (batch, per_bag)) for n in sizes], axis=1))
    weight = tf.constant(rng.standard_normal((batch, len(sizes), dim)).astype(np.float32))
    layer = EmbeddingBags(sizes, dim)
    layer.build(ids.shape)
    optimizer = make_optimizer("sgd", 0.01)

    def traced_step(pooled: str):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(ids, training=True) * weight)
            grads = tape.gradient(loss, layer.tables)
            optimizer.apply_gradients(zip(grads, layer.tables, strict=True))

        os.environ[embedding_rows.POOLED_ENV] = pooled
        step()  # traced with the switch as set
        return step

    return {"per_table": traced_step("0"), "pooled": traced_step("1")}


def interaction_steps(config: ModelConfig, per_bag: int, batch: int) -> dict:
    """The two traced forward-and-backward steps of the dot interaction, by name."""
    tables, dim = len(config.table_sizes), config.embedding_dim
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((batch, dim)).astype(np.float32))
    embeddings = tf.constant(rng.standard_normal((batch, tables, dim)).astype(np.float32))

    def traced_step(fused: bool):
        layer = DotInteraction(config.interaction_itself, fused_kernel=fused)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch([x, embeddings])
                loss = tf.reduce_sum(tf.square(layer((x, embeddings), training=True)))
            return tape.gradient(loss, [x, embeddings])

        step()
        return step

    return {"tensorflow": traced_step(False), "fused": traced_step(True)}


LAYERS = {"embeddings": embedding_steps, "interaction": interaction_steps}


def main(argv: list[str]) -> int:
    """Times the chosen layer's two variants and prints the figures (last line: JSON)."""
    del argv
    config = dlrm_flags.model_config(FLAGS)
    per_bag, batch = FLAGS.num_indices_per_lookup, FLAGS.mini_batch_size
    if build.load("embedding_rows") is None or build.load("interaction") is None:
        print(
            "error: the fused kernels are not available here (see dlrm_tf.kernels)", file=sys.stderr
        )
        return 2
    steps = LAYERS[FLAGS.layer](config, per_bag, batch)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(FLAGS.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                step()
            times[name].append(round((time.perf_counter() - start) / FLAGS.steps * 1e3, 3))
    cpu = cpu_model()
    shape = (
        f"{len(config.table_sizes)} tables, d={config.embedding_dim}, "
        f"{per_bag} id(s) per bag, batch {batch}"
    )
    print(f"{cpu}: {FLAGS.layer}, {shape}")
    for name, values in times.items():
        print(f"  {name}: {values} ms/step")
    first, second = (statistics.median(values) for values in times.values())
    result = {
        "cpu": cpu,
        "layer": FLAGS.layer,
        "shape": shape,
        "rounds": FLAGS.rounds,
        **{f"ms_per_step_{name}": values for name, values in times.items()},
        "speedup": round(first / second, 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    dlrm_flags.run_app(main)
