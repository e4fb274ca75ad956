"""Throughput of the data generators: random and trace-driven, through tf.data.

Batch 2048, 26 tables, 13 dense features. The random generator uses the Criteo
Kaggle table sizes, the trace generator the example distributions of ``input/``
(table ``t`` uses ``input/dist_emb_{t % 3}.log`` and that file's id range as its
size). Bags: ``H = num_indices_per_lookup`` with the reference's variable bag
size (mean about ``H / 2``), for ``H = 1`` (one id per table) and ``H = 10``.
Data sets are large enough to be generated on every pass (not held in memory).

Prints one line per measurement, then one JSON object as the last line::

    python bench/generators.py [--batches=N]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from input_pipeline import errors, random_data, trace  # noqa: E402
from input_pipeline.criteo import KAGGLE_CARDINALITIES, NUM_DENSE  # noqa: E402
from input_pipeline.features import DENSE_KEY  # noqa: E402

BATCH = 2048


def rows_per_s(ds, batches: int) -> float:
    """Rows per second over ``batches`` batches, after two warm-up batches."""
    it = iter(ds)
    for _ in range(2):
        next(it)
    start = time.perf_counter()
    rows = 0
    for _ in range(batches):
        features, _ = next(it)
        rows += int(features[DENSE_KEY].shape[0])
    return rows / (time.perf_counter() - start)


def numpy_random_rows_per_s(h: int, batches: int) -> float:
    """The bare numpy generator, one core, no tf.data."""
    start = time.perf_counter()
    for b in range(batches):
        random_data.random_batch(
            random_data.batch_rng(0, b), KAGGLE_CARDINALITIES, NUM_DENSE, BATCH, h, False
        )
    return batches * BATCH / (time.perf_counter() - start)


def trace_tables(directory: str) -> tuple[str, list[int]]:
    """Writes 26 distribution files (the examples, cycled); returns pattern and sizes."""
    sizes = []
    for t in range(len(KAGGLE_CARDINALITIES)):
        src = os.path.join(ROOT, "input", f"dist_emb_{t % 3}.log")
        shutil.copy(src, os.path.join(directory, f"dist_{t}.log"))
        sizes.append(int(trace.load_distribution(src).unique_ids.max()) + 1)
    return os.path.join(directory, "dist_j.log"), sizes


def main() -> None:
    parser = errors.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="timed batches per case")
    args = parser.parse_args()
    n = args.batches
    total = n + 2
    result: dict[str, float] = {}

    for h in (1, 10):
        ds = random_data.random_dataset(
            table_sizes=KAGGLE_CARDINALITIES, num_dense=NUM_DENSE, batch_size=BATCH,
            num_batches=max(total, 64), num_indices_per_lookup=h,
        )  # fmt: skip
        result[f"random_rows_per_s_h{h}"] = rows_per_s(ds.prefetch(2), n)
        result[f"random_numpy_rows_per_s_h{h}"] = numpy_random_rows_per_s(h, n)
    result["random_rows_per_s"] = result["random_rows_per_s_h10"]

    with tempfile.TemporaryDirectory() as tmp:
        pattern, sizes = trace_tables(tmp)
        for h in (1, 10):
            ds = trace.synthetic_dataset(
                trace_file_pattern=pattern, table_sizes=sizes, num_dense=NUM_DENSE,
                batch_size=BATCH, num_batches=max(total, 64), num_indices_per_lookup=h,
                num_indices_per_lookup_fixed=False, enable_padding=False, seed=0,
            )  # fmt: skip
            result[f"trace_rows_per_s_h{h}"] = rows_per_s(ds.prefetch(2), n)

    for key, value in result.items():
        print(f"{key}: {value:,.0f}")
    print(json.dumps({k: round(v) for k, v in result.items()}))


if __name__ == "__main__":
    errors.run_cli(main)
