"""``python -m input_pipeline.convert``: the converter's flags and command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence

from absl import app, flags

from input_pipeline import errors
from input_pipeline.convert.job import convert
from input_pipeline.convert.memory import keep_freed_heap
from input_pipeline.convert.settings import DEFAULT_BLOCK_ROWS, DEFAULT_NUM_SHARDS

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the converter's absl flags."""
    flags.DEFINE_enum("data_set", "kaggle", ["kaggle", "terabyte"], "Criteo data set (split rule).")
    flags.DEFINE_string("raw_data_file", None, "Raw file, directory or glob of day files (.gz ok).")
    flags.DEFINE_string("output_dir", None, "Converted dataset directory to create.")
    flags.DEFINE_integer(
        "max_ind_range", 0, "Reduce categorical values modulo this before the vocabulary (0: off)."
    )
    flags.DEFINE_integer("frequency_threshold", 0, "Vocabulary mode: minimum count to get an id.")
    flags.DEFINE_enum(
        "categorical",
        "vocabulary",
        ["vocabulary", "hash"],
        "vocabulary: tables of the values seen; hash: one pass, id = value % --max_ind_range.",
    )
    flags.DEFINE_enum("data_randomize", "total", ["total", "day", "none"], "Training row shuffle.")
    flags.DEFINE_float("data_sub_sample_rate", 0.0, "Fraction of negative training rows to drop.")
    flags.DEFINE_integer("num_shards", DEFAULT_NUM_SHARDS, "Shards per split.")
    flags.DEFINE_enum(
        "bad_lines", "error", ["error", "skip"], "Malformed lines: fail or count and skip."
    )
    flags.DEFINE_enum("compression", "none", ["none", "gzip"], "Shard compression.")
    flags.DEFINE_integer("seed", 123, "Seed for sub-sampling and shuffling.")
    flags.DEFINE_integer("block_rows", DEFAULT_BLOCK_ROWS, "Rows per TFRecord record.")
    flags.DEFINE_boolean(
        "overwrite", False, "Replace an existing output_dir that holds a converted dataset."
    )
    if "verbose" not in flags.FLAGS:
        flags.DEFINE_boolean("verbose", False, "On failure, print the traceback too.")


def main(argv: Sequence[str]) -> None:
    """CLI entry point."""
    del argv
    if not FLAGS.raw_data_file or not FLAGS.output_dir:
        print("error: --raw_data_file and --output_dir are required", file=sys.stderr)
        sys.exit(errors.EXIT_BAD_INPUT)
    keep_freed_heap()
    try:
        metadata = convert(
            FLAGS.data_set,
            FLAGS.raw_data_file,
            FLAGS.output_dir,
            max_ind_range=FLAGS.max_ind_range,
            frequency_threshold=FLAGS.frequency_threshold,
            categorical=FLAGS.categorical,
            data_randomize=FLAGS.data_randomize,
            data_sub_sample_rate=FLAGS.data_sub_sample_rate,
            num_shards=FLAGS.num_shards,
            bad_lines=FLAGS.bad_lines,
            compression=FLAGS.compression,
            seed=FLAGS.seed,
            block_rows=FLAGS.block_rows,
            overwrite=FLAGS.overwrite,
        )
    except Exception as error:  # noqa: BLE001  (every failure: one line, exit 2)
        sys.exit(errors.report(error))
    print(json.dumps({"data_dir": metadata["data_dir"], "rows": metadata["rows"]}))


def run(argv_main: Callable[[Sequence[str]], None] = main) -> None:
    """Defines the flags and runs the CLI."""
    define_flags()
    app.run(argv_main, flags_parser=errors.parse_absl_flags)
