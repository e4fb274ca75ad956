#!/usr/bin/env bash
# Shared body of bench/criteo_kaggle.sh and bench/criteo_terabyte.sh:
#
#   bench/criteo_run.sh kaggle|terabyte [RAW_DATA_FILE [PROCESSED_DATA_DIR]] [--flag=value ...]
#
# Converts the raw data once (only when PROCESSED_DATA_DIR has no metadata.json
# yet), then trains with configs/<data_set>.flags; the last line printed is a
# JSON summary (bench/summarize_run.py). See the two wrappers for the settings.
set -euo pipefail

data_set="$1"
shift
case "${data_set}" in
  kaggle)
    default_processed=/data/criteo/kaggle_tfrecords
    convert_defaults=()
    raw_hint="the raw train.txt"
    ;;
  terabyte)
    default_processed=/data/criteo/tb_tfrecords
    convert_defaults=(--max_ind_range=10000000 --data_sub_sample_rate=0.875)
    raw_hint="the raw day files (e.g. '/data/criteo/day_*')"
    ;;
  *)
    echo "error: unknown data set '${data_set}' (kaggle or terabyte)" >&2
    exit 2
    ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
RUN_DIR="${RUN_DIR:-runs/${data_set}}"
export PYTHONPATH="${ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONUNBUFFERED=1

raw="${RAW_DATA_FILE:-}"
processed="${PROCESSED_DATA_DIR:-${default_processed}}"
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
      "was given: pass ${raw_hint} as the first argument or set RAW_DATA_FILE" >&2
    exit 2
  fi
  read -r -a convert_flags <<< "${CONVERT_FLAGS:-}"
  echo "Converting ${raw} into ${processed}"
  "${PYTHON}" -m input_pipeline.convert \
    --data_set="${data_set}" \
    ${convert_defaults[@]+"${convert_defaults[@]}"} \
    --raw_data_file="${raw}" \
    --output_dir="${processed}" \
    ${convert_flags[@]+"${convert_flags[@]}"}
fi

mkdir -p "${RUN_DIR}"
log="$(mktemp "${TMPDIR:-/tmp}/criteo_${data_set}.XXXXXX.log")"
trap 'rm -f "${log}"' EXIT

"${PYTHON}" -m dlrm_tf.main \
  --flagfile="${ROOT}/configs/${data_set}.flags" \
  --processed_data_dir="${processed}" \
  --run_dir="${RUN_DIR}" \
  --save_model="${RUN_DIR}/best.keras" \
  --export_dir="${RUN_DIR}/export" \
  "$@" | tee "${log}"

"${PYTHON}" "${ROOT}/bench/summarize_run.py" --log="${log}" --name="criteo_${data_set}"
