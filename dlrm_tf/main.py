"""``python -m dlrm_tf.main --flagfile=configs/X.flags``: train, evaluate and export DLRM.

Data flows one way: flags -> configs (``dlrm_tf.flags.run_config``, built once) ->
``dlrm_tf.job`` (data source + model -> trainer -> export). Library errors name
config fields; the one error line shows them as flags (``dlrm_flags.FIELD_FLAGS``).
"""

from __future__ import annotations

import os
import sys
import time

from input_pipeline.tf_startup import start_tensorflow

start_tensorflow()  # before TensorFlow's first import: oneDNN, start-up lines on request

from absl import app, flags, logging  # noqa: E402

from dlrm_tf import flags as dlrm_flags  # noqa: E402  (defines the flags)
from dlrm_tf import job  # noqa: E402
from dlrm_tf.training.trainer import RunResult  # noqa: E402

FLAGS = flags.FLAGS


def execute() -> RunResult:
    """Runs the job the parsed flags describe; returns ``train.RunResult``.

    The flags become one ``job.RunConfig`` (``dlrm_flags.run_config``), which
    ``job.execute`` runs. Raises ConfigError / ValueError / FileNotFoundError /
    MemoryError / DeviceError with a message naming the field, flag or file at fault.
    """
    default_run_dir = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    return job.execute(dlrm_flags.run_config(FLAGS, default_run_dir))


def main(argv: list[str]) -> int:
    """The CLI: runs the job, prints where each artifact went; exit 2 on bad input."""
    del argv
    from input_pipeline import errors

    started = time.time()
    try:
        result = execute()
    except Exception as err:  # noqa: BLE001  (every failure: one line, exit 2; --verbose)
        return errors.report(err, flag_names=dlrm_flags.FIELD_FLAGS)
    history = result.artifacts.get("history")
    if history:
        import json

        from dlrm_tf.reports.summary import format_summary, run_summary

        with open(history) as f:
            summary = run_summary(json.load(f))
        print(format_summary(summary, result.artifacts, time.time() - started))
    else:
        for name, path in result.artifacts.items():
            print(f"{name}: {path}")
    return 0


def run() -> None:
    """Console-script entry point (``dlrm-tf``)."""
    from input_pipeline.errors import parse_absl_flags

    # --help lists the key flags of the program named by sys.argv[0]; make this
    # project's flags those, leaving TensorFlow's and absl's own to --helpfull.
    for flag in FLAGS.get_flags_for_module(dlrm_flags):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_absl_flags)


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    run()
