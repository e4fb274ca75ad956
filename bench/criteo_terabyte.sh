#!/usr/bin/env bash
# Criteo Terabyte with the reference's hyperparameters (configs/terabyte.flags):
# converts the raw day files once (values reduced modulo 10,000,000, then
# contiguous ids per feature: ~49.1M table rows in all, and 87.5 % of the
# negative training rows dropped, as the reference), then trains one epoch and
# tests.
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
# The work is done by bench/criteo_run.sh.
set -euo pipefail

exec bash "$(dirname "${BASH_SOURCE[0]}")/criteo_run.sh" terabyte "$@"
