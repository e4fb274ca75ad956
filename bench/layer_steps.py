"""One layer's training step alone, two ways, timed alternately in one process.

    python bench/layer_steps.py [--layer=embeddings|interaction] [--flagfile=configs/bench.flags]
        [--rounds=5] [--steps=20]

The layer has the flagfile's shape (``arch_embedding_size``,
``arch_sparse_feature_size``, ``num_indices_per_lookup`` ids per bag,
``mini_batch_size``):

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

from input_pipeline.errors import ArgumentParser  # noqa: E402


def flag_values(path: str) -> dict[str, str]:
    """``--name=value`` lines of a flagfile (comments and bare switches skipped)."""
    values = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("--") and "=" in line:
                name, value = line[2:].split("=", 1)
                values[name] = value
    return values


def embedding_steps(shape: dict[str, str]) -> dict:
    """The two traced steps of the embedding layer, by name."""
    import numpy as np
    import tensorflow as tf

    from dlrm_tf.kernels import embedding_rows
    from dlrm_tf.model.layers import EmbeddingBags
    from dlrm_tf.model.optimizers import make_optimizer

    sizes, dim, per_bag, batch = layer_shape(shape)
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


def interaction_steps(shape: dict[str, str]) -> dict:
    """The two traced forward-and-backward steps of the dot interaction, by name."""
    import numpy as np
    import tensorflow as tf

    from dlrm_tf.model.layers import DotInteraction

    sizes, dim, _, batch = layer_shape(shape)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((batch, dim)).astype(np.float32))
    embeddings = tf.constant(rng.standard_normal((batch, len(sizes), dim)).astype(np.float32))

    def traced_step(fused: bool):
        layer = DotInteraction(fused_kernel=fused)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch([x, embeddings])
                loss = tf.reduce_sum(tf.square(layer((x, embeddings), training=True)))
            return tape.gradient(loss, [x, embeddings])

        step()
        return step

    return {"tensorflow": traced_step(False), "fused": traced_step(True)}


def layer_shape(shape: dict[str, str]) -> tuple[list[int], int, int, int]:
    """(table sizes, d, ids per bag, batch) of a flagfile's values."""
    sizes = [int(n) for n in shape["arch_embedding_size"].split("-")]
    dim = int(shape["arch_sparse_feature_size"])
    return (
        sizes,
        dim,
        int(shape.get("num_indices_per_lookup", "1")),
        int(shape.get("mini_batch_size", "2048")),
    )


LAYERS = {"embeddings": embedding_steps, "interaction": interaction_steps}


def main(argv: list[str]) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", choices=sorted(LAYERS), default="embeddings")
    parser.add_argument("--flagfile", default=os.path.join(ROOT, "configs", "bench.flags"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    shape = flag_values(args.flagfile)

    from bench.machine import cpu_model
    from dlrm_tf.kernels import build

    if build.load("embedding_rows") is None or build.load("interaction") is None:
        raise SystemExit("error: the fused kernels are not available here (see dlrm_tf.kernels)")
    steps = LAYERS[args.layer](shape)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append(round((time.perf_counter() - start) / args.steps * 1e3, 3))
    cpu = cpu_model()
    sizes, dim, per_bag, batch = layer_shape(shape)
    print(
        f"{cpu}: {args.layer}, {len(sizes)} tables, d={dim}, {per_bag} id(s) per bag, batch {batch}"
    )
    for name, values in times.items():
        print(f"  {name}: {values} ms/step")
    first, second = (statistics.median(values) for values in times.values())
    result = {
        "cpu": cpu,
        "layer": args.layer,
        "flagfile": os.path.relpath(args.flagfile, ROOT),
        "rounds": args.rounds,
        **{f"ms_per_step_{name}": values for name, values in times.items()},
        "speedup": round(first / second, 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
