"""Shard writing: one split's rows as block records, block ``k`` to shard ``k % n``."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf

from input_pipeline.convert import records


def shard_name(split: str, index: int, count: int, compression: str) -> str:
    """``train-00000-of-00008.tfrecord`` (``.tfrecord.gz`` with gzip)."""
    suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
    return f"{split}-{index:05d}-of-{count:05d}{suffix}"


class SplitWriter:
    """Writes one split's rows as blocks, block ``k`` to shard ``k % num_shards``."""

    def __init__(
        self,
        directory: str,
        split: str,
        num_shards: int,
        block_rows: int,
        id_dtype: str,
        compression: str,
    ) -> None:
        options = tf.io.TFRecordOptions(compression_type="GZIP" if compression == "gzip" else "")
        self.names = [shard_name(split, i, num_shards, compression) for i in range(num_shards)]
        self.paths = [os.path.join(directory, name) for name in self.names]
        self.writers = [tf.io.TFRecordWriter(p, options) for p in self.paths]
        self.rows_per_shard = [0] * num_shards
        self.blocks_per_shard = [0] * num_shards
        self.block_rows = block_rows
        self.id_dtype = id_dtype
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.pending_rows = 0
        self.blocks = 0

    def add(self, label: np.ndarray, dense: np.ndarray, ids: np.ndarray) -> None:
        if not len(label):
            return
        self.pending.append((label, dense, ids))
        self.pending_rows += len(label)
        if self.pending_rows >= self.block_rows:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self.pending:
            return
        label, dense, ids = (np.concatenate(parts) for parts in zip(*self.pending, strict=True))
        full = len(label) if final else len(label) - len(label) % self.block_rows
        for start in range(0, full, self.block_rows):
            stop = min(start + self.block_rows, full)
            shard = self.blocks % len(self.writers)
            self.writers[shard].write(
                records.serialize_block(
                    label[start:stop], dense[start:stop], ids[start:stop], self.id_dtype
                )
            )
            self.rows_per_shard[shard] += stop - start
            self.blocks_per_shard[shard] += 1
            self.blocks += 1
        self.pending = [(label[full:], dense[full:], ids[full:])] if full < len(label) else []
        self.pending_rows = len(label) - full

    def close(self) -> list[dict[str, Any]]:
        self._flush(final=True)
        for writer in self.writers:
            writer.close()
        return [
            {"file": name, "rows": rows, "blocks": blocks, "bytes": os.path.getsize(path)}
            for name, path, rows, blocks in zip(
                self.names, self.paths, self.rows_per_shard, self.blocks_per_shard, strict=True
            )
        ]
