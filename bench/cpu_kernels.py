"""One speed-up setting off and on, on the training bench, in one run.

    python bench/cpu_kernels.py [--compare=onednn] [--rounds=2] -- --flagfile=configs/bench.flags
    python bench/cpu_kernels.py --compare=fused_kernels -- --flagfile=configs/dlrm_benchmark.flags
    python bench/cpu_kernels.py --compare=packed_gradients -- --flagfile=configs/bench.flags \
        --num_cpu_replicas=2 --distribution_strategy=mirrored

Runs ``bench/train_throughput.py`` with the flags after ``--``, alternately with
the compared setting off and on, ``--rounds`` times each, so both share the
machine's state of the moment:

* ``onednn``: TensorFlow's oneDNN kernels (``TF_ENABLE_ONEDNN_OPTS=0`` / ``=1``,
  the commands' default on x86, see ``input_pipeline.tf_startup.prefer_onednn``);
* ``fused_kernels``: the project's fused embedding kernels
  (``DLRM_TF_FUSED_KERNELS=0`` / ``=1``, the default, see ``dlrm_tf.kernels``);
* ``packed_gradients``: the tables' gradients all-reduced as one under a
  multi-replica strategy (``DLRM_TF_PACKED_GRADIENTS=0`` / ``=1``, the default,
  see ``dlrm_tf.model.packed_gradients``; give ``--num_cpu_replicas=2``);
* ``pooled_lookup``: all tables pooled by one fused op rather than one op per
  table (``DLRM_TF_POOLED_LOOKUP=0`` / ``=1``, the default, see
  ``dlrm_tf.kernels.embedding_rows``).

Prints every run's JSON line, then one JSON object: the CPU, both sides' step
times and dense-only rates, and ``speedup`` (the median step time with the
setting off over the median with it on).
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

# Compared setting -> (its environment variable, the key train_throughput reports it by).
COMPARED = {
    "onednn": ("TF_ENABLE_ONEDNN_OPTS", "onednn"),
    "fused_kernels": ("DLRM_TF_FUSED_KERNELS", "fused_kernels"),
    "packed_gradients": ("DLRM_TF_PACKED_GRADIENTS", "packed_gradients"),
    "pooled_lookup": ("DLRM_TF_POOLED_LOOKUP", "pooled_lookup"),
}
SETTINGS = {"off": "0", "on": "1"}


def run_bench(variable: str, value: str, bench_args: list[str]) -> dict:
    """One train_throughput run with ``variable=value``: its JSON line."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env[variable] = value
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "train_throughput.py"), *bench_args],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"error: train_throughput.py failed with {variable}={value}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    """Runs the rounds and prints the comparison (see the module docstring)."""
    parser = errors.ArgumentParser(prog="bench/cpu_kernels.py", description=__doc__)
    parser.add_argument("--compare", choices=sorted(COMPARED), default="onednn")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side")
    parser.add_argument("bench_args", nargs="*", help="train_throughput.py flags, after --")
    args = parser.parse_args(argv)
    variable, reported = COMPARED[args.compare]
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, value in SETTINGS.items():
            result = run_bench(variable, value, args.bench_args)
            print(f"{args.compare} {name}: {json.dumps(result)}", flush=True)
            if result.get(reported) is not None and result[reported] != (name == "on"):
                raise SystemExit(f"error: {variable}={value} was not applied")
            runs[name].append(result)
    step = {name: [r["ms_per_step"] for r in results] for name, results in runs.items()}
    summary = {
        "cpu": cpu_model(),
        "compare": args.compare,
        "rounds": args.rounds,
        "gemm_gflops_fp32": [r["gemm_gflops_fp32"] for r in runs["on"] + runs["off"]],
        **{f"ms_per_step_{args.compare}_{name}": times for name, times in step.items()},
        **{
            f"ratio_to_gemm_{args.compare}_{name}": [r["ratio_to_gemm"] for r in results]
            for name, results in runs.items()
        },
        **{
            f"dense_only_samples_per_s_{args.compare}_{name}": [
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
