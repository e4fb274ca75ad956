"""One conversion, pass by pass: count lines, count values (vocabulary mode), write the shards.

``convert`` checks the settings, takes the output's lock, converts into a
temporary directory next to the output and publishes it only when complete.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
from absl import logging

from input_pipeline import criteo, metadata, safe_files
from input_pipeline.convert import records, row_cache, spill, vocabulary
from input_pipeline.convert.ahead import map_ahead
from input_pipeline.convert.id_lookup import IdLookup
from input_pipeline.convert.output_dir import check_output, remove_dataset, replace_directory
from input_pipeline.convert.parsing import BadLines, iterate_rows
from input_pipeline.convert.progress import Progress
from input_pipeline.convert.reading import count_source_lines
from input_pipeline.convert.settings import (
    DEFAULT_BLOCK_ROWS,
    DEFAULT_NUM_SHARDS,
    TEST,
    TRAIN,
    VALIDATION,
    BadInputError,
    Settings,
)
from input_pipeline.convert.shards import SplitWriter
from input_pipeline.convert.sources import Source, resolve_sources
from input_pipeline.convert.split_plan import SplitPlan, kaggle_day_sizes, plan_splits
from input_pipeline.metadata import SPLITS

# Look-ups run beside the shard writing (TensorFlow releases the GIL).
LOOKUP_THREADS = 2


class RowSink(Protocol):
    """Where a split's rows go: a shard writer, or the row cache."""

    def add(self, label: np.ndarray, dense: np.ndarray, ids: np.ndarray) -> None: ...


def count_lines_pass(sources: list[Source], settings: Settings, bad_lines: BadLines) -> SplitPlan:
    """Pass 1: line counts where the split rule needs them; returns the split plan."""
    to_count = sources if settings.data_set == "kaggle" else sources[-1:]
    progress = Progress("counting lines", None, sum(s.size for s in to_count))
    for source in to_count:
        source.lines = count_source_lines(source, progress, bad_lines.policy == "skip")
        if source.lines == 0:
            raise BadInputError(f"{source.path}: empty file (no lines)")
        progress.file_done(source.size)
    logging.info(progress.summary())
    return plan_splits(settings.data_set, sources)


def _known_lines(sources: list[Source], settings: Settings) -> int | None:
    return sum(s.lines for s in sources) if settings.data_set == "kaggle" else None


def counting_pass(
    directory: str,
    sources: list[Source],
    plan: SplitPlan,
    settings: Settings,
    bad_lines: BadLines,
    cache: row_cache.RowCache,
    shuffle: spill.ShuffleSpill | None,
) -> tuple[list[str], int]:
    """Pass 2 (vocabulary mode), the only one that parses the text: value frequencies
    over the training rows, every kept row into ``cache`` (training rows into
    ``shuffle``'s buckets when shuffling). Writes the vocabulary files; returns them
    (relative to ``directory``) and the number of rows kept."""
    counter = vocabulary.ValueCounter()
    counting = criteo.RawPreprocessor.for_raw_values(settings.max_ind_range)
    progress = Progress("counting values", _known_lines(sources, settings), _bytes(sources))
    sinks = {split: cache.writer(split) for split in SPLITS}
    kept = 0
    for _, day, split, parsed in iterate_rows(
        sources, counting, plan, settings, bad_lines, progress, raw_values=True
    ):
        values = parsed["ids"]
        train = values[split == TRAIN]
        counter.add(train, train >= 0)  # -1: empty field, which has its own id
        columns = (parsed["label"].astype(np.uint8), parsed["dense"], values)
        _route_chunk(sinks, shuffle, settings, day, split, columns)
        kept += len(values)
    logging.info(progress.summary())
    return vocabulary.write_vocabularies(directory, counter, settings.frequency_threshold), kept


def _bytes(sources: list[Source]) -> int:
    return sum(s.size for s in sources)


