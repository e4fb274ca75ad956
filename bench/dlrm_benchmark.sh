#!/usr/bin/env bash
# Random-data throughput benchmark of DLRM, with the reference's benchmark sizes:
# batch 2048, dense input 512 wide, bottom MLP 512-512-64, top MLP 1024-1024-1024-1,
# d = 64, 8 tables of 1,000,000 rows (2 GiB of float32), up to 100 ids per bag,
# dot interaction.
#
#   bench/dlrm_benchmark.sh [--flag=value ...]
#
# Extra flags are appended, so they override the defaults above them
# (e.g. --num_batches=10, --enable_profiling, --use_gpu, --mixed_precision=bfloat16).
# Environment: PYTHON (default python), RUN_DIR (default runs/dlrm_benchmark).
# The run's output is printed as it goes; the last line is a JSON summary
# (bench/summarize_run.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
RUN_DIR="${RUN_DIR:-runs/dlrm_benchmark}"
export PYTHONPATH="${ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONUNBUFFERED=1

tables="1000000"
for _ in 2 3 4 5 6 7 8; do
  tables="${tables}-1000000"
done

mkdir -p "${RUN_DIR}"
log="$(mktemp "${TMPDIR:-/tmp}/dlrm_benchmark.XXXXXX.log")"
trap 'rm -f "${log}"' EXIT

"${PYTHON}" -m dlrm_tf.main \
  --data_generation=random \
  --numpy_rand_seed=727 \
  --mini_batch_size=2048 \
  --test_mini_batch_size=16384 \
  --num_batches=100 \
  --arch_mlp_bot=512-512-64 \
  --arch_mlp_top=1024-1024-1024-1 \
  --arch_sparse_feature_size=64 \
  --arch_embedding_size="${tables}" \
  --num_indices_per_lookup=100 \
  --arch_interaction_op=dot \
  --print_freq=10 \
  --print_time \
  --run_dir="${RUN_DIR}" \
  "$@" | tee "${log}"

"${PYTHON}" "${ROOT}/bench/summarize_run.py" --log="${log}" --name=dlrm_benchmark
