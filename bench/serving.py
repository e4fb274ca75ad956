"""Serving latency and throughput of an exported DLRM SavedModel.

Builds a model of the Kaggle shape (d=16, bottom MLP 13-512-256-64-16, top MLP
512-256-1, the 26 Kaggle tables capped at ``--max_rows`` rows), exports it with
``export.saved_model.export_model``, loads it back twice, with
``tf.saved_model.load`` and with the session loader TF Serving uses
(:mod:`export.session_loader`), and times calls of its ``serving_default``
signature, one request at a time, for each batch size. ``--export_dir`` times
an existing SavedModel instead.

Prints the CPU, one line per loader and batch size, then (last line) one JSON
object with ``p50_ms_b{B}``, ``p99_ms_b{B}`` and ``examples_per_s_b{B}`` for
every batch size ``B`` (TF2 loader) and the same with a ``session_`` prefix.

    python -m bench.serving [--batch_sizes=1,64,2048] [--min_seconds=3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from bench.machine import cpu_model
from export.session_loader import ServingSession
from input_pipeline.criteo import KAGGLE_CARDINALITIES, NUM_DENSE
from input_pipeline.features import DENSE_KEY, SPARSE_KEY


def export_bench_model(export_base: str, max_rows: int, seed: int) -> str:
    """Exports a Kaggle-shaped DLRM with tables capped at ``max_rows``; returns the version dir."""
    import keras

    from dlrm_tf.config import ModelConfig
    from dlrm_tf.model.dlrm import build_model
    from export.saved_model import export_model

    keras.utils.set_random_seed(seed)
    config = ModelConfig(
        embedding_dim=16,
        table_sizes=tuple(min(n, max_rows) for n in KAGGLE_CARDINALITIES),
        bottom_mlp=(NUM_DENSE, 512, 256, 64, 16),
        top_mlp=(512, 256, 1),
    )
    return export_model(build_model(config), export_base)


def bench_requests(table_sizes: Sequence[int], batch: int, seed: int) -> list[dict]:
    """Four random valid one-hot requests of ``batch`` examples, as numpy arrays."""
    rng = np.random.default_rng(seed)
    sizes = np.asarray(table_sizes, dtype=np.int64)
    requests = []
    for _ in range(4):
        dense = rng.uniform(0, 5, size=(batch, NUM_DENSE)).astype(np.float32)
        ids = np.minimum((rng.random((batch, len(sizes))) * sizes).astype(np.int64), sizes - 1)
        requests.append({DENSE_KEY: dense, SPARSE_KEY: ids})
    return requests


def tf2_caller(path: str) -> tuple[Callable, Callable]:
    """``tf.saved_model.load``'s ``serving_default``: (prepare request, call prepared)."""
    fn = tf.saved_model.load(path).signatures["serving_default"]
    prepare = lambda request: {k: tf.constant(v) for k, v in request.items()}
    return prepare, lambda inputs: fn(**inputs)["probability"].numpy()


def session_caller(served: ServingSession) -> tuple[Callable, Callable]:
    """The session loader TF Serving uses: (prepare request, call prepared)."""
    return (
        lambda request: request,
        lambda inputs: served.run("serving_default", inputs)["probability"],
    )


def time_calls(
    prepare: Callable, call: Callable, requests: list[dict], min_seconds: float, min_calls: int
) -> dict[str, float]:
    """Times ``call`` one request at a time; returns p50/p99 (ms) and examples/s."""
    prepared = [prepare(r) for r in requests]
    for inputs in prepared * 3:  # warm-up
        call(inputs)
    latencies = []
    start = time.perf_counter()
    while len(latencies) < min_calls or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        call(prepared[len(latencies) % len(prepared)])
        latencies.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    ms = np.asarray(latencies) * 1e3
    batch = len(next(iter(requests[0].values())))
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "examples_per_s": batch * len(latencies) / total,
        "calls": len(latencies),
    }


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from input_pipeline.errors import ArgumentParser

    parser = ArgumentParser(
        prog="python -m bench.serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--batch_sizes", default="1,64,2048")
    parser.add_argument("--max_rows", type=int, default=100_000, help="cap on each table's rows")
    parser.add_argument("--min_seconds", type=float, default=3.0, help="timing per batch size")
    parser.add_argument("--min_calls", type=int, default=100)
    parser.add_argument("--export_dir", default=None, help="time this SavedModel instead")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; the last line printed is the JSON summary."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    tmp = None
    try:
        if args.export_dir:
            path = args.export_dir
            if not tf.saved_model.contains_saved_model(path):
                raise FileNotFoundError(
                    f"--export_dir={path}: no SavedModel there (give a version directory, "
                    "e.g. BASE/1, written by export.saved_model)"
                )
        else:
            tmp = tempfile.mkdtemp(prefix="dlrm-serving-bench-")
            path = export_bench_model(tmp, args.max_rows, args.seed)
        with open(os.path.join(path, "assets.extra", "export_info.json")) as f:
            table_sizes = json.load(f)["model_config"]["table_sizes"]
        print(f"CPU: {cpu_model()}, {os.cpu_count()} cores", flush=True)
        summary: dict[str, float | str] = {}
        with ServingSession(path) as served:
            loaders = {"tf2": tf2_caller(path), "session": session_caller(served)}
            for batch in batch_sizes:
                requests = bench_requests(table_sizes, batch, args.seed)
                for loader, (prepare, call) in loaders.items():
                    r = time_calls(prepare, call, requests, args.min_seconds, args.min_calls)
                    print(
                        f"{loader:8s} batch {batch:5d}: p50 {r['p50_ms']:8.3f} ms  "
                        f"p99 {r['p99_ms']:8.3f} ms  {r['examples_per_s']:12.0f} examples/s  "
                        f"({r['calls']} calls)",
                        flush=True,
                    )
                    prefix = "" if loader == "tf2" else f"{loader}_"
                    summary[f"{prefix}p50_ms_b{batch}"] = round(r["p50_ms"], 4)
                    summary[f"{prefix}p99_ms_b{batch}"] = round(r["p99_ms"], 4)
                    summary[f"{prefix}examples_per_s_b{batch}"] = round(r["examples_per_s"], 1)
        summary["max_rows"] = args.max_rows
        summary["cpus"] = os.cpu_count() or 0
        summary["cpu_model"] = cpu_model()
        summary["tf_version"] = tf.__version__
        print(json.dumps(summary))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    from input_pipeline.errors import run_cli

    run_cli(main)