def _shuffle_spill(
    directory: str, sources: list[Source], settings: Settings, record_dtype: np.dtype
) -> spill.ShuffleSpill | None:
    """The spill that shuffles training rows (None with ``data_randomize=none``)."""
    if settings.data_randomize == "none":
        return None
    shuffle = spill.ShuffleSpill(
        os.path.join(directory, "_spill"), record_dtype, spill.SPILL_BUCKET_ROWS, settings.seed
    )
    if settings.data_set == "kaggle":
        train_days = kaggle_day_sizes(_known_lines(sources, settings))[:-1]
    else:
        # No line counts for Terabyte's training days: estimate from file sizes
        # (~200 bytes a line, gzip ~4x); oversized buckets are split later.
        train_days = [s.size * (4 if s.gzipped else 1) // 200 for s in sources[:-1]]
    if settings.data_randomize == "total":
        shuffle.start_group(0, sum(train_days))
    else:
        for day, rows in enumerate(train_days):
            shuffle.start_group(day, rows)
    return shuffle


def _route_chunk(
    writers: Mapping[str, RowSink],
    shuffle: spill.ShuffleSpill | None,
    settings: Settings,
    day: np.ndarray,
    split: np.ndarray,
    columns: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Sends a chunk's rows to their split's writer (training rows via the spill;
    ``ids`` may be values, as ``writers`` and ``shuffle`` expect)."""
    label, dense, ids = columns
    for code, name in ((TEST, "test"), (VALIDATION, "validation")):
        rows = split == code
        if rows.any():
            writers[name].add(label[rows], dense[rows], ids[rows])
    train = split == TRAIN
    if not train.any():
        return
    if not train.all():
        label, dense, ids = label[train], dense[train], ids[train]
    if shuffle is None:
        writers["train"].add(label, dense, ids)
        return
    rows = row_cache.pack_rows(shuffle.dtype, label, dense, ids)
    groups = np.zeros(len(rows), np.int64) if settings.data_randomize == "total" else day[train]
    for group in np.unique(groups).tolist():
        in_group = (
            rows if groups[0] == groups[-1] else np.take(rows, np.flatnonzero(groups == group))
        )
        shuffle.add(group, in_group)


def _split_writers(directory: str, settings: Settings, id_dtype: str) -> dict[str, SplitWriter]:
    return {
        split: SplitWriter(
            directory,
            split,
            settings.num_shards,
            settings.block_rows,
            id_dtype,
            settings.compression,
        )
        for split in SPLITS
    }


def conversion_pass(
    directory: str,
    sources: list[Source],
    plan: SplitPlan,
    settings: Settings,
    bad_lines: BadLines,
    preprocessor: criteo.RawPreprocessor,
    id_dtype: str,
) -> dict[str, list[dict[str, Any]]]:
    """Pass 3 (hash mode): parses every line, every kept row into its split's shards;
    returns the shard lists."""
    writers = _split_writers(directory, settings, id_dtype)
    shuffle = _shuffle_spill(directory, sources, settings, records.record_dtype(id_dtype))
    progress = Progress("converting", _known_lines(sources, settings), _bytes(sources))
    for _, day, split, parsed in iterate_rows(
        sources, preprocessor, plan, settings, bad_lines, progress, raw_values=False
    ):
        columns = (
            parsed["label"].astype(np.uint8),
            parsed["dense"],
            parsed["ids"].astype(records.np_id_dtype(id_dtype)),
        )
        _route_chunk(writers, shuffle, settings, day, split, columns)
    logging.info(progress.summary())
    if shuffle is not None:
        for bucket, order in shuffle.shuffled_blocks(row_cache.READ_BLOCK_ROWS):
            rows = np.take(bucket, order)
            writers["train"].add(rows["label"], rows["dense"], rows["ids"])
        shutil.rmtree(shuffle.directory, ignore_errors=True)
    return {split: writers[split].close() for split in SPLITS}


def writing_pass(
    directory: str,
    settings: Settings,
    cache: row_cache.RowCache,
    shuffle: spill.ShuffleSpill | None,
    lookup: IdLookup,
    rows: int,
) -> dict[str, list[dict[str, Any]]]:
    """Pass 3 (vocabulary mode): the counting pass's ``rows`` rows, their values
    looked up, into their split's shards; returns the shard lists."""
    writers = _split_writers(directory, settings, lookup.id_dtype.name)
    progress = Progress("writing", rows, 1)

    def with_ids(item: tuple[np.ndarray, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
        rows, order = item
        block = rows if order is None else np.take(rows, order)
        return block, lookup(block["values"])

    for split in SPLITS:
        if split == "train" and shuffle is not None:
            # A shuffle bucket is up to 1M rows: gathered and looked up a cache
            # block at a time, on the lookup threads.
            items = shuffle.shuffled_blocks(row_cache.READ_BLOCK_ROWS)
        else:
            items = ((block, None) for block in cache.rows(split))
        for block, ids in map_ahead(with_ids, items, LOOKUP_THREADS):
            writers[split].add(block["label"], block["dense"], ids)
            progress.update(len(block))
    logging.info(progress.summary())
    shutil.rmtree(cache.directory, ignore_errors=True)
    if shuffle is not None:
        shutil.rmtree(shuffle.directory, ignore_errors=True)
    return {split: writers[split].close() for split in SPLITS}


def _id_dtype(table_sizes: list[int]) -> str:
    return "int32" if max(table_sizes) < 2**31 else "int64"


def _convert_with_vocabulary(
    directory: str, sources: list[Source], plan: SplitPlan, settings: Settings, bad_lines: BadLines
) -> tuple[list[str], list[int], str, dict[str, list[dict[str, Any]]]]:
    """Passes 2 and 3 of vocabulary mode: (vocabulary files, table sizes, id dtype, shards)."""
    parsed = row_cache.parsed_dtype(settings.max_ind_range)
    cache = row_cache.RowCache(os.path.join(directory, "_rows"), parsed)
    try:
        shuffle = _shuffle_spill(directory, sources, settings, parsed)
        vocabulary_files, rows = counting_pass(
            directory, sources, plan, settings, bad_lines, cache, shuffle
        )
        preprocessor = criteo.RawPreprocessor(
            max_ind_range=settings.max_ind_range,
            vocabulary_files=[os.path.join(directory, p) for p in vocabulary_files],
        )
        table_sizes = list(preprocessor.table_sizes)
        id_dtype = _id_dtype(table_sizes)
        lookup = IdLookup(preprocessor, parsed["values"].base, id_dtype)
        shards = writing_pass(directory, settings, cache, shuffle, lookup, rows)
    finally:
        cache.close()
    return vocabulary_files, table_sizes, id_dtype, shards


def convert_into(
    directory: str, sources: list[Source], settings: Settings, bad_lines: BadLines
) -> metadata.Metadata:
    """Runs every pass into ``directory``; returns the dataset's metadata."""
    plan = count_lines_pass(sources, settings, bad_lines)
    vocabulary_files = None
    if settings.categorical == "vocabulary":
        vocabulary_files, table_sizes, id_dtype, shards = _convert_with_vocabulary(
            directory, sources, plan, settings, bad_lines
        )
    else:
        preprocessor = criteo.RawPreprocessor(max_ind_range=settings.max_ind_range)
        table_sizes = list(preprocessor.table_sizes)
        id_dtype = _id_dtype(table_sizes)
        shards = conversion_pass(
            directory, sources, plan, settings, bad_lines, preprocessor, id_dtype
        )
    return metadata.for_conversion(
        settings,
        table_sizes,
        id_dtype,
        shards,
        vocabulary_files,
        sources=[{"path": s.path, "bytes": s.size, "lines": s.lines} for s in sources],
        bad_lines={
            "policy": bad_lines.policy,
            "skipped": bad_lines.skipped,
            "examples": bad_lines.examples,
        },
    )


def settings(
    data_set: str,
    *,
    max_ind_range: int,
    frequency_threshold: int,
    categorical: str,
    data_randomize: str,
    data_sub_sample_rate: float,
    num_shards: int,
    compression: str,
    seed: int,
    block_rows: int,
) -> Settings:
    """Checked settings of a conversion (``ValueError`` naming the bad one)."""
    if data_set not in ("kaggle", "terabyte"):
        raise ValueError(f"data_set must be 'kaggle' or 'terabyte', got {data_set!r}")
    if data_randomize not in ("total", "day", "none"):
        raise ValueError(f"data_randomize must be total, day or none, got {data_randomize!r}")
    if compression not in ("none", "gzip"):
        raise ValueError(f"compression must be 'none' or 'gzip', got {compression!r}")
    if not 0.0 <= data_sub_sample_rate < 1.0:
        raise ValueError(f"data_sub_sample_rate must be in [0, 1), got {data_sub_sample_rate}")
    if num_shards < 1 or block_rows < 1:
        raise ValueError("num_shards and block_rows must be >= 1")
    if max_ind_range < 0 or frequency_threshold < 0:
        raise ValueError("max_ind_range and frequency_threshold must be >= 0")
    _check_categorical(categorical, max_ind_range, frequency_threshold)
    return Settings(
        data_set=data_set,
        categorical=categorical,
        max_ind_range=max_ind_range,
        frequency_threshold=max(frequency_threshold, 1) if categorical == "vocabulary" else 0,
        data_randomize=data_randomize,
        data_sub_sample_rate=float(data_sub_sample_rate),
        num_shards=num_shards,
        compression=compression,
        block_rows=block_rows,
        seed=seed,
    )


def _check_categorical(categorical: str, max_ind_range: int, frequency_threshold: int) -> None:
    """Refuses a categorical mode its other flags contradict."""
    if categorical not in ("vocabulary", "hash"):
        raise ValueError(f"`categorical`={categorical!r}: must be vocabulary or hash")
    if categorical == "hash" and max_ind_range <= 0:
        raise ValueError(
            f"`categorical`=hash needs `max_ind_range`=N > 0 (ids are value % N), got "
            f"`max_ind_range`={max_ind_range}: give one, or drop `categorical`=hash"
        )
    if categorical == "hash" and frequency_threshold > 0:
        raise ValueError(
            f"`frequency_threshold`={frequency_threshold} applies to vocabularies, not to "
            "`categorical`=hash: drop one of the two"
        )


def convert(
    data_set: str,
    raw_data_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    max_ind_range: int = 0,
    frequency_threshold: int = 0,
    categorical: str = "vocabulary",
    data_randomize: str = "total",
    data_sub_sample_rate: float = 0.0,
    num_shards: int = DEFAULT_NUM_SHARDS,
    bad_lines: str = "error",
    compression: str = "none",
    seed: int = 123,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Converts raw Criteo text into TFRecord block shards and ``metadata.json``.

    Args:
      data_set: ``"kaggle"`` or ``"terabyte"`` (decides the split rule).
      raw_data_file: a file, a directory or a glob (``.gz`` allowed).
      output_dir: the dataset directory to create.
      max_ind_range: reduce categorical values ``% max_ind_range`` before the
        vocabulary (0: off); the ids themselves with ``categorical="hash"``.
      frequency_threshold: vocabulary mode: rarer values share the OOV id (0 or 1:
        every value seen in the training rows gets an id).
      categorical: ``"vocabulary"`` (tables of the rows the data needs) or
        ``"hash"`` (one pass, ``id = value % max_ind_range``, tables of exactly
        ``max_ind_range`` rows).
      data_randomize: ``total``, ``day`` or ``none`` (training rows only).
      data_sub_sample_rate: fraction of negative training rows to drop.
      num_shards: shards per split.
      bad_lines: ``error`` (raise ``BadInputError`` naming file and line) or ``skip``
        (count them in the metadata).
      compression: ``none`` or ``gzip`` for the shards.
      seed: seed of sub-sampling and shuffling.
      block_rows: rows per record.
      overwrite: replace an existing non-empty ``output_dir`` (after success).

    Returns:
      The metadata dict written to ``metadata.json``, plus ``data_dir``.
    """
    run_settings = settings(
        data_set,
        max_ind_range=max_ind_range,
        frequency_threshold=frequency_threshold,
        categorical=categorical,
        data_randomize=data_randomize,
        data_sub_sample_rate=data_sub_sample_rate,
        num_shards=num_shards,
        compression=compression,
        seed=seed,
        block_rows=block_rows,
    )
    bad = BadLines(bad_lines)
    output_dir = os.path.abspath(os.fspath(output_dir))
    sources = resolve_sources(data_set, raw_data_file)
    written = _convert_and_publish(output_dir, sources, run_settings, bad, overwrite)
    logging.info("Wrote %s: %s", output_dir, written["rows"])
    return {**written, "data_dir": output_dir}


def _convert_and_publish(
    output_dir: str,
    sources: list[Source],
    run_settings: Settings,
    bad: BadLines,
    overwrite: bool,
) -> metadata.Metadata:
    """Converts into a temporary directory next to ``output_dir`` under the
    output's lock, then publishes it as ``output_dir`` (nothing on failure)."""
    check_output(output_dir, sources, overwrite)
    parent, name = os.path.split(output_dir)
    os.makedirs(parent, exist_ok=True)
    with safe_files.exclusive(output_dir, f"`output_dir`={output_dir}", logging.warning):
        check_output(output_dir, sources, overwrite)  # what the last writer left
        safe_files.remove_leftovers(parent, [f".{name}.tmp-*"], logging.warning)
        for old in glob.glob(os.path.join(glob.escape(parent), f".{name}.old-*")):
            remove_dataset(old)
        work = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
        try:
            safe_files.private_to_umask(work)
            written = convert_into(work, sources, run_settings, bad)
            metadata.write(work, written)
            replace_directory(work, output_dir)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return written
