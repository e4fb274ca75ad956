"""Vocabularies: exact value frequencies per feature over the training rows, and their files."""

from __future__ import annotations

import os

import numpy as np

from input_pipeline import criteo


class ValueCounter:
    """Exact value frequencies per feature, merged in amortised batches."""

    def __init__(self) -> None:
        self.merged = [(np.zeros(0, np.int64), np.zeros(0, np.int64))] * criteo.NUM_SPARSE
        self.pending: list[list[tuple[np.ndarray, np.ndarray]]] = [
            [] for _ in range(criteo.NUM_SPARSE)
        ]
        self.pending_size = [0] * criteo.NUM_SPARSE

    def add(self, values: np.ndarray, present: np.ndarray) -> None:
        """Counts the ``present`` entries of ``values`` ``[n, 26]``, feature by feature."""
        # Column-major, and int32 when the values allow: masking a strided column and
        # sorting int64 took about half again as long.
        narrow = len(values) and values.min() >= -(2**31) and values.max() < 2**31
        columns = np.ascontiguousarray(values.T, np.int32 if narrow else np.int64)
        present = np.ascontiguousarray(present.T)
        for f in range(criteo.NUM_SPARSE):
            unique, counts = np.unique(columns[f][present[f]], return_counts=True)
            self.pending[f].append((unique.astype(np.int64), counts.astype(np.int64)))
            self.pending_size[f] += len(unique)
            if self.pending_size[f] > max(1 << 20, len(self.merged[f][0])):
                self._merge(f)

    def _merge(self, f: int) -> None:
        values = np.concatenate([self.merged[f][0]] + [v for v, _ in self.pending[f]])
        counts = np.concatenate([self.merged[f][1]] + [c for _, c in self.pending[f]])
        unique, inverse = np.unique(values, return_inverse=True)
        self.merged[f] = (unique, np.bincount(inverse, weights=counts).astype(np.int64))
        self.pending[f] = []
        self.pending_size[f] = 0

    def vocabulary(self, feature: int, threshold: int) -> np.ndarray:
        """Values seen at least ``threshold`` times, most frequent first (ties by value)."""
        self._merge(feature)
        values, counts = self.merged[feature]
        keep = counts >= threshold
        values, counts = values[keep], counts[keep]
        return values[np.lexsort((values, -counts))]


def write_vocabularies(directory: str, counter: ValueCounter, threshold: int) -> list[str]:
    os.makedirs(os.path.join(directory, "vocab"), exist_ok=True)
    relative = []
    for f, name in enumerate(criteo.SPARSE_NAMES):
        path = os.path.join("vocab", f"{name}.txt")
        values = counter.vocabulary(f, threshold)
        with open(os.path.join(directory, path), "w", encoding="ascii") as out:
            if len(values):
                out.write("\n".join(map(str, values.tolist())) + "\n")
        relative.append(path)
    return relative
