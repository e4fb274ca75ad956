"""Parsed rows kept on disk between the counting pass and the writing pass, in file order.

Vocabulary mode needs every training value counted before any id exists. The
counting pass parses the text once and keeps each row's label, dense features and
categorical values (after ``% max_ind_range``; -1 for an empty field) here, so the
writing pass reads compact fixed-size records instead of parsing the text again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from input_pipeline import criteo

# Rows per block read back: ~10 MiB, a few of them in flight.
READ_BLOCK_ROWS = 1 << 16


def parsed_dtype(max_ind_range: int) -> np.dtype:
    """One parsed row: ``label`` (u1), ``dense`` (f4 [13]) and ``values`` ([26], -1 for
    an empty field): int32 when ``% max_ind_range`` keeps every value below 2**31."""
    values = "<i4" if 0 < max_ind_range <= 2**31 else "<i8"
    return np.dtype(
        [
            ("label", "u1"),
            ("dense", "<f4", (criteo.NUM_DENSE,)),
            ("values", values, (criteo.NUM_SPARSE,)),
        ]
    )


def pack_rows(
    dtype: np.dtype, label: np.ndarray, dense: np.ndarray, last: np.ndarray
) -> np.ndarray:
    """The rows as one record array of ``dtype`` (fields label, dense, then ids or values)."""
    rows = np.empty(len(label), dtype)
    names = dtype.names
    rows[names[0]], rows[names[1]], rows[names[2]] = label, dense, last
    return rows


class RowCache:
    """Append-only files of parsed rows, one per split, read back once in order."""

    def __init__(self, directory: str, dtype: np.dtype) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.dtype = dtype
        self._files: dict[str, BinaryIO] = {}

    def _path(self, split: str) -> str:
        return os.path.join(self.directory, f"{split}.bin")

    def add(self, split: str, label: np.ndarray, dense: np.ndarray, values: np.ndarray) -> None:
        """Appends rows of ``split`` (columns as parsed)."""
        if not len(label):
            return
        if split not in self._files:
            self._files[split] = open(self._path(split), "wb")  # noqa: SIM115 (closed in rows/close)
        pack_rows(self.dtype, label, dense, values).tofile(self._files[split])

    def writer(self, split: str) -> _SplitAppender:
        """An object whose ``add(label, dense, values)`` appends rows of ``split``."""
        return _SplitAppender(self, split)

    def rows(self, split: str, block_rows: int = READ_BLOCK_ROWS) -> Iterator[np.ndarray]:
        """Yields the rows of ``split`` in the order added, ``block_rows`` at a time;
        the file is removed once read."""
        file = self._files.pop(split, None)
        if file is None:
            return
        file.close()
        path = self._path(split)
        with open(path, "rb") as f:
            while len(block := np.fromfile(f, self.dtype, count=block_rows)):
                yield block
        os.remove(path)

    def close(self) -> None:
        """Closes the files still open (after a failure)."""
        for file in self._files.values():
            file.close()
        self._files.clear()


class _SplitAppender:
    """``RowCache.add`` for one split, with a split writer's ``add`` signature."""

    def __init__(self, cache: RowCache, split: str) -> None:
        self.cache = cache
        self.split = split

    def add(self, label: np.ndarray, dense: np.ndarray, values: np.ndarray) -> None:
        self.cache.add(self.split, label, dense, values)
