#!/usr/bin/env bash
# Criteo Terabyte with the reference's hyperparameters (configs/terabyte.flags):
# converts the raw day files once (ids hashed modulo 10,000,000 and 87.5 % of
# the negative training rows dropped, as the reference), then trains one epoch
# and tests.
#
#   bench/criteo_terabyte.sh [RAW_DATA_FILE [PROCESSED_DATA_DIR]] [--flag=value ...]
#
# RAW_DATA_FILE / PROCESSED_DATA_DIR may also come from the environment; the raw
# file is only read when PROCESSED_DATA_DIR has no metadata.json yet.
# Other environment: PYTHON (default python), RUN_DIR (default runs/terabyte; the
# best model goes to RUN_DIR/best.keras, the SavedModel to RUN_DIR/export),
# CONVERT_FLAGS (extra flags of `python -m input_pipeline.convert`, which
# override the two above, e.g. "--frequency_threshold=3 --num_shards=256").
# Flags after the paths go to `python -m dlrm_tf.main` after the flagfile, so
# they override it (e.g. --num_batches=1000, --export_dir= to skip the export).
# The last line printed is a JSON summary (bench/summarize_run.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
RUN_DIR="${RUN_DIR:-runs/terabyte}"
export PYTHONPATH="${ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONUNBUFFERED=1

raw="${RAW_DATA_FILE:-}"
processed="${PROCESSED_DATA_DIR:-/data/criteo/tb_tfrecords}"
if [[ $# -gt 0 && "$1" != -* ]]; then
  raw="$1"
  shift
fi
if [[ $# -gt 0 && "$1" != -* ]]; then
  processed="$1"
  shift
fi

if [[ ! -f "${processed}/metadata.json" ]]; then
  if [[ -z "${raw}" ]]; then
    echo "error: ${processed} holds no converted data (no metadata.json) and no raw data" \
      "was given: pass the raw day files (e.g. '/data/criteo/day_*') as the first argument" \
      "or set RAW_DATA_FILE" >&2
    exit 2
  fi
  read -r -a convert_flags <<< "${CONVERT_FLAGS:-}"
  echo "Converting ${raw} into ${processed}"
  "${PYTHON}" -m input_pipeline.convert \
    --data_set=terabyte \
    --max_ind_range=10000000 \
    --data_sub_sample_rate=0.875 \
    --raw_data_file="${raw}" \
    --output_dir="${processed}" \
    ${convert_flags[@]+"${convert_flags[@]}"}
fi

mkdir -p "${RUN_DIR}"
log="$(mktemp "${TMPDIR:-/tmp}/criteo_terabyte.XXXXXX.log")"
trap 'rm -f "${log}"' EXIT

"${PYTHON}" -m dlrm_tf.main \
  --flagfile="${ROOT}/configs/terabyte.flags" \
  --processed_data_dir="${processed}" \
  --run_dir="${RUN_DIR}" \
  --save_model="${RUN_DIR}/best.keras" \
  --export_dir="${RUN_DIR}/export" \
  "$@" | tee "${log}"

"${PYTHON}" "${ROOT}/bench/summarize_run.py" --log="${log}" --name=criteo_terabyte
