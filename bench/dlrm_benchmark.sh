#!/usr/bin/env bash
# Random-data throughput benchmark of DLRM, with the reference's benchmark sizes:
# batch 2048, dense input 512 wide, bottom MLP 512-512-64, top MLP 1024-1024-1024-1,
# d = 64, 8 tables of 1,000,000 rows (2 GiB of float32), up to 100 ids per bag,
# dot interaction (configs/dlrm_benchmark.flags).
#
#   bench/dlrm_benchmark.sh [--flag=value ...]
#
# Extra flags are appended, so they override the defaults above them
# (e.g. --num_batches=10, --enable_profiling, --use_gpu, --mixed_precision=bfloat16).
# Environment: PYTHON (default python), RUN_DIR (default runs/dlrm_benchmark).
# The run's output is printed as it goes; the last line is a JSON summary
# (bench/summarize_run.py). The printed ms/it includes the NumPy generation of
# the random batches, which shares the cores with training; for training alone
# (as the reference's ms/it, which excludes its data generation) run
#   python bench/train_throughput.py --flagfile=configs/dlrm_benchmark.flags
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
RUN_DIR="${RUN_DIR:-runs/dlrm_benchmark}"
export PYTHONPATH="${ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONUNBUFFERED=1

mkdir -p "${RUN_DIR}"
log="$(mktemp "${TMPDIR:-/tmp}/dlrm_benchmark.XXXXXX.log")"
trap 'rm -f "${log}"' EXIT

"${PYTHON}" -m dlrm_tf.main \
  --flagfile="${ROOT}/configs/dlrm_benchmark.flags" \
  --num_batches=100 \
  --print_freq=10 \
  --print_time \
  --run_dir="${RUN_DIR}" \
  "$@" | tee "${log}"

"${PYTHON}" "${ROOT}/bench/summarize_run.py" --log="${log}" --name=dlrm_benchmark
