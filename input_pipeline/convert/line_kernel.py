"""The C++ parser of clean chunks (``dlrm_tf/kernels/criteo_lines.cc``), where it can be built.

It applies the same rules as ``block_parse``'s NumPy passes in one pass over the
bytes, about ten times faster; without a compiler (or with
``DLRM_TF_FUSED_KERNELS=0``) the converter uses the NumPy passes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dlrm_tf.kernels import build
from input_pipeline import criteo

_NAME = "criteo_lines"


class Columns(NamedTuple):
    """A clean chunk's raw columns: label ``[L]`` int32, counts ``[L, 13]`` int64
    (negative -> 0), values ``[L, 26]`` int64 (``% max_ind_range`` when that is
    > 0; empty -> 0) and missing ``[L, 26]`` (the empty values)."""

    label: np.ndarray
    counts: np.ndarray
    values: np.ndarray
    missing: np.ndarray


def available() -> bool:
    """Whether the kernel is built and loaded here."""
    return build.load(_NAME) is not None


def clean_columns(chunk: bytes, max_ind_range: int) -> Columns | None:
    """The columns of a chunk of lines (no final newline), or None unless every
    line is clean. Needs ``available()``."""
    clean, *columns = build.load(_NAME).dlrm_criteo_clean_lines(
        np.frombuffer(chunk, np.uint8),  # a uint8 array becomes a tensor without a copy
        num_dense=criteo.NUM_DENSE,
        num_sparse=criteo.NUM_SPARSE,
        max_ind_range=max(max_ind_range, 0),
        max_count_digits=criteo.MAX_COUNT_DIGITS,
        max_hex_digits=criteo.MAX_HEX_DIGITS,
    )
    if not bool(clean):
        return None
    return Columns(*(column.numpy() for column in columns))
