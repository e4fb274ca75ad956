"""TensorFlow's oneDNN CPU kernels against its default ones, on the training bench.

    python bench/cpu_kernels.py [--rounds=2] -- --flagfile=configs/bench.flags [...]

Runs ``bench/train_throughput.py`` with the flags after ``--``, alternately with
``TF_ENABLE_ONEDNN_OPTS=0`` and ``=1`` (the commands' default on x86, see
``input_pipeline.tf_startup.prefer_onednn``), ``--rounds`` times each, so both
kernel sets share the machine's state of the moment. Prints every run's JSON
line, then one JSON object: the CPU, both sets' step times and dense-only
rates, and ``speedup`` (median step time without oneDNN over the median with it).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.machine import cpu_model  # noqa: E402
from input_pipeline import errors  # noqa: E402

SETTINGS = {"off": "0", "on": "1"}


def run_bench(onednn: str, bench_args: list[str]) -> dict:
    """One train_throughput run with ``TF_ENABLE_ONEDNN_OPTS=onednn``: its JSON line."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "train_throughput.py"), *bench_args],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"error: train_throughput.py failed with TF_ENABLE_ONEDNN_OPTS={onednn}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    """Runs the rounds and prints the comparison (see the module docstring)."""
    parser = errors.ArgumentParser(prog="bench/cpu_kernels.py", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each kernel set")
    parser.add_argument("bench_args", nargs="*", help="train_throughput.py flags, after --")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, value in SETTINGS.items():
            result = run_bench(value, args.bench_args)
            print(f"oneDNN {name}: {json.dumps(result)}", flush=True)
            if result.get("onednn") is not None and result["onednn"] != (name == "on"):
                raise SystemExit(f"error: TF_ENABLE_ONEDNN_OPTS={value} was not applied")
            runs[name].append(result)
    step = {name: [r["ms_per_step"] for r in results] for name, results in runs.items()}
    summary = {
        "cpu": cpu_model(),
        "rounds": args.rounds,
        "gemm_gflops_fp32": [r["gemm_gflops_fp32"] for r in runs["on"] + runs["off"]],
        **{f"ms_per_step_onednn_{name}": times for name, times in step.items()},
        **{
            f"dense_only_samples_per_s_onednn_{name}": [
                r["dense_only_samples_per_s"] for r in results
            ]
            for name, results in runs.items()
        },
        "speedup": round(statistics.median(step["off"]) / statistics.median(step["on"]), 3),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
