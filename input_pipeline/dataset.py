"""tf.data reader of converted Criteo data (block-layout TFRecord shards).

``make_dataset`` yields ``(features, labels)``: ``features`` =
``{"dense_features": float32 [B, 13], "sparse_features": int64 [B, 26]}``
(``[B, 26, 1]`` with ``multi_hot=True``) and ``labels`` = float32 ``[B, 1]``.

Pipeline: shard files (per input pipeline) -> interleave the shards -> parse each
block record (a few vectorised ops per 4096 rows) and check it -> rebatch to the
batch size (``Dataset.rebatch``: one copy, no per-row elements) -> prefetch.
With ``shuffle=True`` the shard order is shuffled every epoch, blocks pass a
shuffle buffer, and rows are permuted within groups of ``shuffle_blocks`` blocks
before batching, so a batch mixes rows of several shards. Without shuffling, and
with at most 64 shards per pipeline, rows come in the converter's order.

Checks that cost almost nothing: ``metadata.read`` checks the metadata and the
shard files against it (see that module); every block's ids are compared with
``table_sizes`` (an id out of range fails, naming the shard); each shard must
yield exactly its recorded number of blocks (a corrupt record fails, naming the shard).
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from input_pipeline import criteo
from input_pipeline.features import DENSE_KEY, SPARSE_KEY
from input_pipeline.metadata import Metadata
from input_pipeline.metadata import read as read_metadata

_MAX_ORDERED_CYCLE = 64
_BLOCK_SPEC = {
    "num_rows": tf.io.FixedLenFeature([], tf.int64),
    "label": tf.io.FixedLenFeature([], tf.string),
    "dense": tf.io.FixedLenFeature([], tf.string),
    "ids": tf.io.FixedLenFeature([], tf.string),
}


def _parse_block(
    record: tf.Tensor, shard: tf.Tensor, table_sizes: tf.Tensor, id_dtype: tf.DType
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """One block record -> (label float32 [n, 1], dense [n, 13], ids int64 [n, 26])."""
    parsed = tf.io.parse_single_example(record, _BLOCK_SPEC)
    n = parsed["num_rows"]
    label = tf.io.decode_raw(parsed["label"], tf.uint8)
    dense = tf.io.decode_raw(parsed["dense"], tf.float32, little_endian=True)
    ids = tf.io.decode_raw(parsed["ids"], id_dtype, little_endian=True)
    sizes_ok = (
        tf.equal(tf.size(label, out_type=tf.int64), n)
        & tf.equal(tf.size(dense, out_type=tf.int64), n * criteo.NUM_DENSE)
        & tf.equal(tf.size(ids, out_type=tf.int64), n * criteo.NUM_SPARSE)
    )
    size_check = tf.debugging.Assert(
        sizes_ok, ["Malformed block (column sizes disagree with num_rows) in shard", shard]
    )
    with tf.control_dependencies([size_check]):
        ids = tf.cast(tf.reshape(ids, [-1, criteo.NUM_SPARSE]), tf.int64)
    low = tf.reduce_min(ids, axis=0)
    high = tf.reduce_max(ids, axis=0)
    in_range = tf.reduce_all(high < table_sizes) & tf.reduce_all(low >= 0)
    range_check = tf.debugging.Assert(
        in_range,
        [
            "Ids out of range of table_sizes in shard",
            shard,
            "per-feature max id:",
            high,
            "table sizes:",
            table_sizes,
            "per-feature min id:",
            low,
        ],
        summarize=criteo.NUM_SPARSE,
    )
    with tf.control_dependencies([range_check]):
        ids = tf.identity(ids)
    label = tf.reshape(tf.cast(label, tf.float32), [-1, 1])
    dense = tf.reshape(dense, [-1, criteo.NUM_DENSE])
    return label, dense, ids


def _read_shard(path: tf.Tensor, expected_blocks: tf.Tensor, compression: str) -> tf.data.Dataset:
    """A shard's records; fails naming the shard unless exactly the expected
    number of records can be read (a corrupt record ends the file early)."""
    records = tf.data.TFRecordDataset(path, compression_type=compression, buffer_size=1 << 20)
    records = records.ignore_errors()
    end = tf.data.Dataset.from_tensors(tf.constant(b""))  # real records are never empty
    records = records.concatenate(end).enumerate()

    def check(index: tf.Tensor, record: tf.Tensor) -> tf.Tensor:
        is_end = tf.equal(record, b"")
        check_count = tf.debugging.Assert(
            tf.logical_or(~is_end, tf.equal(index, expected_blocks)),
            [
                "Corrupt or truncated shard",
                path,
                ": could read",
                index,
                "blocks, metadata.json records",
                expected_blocks,
            ],
        )
        with tf.control_dependencies([check_count]):
            return tf.identity(record)

    records = records.map(check).filter(lambda record: tf.not_equal(record, b""))
    return records.map(lambda record: (record, path))


def make_dataset(
    data_dir: str | os.PathLike,
    split: str,
    batch_size: int,
    *,
    shuffle: bool = False,
    repeat: bool = False,
    seed: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
    drop_remainder: bool = False,
    num_parallel_reads: int = tf.data.AUTOTUNE,
    multi_hot: bool = False,
    shuffle_blocks: int = 8,
) -> tf.data.Dataset:
    """The ``tf.data`` pipeline over one split of a converted dataset.

    Args:
      data_dir: converted data directory (``metadata.json`` + shards).
      split: ``train``, ``test`` or ``validation``.
      batch_size: rows per batch; with ``input_context`` this is the GLOBAL batch
        and each pipeline yields ``input_context.get_per_replica_batch_size(...)``.
      shuffle: shuffle shards, blocks and rows (training).
      repeat: repeat forever (epochs are not separated).
      seed: seed for shuffling: the order is then a function of the seed alone
        (the same in every process and every iteration of the dataset, unless
        ``repeat``).
      input_context: from ``strategy.distribute_datasets_from_function``; shards
        the files (or, with fewer files than pipelines, the blocks) so every
        pipeline reads a disjoint part and together they read every row once.
      drop_remainder: drop a last incomplete batch (static batch dimension).
      num_parallel_reads: shards read concurrently.
      multi_hot: ``sparse_features`` as ``[B, 26, 1]`` bags.
      shuffle_blocks: with ``shuffle``, rows are permuted within groups of this
        many blocks.

    Returns:
      A dataset of ``({"dense_features", "sparse_features"}, labels)``.
    """
    metadata = read_metadata(data_dir)
    if split not in metadata["shards"]:
        raise ValueError(f"Unknown split {split!r}; {data_dir} has {sorted(metadata['shards'])}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    # A seeded order is a function of the seed alone, however often the dataset is
    # iterated (Keras may open an iterator before training's); each epoch gets its seed.
    order = _Order(shuffle, seed, reshuffle=seed is None or repeat)
    records = _records(metadata, split, input_context, order, num_parallel_reads)
    if repeat:
        records = records.repeat()
    table_sizes = tf.constant(metadata["table_sizes"], tf.int64)
    id_dtype = tf.as_dtype(metadata["record_format"]["id_dtype"])
    columns = records.map(
        lambda record, path: _parse_block(record, path, table_sizes, id_dtype),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=order.deterministic,
    )
    if shuffle:
        group_rows = shuffle_blocks * int(metadata.get("block_rows", 4096))
        columns = _shuffle_rows(columns, order, shuffle_blocks, group_rows)
    batches = columns.rebatch(batch_size, drop_remainder=drop_remainder)

    def to_features(label: tf.Tensor, dense: tf.Tensor, ids: tf.Tensor) -> tuple[dict, tf.Tensor]:
        sparse = ids[:, :, tf.newaxis] if multi_hot else ids
        return {DENSE_KEY: dense, SPARSE_KEY: sparse}, label

    return batches.map(to_features, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class _Order:
    """How a pipeline orders its rows: shuffled or not, seeded or not."""

    shuffle: bool
    seed: int | None
    reshuffle: bool  # a new order each iteration

    @property
    def deterministic(self) -> bool:
        return not self.shuffle or self.seed is not None


def _records(
    metadata: Metadata,
    split: str,
    input_context: tf.distribute.InputContext | None,
    order: _Order,
    num_parallel_reads: int,
) -> tf.data.Dataset:
    """``(record, shard path)`` of this input pipeline's part of the split: whole
    shards per pipeline, or every n-th block when there are fewer shards than
    pipelines."""
    shards = metadata["shards"][split]
    files = [os.path.join(metadata["data_dir"], s["file"]) for s in shards]
    blocks = [int(s["blocks"]) for s in shards]
    pipelines, pipeline_id = 1, 0
    if input_context is not None:
        pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
    shard_blocks = pipelines > 1 and len(files) < pipelines
    if pipelines > 1 and not shard_blocks:
        files, blocks = files[pipeline_id::pipelines], blocks[pipeline_id::pipelines]
    compression = "GZIP" if metadata.get("compression") == "gzip" else ""
    shard_list = tf.data.Dataset.from_tensor_slices(
        (tf.constant(files, tf.string), tf.constant(blocks, tf.int64))
    )
    if order.shuffle:
        shard_list = shard_list.shuffle(
            len(files), seed=order.seed, reshuffle_each_iteration=order.reshuffle
        )
    cycle = max(1, len(files) if not order.shuffle else min(len(files), 16))
    records = shard_list.interleave(
        lambda path, count: _read_shard(path, count, compression),
        cycle_length=min(cycle, _MAX_ORDERED_CYCLE),
        block_length=1,
        num_parallel_calls=num_parallel_reads,
        deterministic=order.deterministic,
    )
    return records.shard(pipelines, pipeline_id) if shard_blocks else records


def _shuffle_rows(
    columns: tf.data.Dataset, order: _Order, shuffle_blocks: int, group_rows: int
) -> tf.data.Dataset:
    """Blocks through a shuffle buffer, then rows permuted within groups of blocks."""
    columns = columns.shuffle(
        2 * shuffle_blocks, seed=order.seed, reshuffle_each_iteration=order.reshuffle
    )
    columns = columns.rebatch(group_rows)
    # Per-group seeds derived from the element count keep a seeded run reproducible.
    return columns.enumerate().map(
        lambda index, cols: _permute_rows(cols, order.seed, index),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=order.seed is not None,
    )


def _permute_rows(
    columns: tuple[tf.Tensor, ...], seed: int | None, index: tf.Tensor
) -> tuple[tf.Tensor, ...]:
    rows = tf.shape(columns[0])[0]
    if seed is None:
        order = tf.random.shuffle(tf.range(rows))
    else:
        keys = tf.random.stateless_uniform(
            [rows], seed=tf.stack([tf.constant(seed, tf.int64), index])
        )
        order = tf.argsort(keys)
    return tuple(tf.gather(c, order) for c in columns)
