"""TensorFlow's start-up lines kept off a command's stderr unless asked for.

Importing TensorFlow on a CPU machine prints, before TensorFlow reads
``TF_CPP_MIN_LOG_LEVEL``, that oneDNN custom operations are on and that no CUDA
driver was found (once per TensorFlow library loaded), and the first look at
the devices adds ``E0000 ... failed call to cuInit``. They hide a command's own
output and say nothing about its run. ``quiet_tensorflow()``, called by each
command-line entry point before its first ``import tensorflow``, imports
TensorFlow and probes the devices with stderr captured, then passes on every
captured line except those. ``--verbose`` on the command line or
``TF_CPP_MIN_LOG_LEVEL=0`` in the environment (``errors.verbose_requested``)
leaves TensorFlow's logging untouched.

``start_tensorflow()`` is what the entry points call: oneDNN's CPU kernels
preferred (``prefer_onednn``), then the quiet import.

Standard library only until it imports TensorFlow itself, so the converter,
the exporter and the trainer can share it under the import rules.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
from collections.abc import Sequence

from input_pipeline.errors import verbose_requested

# The lines TensorFlow prints at start-up on a machine without a GPU.
STARTUP_LINES = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|oneDNN custom operations are on"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers"
    r"|cpu_feature_guard\.cc:\d+\]"
    r"|^To enable the following instructions:.*rebuild TensorFlow"
    r"|failed call to cuInit"
)


def start_tensorflow(argv: Sequence[str] | None = None) -> None:
    """Before TensorFlow's first import: oneDNN preferred, start-up lines kept quiet."""
    prefer_onednn()
    quiet_tensorflow(argv)


def prefer_onednn() -> None:
    """Turns on TensorFlow's oneDNN CPU kernels on x86 unless the environment chooses.

    TensorFlow turns them on by itself only where the CPU has AVX-512 VNNI, bf16
    or AMX; on an AVX2-only CPU its default kernels made the Kaggle-shape
    training step about 1.5x slower (``bench/cpu_kernels.py``, README).
    TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, at its import: setting it
    any later changes nothing, and a value already in the environment is kept.
    """
    if platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def quiet_tensorflow(argv: Sequence[str] | None = None) -> None:
    """Imports TensorFlow without its start-up lines (see the module docstring).

    Sets ``TF_CPP_MIN_LOG_LEVEL=2`` (TensorFlow's own info and warning lines)
    unless the environment already sets it. Does nothing when the user asked
    for details, or when TensorFlow is already imported (too late to matter).

    Args:
      argv: the command line (default ``sys.argv``), for ``--verbose``.
    """
    if verbose_requested(argv) or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            sys.stderr.writelines(
                line for line in text.splitlines(keepends=True) if not STARTUP_LINES.search(line)
            )
            sys.stderr.flush()
