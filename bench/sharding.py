"""Replicated against table-wise tables on several devices: step time and bytes per device.

    python bench/sharding.py [--devices=2 | --workers=2] [--flagfile=configs/dlrm_benchmark.flags]
        [--bench_steps=20] [--rounds=2] [trainer flags ...]

Runs ``bench/train_throughput.py`` under ``MirroredStrategy`` on ``--devices``
logical CPU devices, once with ``--embedding_placement=replicated`` and once
with ``table_wise``, alternating for ``--rounds`` rounds (so load from other
processes falls on both alike), in fresh processes (logical devices are fixed
at TensorFlow's start). With several replicas ``train_throughput`` generates
every batch (no cache), so the step times include the random data's
generation. Logical CPU devices share the same cores and memory: the step-time
ratio shows what spreading costs in the graph (cross-device
reads of the rows, a gradient summed onto one device instead of all-reduced to
all), not what separate GPUs would gain; the bytes per device are those a
multi-GPU host would hold. Last line: one JSON object with the median ms/step
of each placement, their ratio, the bytes per device of each, and the CPU.
Other flags go to ``train_throughput.py`` after the flag file (they override it).

With ``--workers=N`` the runs are ``MultiWorkerMirroredStrategy`` clusters of N
processes on 127.0.0.1 (one CPU replica each) instead: table-wise then moves
the lookups between workers by collectives (an all-gather of the ids, an
all-reduce of the bag sums, and the all-reduce of their gradient). Worker 0's
figures are reported, with the collectives' share of its step from a profiler
trace (``exchange_ms_per_step``, op self-time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.machine import cpu_model  # noqa: E402
from tests.loopback_workers import tf_configs  # noqa: E402

PLACEMENTS = ("replicated", "table_wise")


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from input_pipeline.errors import ArgumentParser

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="N > 1: N loopback workers")
    parser.add_argument("--flagfile", default=os.path.join(ROOT, "configs", "dlrm_benchmark.flags"))
    parser.add_argument("--bench_steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args, args.extra = parser.parse_known_args(argv)
    return args


def _command(args: argparse.Namespace, placement: str) -> list[str]:
    if args.workers > 1:
        where = ["--distribution_strategy=multi_worker_mirrored", "--bench_profile_steps=3"]
    else:
        where = ["--distribution_strategy=mirrored", f"--num_cpu_replicas={args.devices}"]
    return [
        sys.executable, os.path.join(ROOT, "bench", "train_throughput.py"),
        f"--flagfile={args.flagfile}", *where, f"--embedding_placement={placement}",
        f"--bench_steps={args.bench_steps}", "--bench_warmup_steps=5",
        "--bench_cache_batches=5", *args.extra,
    ]  # fmt: skip


def measure(args: argparse.Namespace, placement: str) -> dict:
    """One ``train_throughput`` run with ``placement`` (on each of ``--workers``
    processes): its JSON figures (worker 0's)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    envs = [env]
    if args.workers > 1:
        envs = [dict(env, TF_CONFIG=config) for config in tf_configs(args.workers)]
    procs = [
        subprocess.Popen(
            _command(args, placement),
            cwd=ROOT,
            env=e,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for e in envs
    ]
    try:
        outputs = [p.communicate() for p in procs]
    finally:
        for p in procs:
            p.kill()
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    for i in failed:
        # TensorFlow's collectives log a line per launch: keep the rest.
        lines = [ln for ln in outputs[i][1].splitlines() if "INFO" not in ln and "I1" not in ln[:3]]
        print(f"process {i}:", "\n".join(lines[-25:]), sep="\n", file=sys.stderr)
    if failed:
        raise RuntimeError(f"train_throughput ({placement}) failed in process(es) {failed}")
    return json.loads(outputs[0][0].strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    runs: dict[str, list[dict]] = {p: [] for p in PLACEMENTS}
    for round_ in range(args.rounds):
        for placement in PLACEMENTS:
            result = measure(args, placement)
            runs[placement].append(result)
            print(f"round {round_ + 1} {placement}: {result['ms_per_step']} ms/step, "
                  f"bytes per device {result['device_bytes']}", flush=True)  # fmt: skip
    ms = {p: round(statistics.median(r["ms_per_step"] for r in runs[p]), 3) for p in PLACEMENTS}
    summary = {
        "cpu": cpu_model(),
        "devices": args.workers if args.workers > 1 else args.devices,
        "workers": max(args.workers, 1),
        "flagfile": os.path.relpath(args.flagfile, ROOT),
        "ms_per_step_replicated": ms["replicated"],
        "ms_per_step_table_wise": ms["table_wise"],
        "table_wise_over_replicated": round(ms["table_wise"] / ms["replicated"], 3),
        "device_bytes_replicated": runs["replicated"][0]["device_bytes"],
        "device_bytes_table_wise": runs["table_wise"][0]["device_bytes"],
        "max_device_bytes_ratio": round(
            max(runs["table_wise"][0]["device_bytes"].values())
            / max(runs["replicated"][0]["device_bytes"].values()),
            3,
        ),
    }
    if args.workers > 1:
        for placement in PLACEMENTS:
            summary[f"exchange_ms_per_step_{placement}"] = statistics.median(
                r.get("profile_ms_exchange", 0.0) for r in runs[placement]
            )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    from input_pipeline.errors import run_cli

    run_cli(main)
