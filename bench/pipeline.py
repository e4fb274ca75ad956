"""Input-pipeline benchmark: generate -> convert (subprocess) -> read.

Generates ``--num_rows`` synthetic Criteo lines, converts them with
``python -m input_pipeline.convert`` in a child process (wall time and the
child's peak RSS), then reads the training split with ``make_dataset`` at
``--batch_size`` inside a ``tf.function`` (read + parse + batch, as
``model.fit`` consumes it). The last printed line is one JSON object.

  python bench/pipeline.py --num_rows=1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from input_pipeline.errors import ArgumentParser

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_ind_range", type=int, default=10_000_000)
    parser.add_argument("--frequency_threshold", type=int, default=0)
    parser.add_argument("--data_randomize", default="total", choices=["total", "day", "none"])
    parser.add_argument("--num_shards", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=2048)
    parser.add_argument("--work_dir", default=None, help="Keep files here (default: a temp dir).")
    return parser.parse_args(argv)


def _read_rows_per_s(data_dir: str, batch_size: int) -> tuple[float, int]:
    import tensorflow as tf

    from input_pipeline import dataset

    ds = dataset.make_dataset(data_dir, "train", batch_size)

    @tf.function
    def consume(data: tf.data.Dataset) -> tf.Tensor:
        rows = tf.constant(0, tf.int64)
        for _, labels in data:
            rows += tf.shape(labels, out_type=tf.int64)[0]
        return rows

    consume(ds.take(2))  # trace once
    best, rows = 0.0, 0
    for _ in range(2):
        start = time.perf_counter()
        rows = int(consume(ds))
        best = max(best, rows / (time.perf_counter() - start))
    return best, rows


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark and prints the figures (last line: JSON)."""
    args = _parse_args(argv)
    from input_pipeline import planted_signal as synthetic

    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        raw = os.path.join(work, "train.txt")
        start = time.perf_counter()
        synthetic.write_text(raw, args.num_rows, args.seed)
        generate_s = time.perf_counter() - start
        out = os.path.join(work, "converted")
        command = [
            sys.executable, "-m", "input_pipeline.convert", "--data_set=kaggle",
            f"--raw_data_file={raw}", f"--output_dir={out}", f"--num_shards={args.num_shards}",
            f"--data_randomize={args.data_randomize}",
        ]  # fmt: skip
        if args.frequency_threshold:
            command.append(f"--frequency_threshold={args.frequency_threshold}")
        if args.max_ind_range:
            command.append(f"--max_ind_range={args.max_ind_range}")
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        convert_s = time.perf_counter() - start
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        # Baseline in the same run: the converter's fixed start-up (interpreter,
        # TensorFlow import, tracing, writing the few files every output has), which
        # a 45M-row conversion pays once: the same command on the first 100 lines.
        few = os.path.join(work, "few.txt")
        with open(raw, "rb") as src, open(few, "wb") as dst:
            dst.writelines(line for _, line in zip(range(100), src, strict=False))
        few_command = [arg.replace(raw, few).replace(out, out + "_few") for arg in command]
        start = time.perf_counter()
        subprocess.run(few_command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        startup_s = time.perf_counter() - start
        peak_rss_mb = child.ru_maxrss / 1024
        # CPU seconds per row do not depend on other load on a shared machine.
        convert_cpu_us_per_row = (child.ru_utime + child.ru_stime) / args.num_rows * 1e6
        read_rows_per_s, rows = _read_rows_per_s(out, args.batch_size)
        with open(os.path.join(out, "metadata.json")) as f:
            categorical = json.load(f)["preprocessing"]["categorical"]
        results = {
            "num_rows": args.num_rows,
            "categorical": categorical,
            "data_randomize": args.data_randomize,
            "generate_rows_per_s": round(args.num_rows / generate_s),
            "convert_seconds": round(convert_s, 2),
            "convert_rows_per_s": round(args.num_rows / convert_s),
            "convert_startup_seconds": round(startup_s, 2),
            "convert_rows_per_s_after_startup": round(
                args.num_rows / max(convert_s - startup_s, 1e-9)
            ),
            "convert_cpu_us_per_row": round(convert_cpu_us_per_row, 2),
            "read_rows_per_s": round(read_rows_per_s),
            "read_rows": rows,
            "peak_rss_mb": round(peak_rss_mb, 1),
            "cpu_count": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        }
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    from input_pipeline.errors import run_cli

    run_cli(main)
