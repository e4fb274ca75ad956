"""The shuffle spill: a uniform random permutation of training rows in bounded memory."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np

SPILL_BUCKET_ROWS = 500_000
SPILL_BUFFER_BYTES = 64 << 20


class ShuffleSpill:
    """Uniform random shuffling of training rows in bounded memory.

    Rows of a group (a day, or all training rows) go to uniformly random buckets
    (files). Afterwards each bucket is loaded and permuted; concatenating the
    buckets gives a uniformly random order of the group. Buckets that grew beyond
    twice the target size are split again before loading.
    """

    def __init__(self, directory: str, record_dtype: np.dtype, bucket_rows: int, seed: int) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.dtype = record_dtype
        self.bucket_rows = bucket_rows
        self.seed = seed
        self.num_buckets: dict[int, int] = {}
        self.buffers: dict[tuple[int, int], list[np.ndarray]] = {}
        self.buffered_bytes = 0
        self.calls = 0

    def start_group(self, group: int, expected_rows: int) -> None:
        if group not in self.num_buckets:
            self.num_buckets[group] = max(1, math.ceil(expected_rows / self.bucket_rows))

    def _path(self, group: int, bucket: int, depth: int = 0) -> str:
        return os.path.join(self.directory, f"g{group:05d}-b{bucket:06d}-d{depth}.bin")

    def add(self, group: int, records: np.ndarray) -> None:
        if not len(records):
            return
        rng = np.random.default_rng([self.seed, 2, group, self.calls])
        self.calls += 1
        buckets = rng.integers(self.num_buckets[group], size=len(records))
        order = np.argsort(buckets, kind="stable")
        sorted_buckets = buckets[order]
        bounds = np.flatnonzero(np.diff(sorted_buckets)) + 1
        for piece in np.split(order, bounds):
            key = (group, int(buckets[piece[0]]))
            # np.take: fancy indexing copies structured records ~10x slower.
            self.buffers.setdefault(key, []).append(np.take(records, piece))
        self.buffered_bytes += records.nbytes
        if self.buffered_bytes >= SPILL_BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        for (group, bucket), parts in self.buffers.items():
            with open(self._path(group, bucket), "ab") as f:
                for part in parts:
                    part.tofile(f)
        self.buffers.clear()
        self.buffered_bytes = 0

    def shuffled_blocks(self, block_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every group's rows, permuted, group by group (files are removed), in
        blocks of at most ``block_rows``, each as ``(bucket, indices)``: the block is
        ``np.take(bucket, indices)``, gathered where the caller likes (on a worker
        thread, say), and a bucket is never copied whole."""
        for records, order in self._permuted_buckets():
            for start in range(0, len(order), block_rows):
                yield records, order[start : start + block_rows]

    def _permuted_buckets(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every bucket's rows and their permutation, group by group (files are removed)."""
        self.flush()
        for group in sorted(self.num_buckets):
            for bucket in range(self.num_buckets[group]):
                yield from self._drain(self._path(group, bucket), (group, bucket, 0))

    def _drain(self, path: str, key: tuple[int, ...]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if not os.path.exists(path):
            return
        rows = os.path.getsize(path) // self.dtype.itemsize
        if rows <= 2 * self.bucket_rows:
            records = np.fromfile(path, dtype=self.dtype)
            os.remove(path)
            yield records, np.random.default_rng([self.seed, 3, *key]).permutation(len(records))
            return
        parts = math.ceil(rows / self.bucket_rows)
        rng = np.random.default_rng([self.seed, 4, *key])
        part_paths = [f"{path}.{k}" for k in range(parts)]
        with open(path, "rb") as f:
            while True:
                records = np.fromfile(f, dtype=self.dtype, count=self.bucket_rows)
                if not len(records):
                    break
                target = rng.integers(parts, size=len(records))
                for k in range(parts):
                    with open(part_paths[k], "ab") as out:
                        np.take(records, np.flatnonzero(target == k)).tofile(out)
        os.remove(path)
        for k, part_path in enumerate(part_paths):
            yield from self._drain(part_path, (*key, k))
