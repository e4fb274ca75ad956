"""Raw Criteo text -> TFRecord shards (block layout) + ``metadata.json``.

Usage::

  python -m input_pipeline.convert --data_set=kaggle --raw_data_file=train.txt \\
      --output_dir=data/kaggle [--max_ind_range=N] [--frequency_threshold=T] \\
      [--categorical=vocabulary|hash] \\
      [--data_randomize=total|day|none] [--data_sub_sample_rate=R] [--num_shards=N] \\
      [--bad_lines=error|skip] [--compression=none|gzip] [--overwrite]

Splits (the reference's): Kaggle's lines are cut, in file order, into 7 "days"
(the first ``total % 7`` get one extra line); days 0-5 train, day 6's first half
(``ceil(n / 2)`` lines) is ``test`` and its second half ``validation``. Terabyte:
every day file but the last trains; the last (``day_23``) is halved the same way.
Bad lines keep their place in this count, so skipping one never moves a boundary.

Categorical mode (``--categorical``): ``vocabulary`` (the default) builds one
vocabulary per feature from the training rows, so each table has the rows the data
needs. ``--max_ind_range=N`` first reduces every value ``% N`` (the reference's
``getCriteoAdData``: a table then has at most N value ids);
``--frequency_threshold=T`` gives values seen fewer than T times the
out-of-vocabulary id (default T = 1: every value seen gets its own contiguous id).
``hash`` (needs ``--max_ind_range=N``) is one pass without vocabularies,
``id = value % N``: every table has exactly N rows, for data whose vocabularies
cannot be counted first. ``criteo.py`` defines the ids.

``--data_sub_sample_rate=R`` drops that fraction of negative training rows
(seeded; test and validation are untouched). ``--data_randomize``: ``total``
shuffles training rows across days, ``day`` within each day, ``none`` keeps file
order; test and validation keep file order. Shuffling is a uniform random
permutation made in bounded memory: rows go to randomly chosen spill buckets on
disk (next to the output), each bucket is then loaded, permuted and written out
(a bucket that came out too large is split again the same way).

Passes: Kaggle first counts lines (byte scan); vocabulary mode adds a pass that
counts value frequencies; then the conversion pass. Parsing runs in a tf.data
parallel map over 4 MiB chunks of lines using the TensorFlow ops of
``criteo.py`` (the same ops as the serving signature), on every core.

Memory is bounded independently of the input size: a few 4 MiB text chunks and
their parsed arrays in flight, one pending block per split, up to 64 MiB of spill
buffers, and one shuffle bucket (<= 500k rows, ~80 MB, twice while permuting).
Measured peak RSS: ~1.1 GB for 1M and for 4M rows, of which ~0.6 GB is the
TensorFlow runtime. Vocabulary mode also holds the value counts: ~16 bytes per
distinct value, up to 3x while merging (``--max_ind_range`` caps them).

Output: ``{split}-{i:05d}-of-{n:05d}.tfrecord[.gz]`` shards; record ``k`` of a split
(a block of up to ``block_rows`` rows) goes to shard ``k % n``, so reading the
shards round-robin restores the row order. Each record is a ``tf.train.Example``
with ``num_rows`` (int64), ``label`` (bytes: uint8 per row), ``dense`` (bytes:
little-endian float32 ``[rows, 13]``) and ``ids`` (bytes: little-endian ``id_dtype``
``[rows, 26]``). Everything is written into a temporary directory next to
``output_dir`` and renamed into place once complete, so a failed or interrupted run
never leaves a complete-looking dataset; an existing non-empty ``output_dir`` is
refused unless ``overwrite`` (then replaced only after the new one is complete,
and only if it is a dataset of this converter: its ``metadata.json`` and exactly the
files it lists). One converter at a time writes an output (a lock file next to it);
a run removes the temporary directories interrupted runs left for the same output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import gzip
import json
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from input_pipeline.tf_startup import quiet_tensorflow

if __name__ == "__main__":  # the command: TensorFlow's start-up lines only on request
    quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from input_pipeline import criteo, errors, safe_files  # noqa: E402

FORMAT_VERSION = 1
SPLITS = ("train", "test", "validation")
DEFAULT_BLOCK_ROWS = 4096
DEFAULT_NUM_SHARDS = 8
KAGGLE_DAYS = 7
READ_CHUNK_BYTES = 1 << 22
MAX_LINE_BYTES = 1 << 20
SPILL_BUCKET_ROWS = 500_000
SPILL_BUFFER_BYTES = 64 << 20
MAX_BAD_LINE_EXAMPLES = 20
EXAMPLE_CHARS = 200  # of a skipped line kept in metadata.json
LONG_LINE_PLACEHOLDER = b"-"  # stands for a skipped too-long line (a bad line: 1 field)
PROGRESS_SECONDS = 5.0
TRAIN, TEST, VALIDATION = 0, 1, 2


class BadInputError(ValueError):
    """Malformed raw input; the message names the file (and line when known)."""


@dataclasses.dataclass
class Source:
    """One raw input file."""

    path: str
    size: int
    lines: int | None = None

    @property
    def gzipped(self) -> bool:
        return self.path.endswith(".gz")


# ---------------------------------------------------------------------------
# Input files and chunked reading.


def _day_number(path: str) -> int:
    match = re.search(r"(\d+)(?:\.[A-Za-z]+)*$", os.path.basename(path))
    return int(match.group(1)) if match else -1


def resolve_sources(data_set: str, raw_data_file: str | os.PathLike) -> list[Source]:
    """The raw files to read, in order.

    ``raw_data_file`` is a file, a directory (Kaggle: its ``train.txt[.gz]``;
    Terabyte: its ``day_N[.gz]`` files) or a glob. Terabyte files are ordered by
    their trailing day number, the last one being the test/validation day.
    """
    pattern = os.fspath(raw_data_file)
    if any(ch in pattern for ch in "*?["):
        paths = sorted(glob.glob(pattern))
        if not paths:
            raise FileNotFoundError(f"No raw data files match {pattern!r}")
    elif os.path.isdir(pattern):
        if data_set == "kaggle":
            paths = [
                os.path.join(pattern, name)
                for name in ("train.txt", "train.txt.gz")
                if os.path.isfile(os.path.join(pattern, name))
            ][:1]
        else:
            paths = [p for p in glob.glob(os.path.join(pattern, "day_*")) if os.path.isfile(p)]
        if not paths:
            raise FileNotFoundError(f"No raw Criteo {data_set} files found in directory {pattern}")
    elif os.path.isfile(pattern):
        paths = [pattern]
    else:
        raise _not_a_regular_file(pattern)
    if data_set == "terabyte":
        paths = sorted(paths, key=lambda p: (_day_number(p), p))
        if len(paths) < 2:
            raise BadInputError(
                f"Terabyte needs at least 2 day files (the last is test/validation), got {paths}"
            )
    return [Source(os.path.abspath(p), os.path.getsize(p)) for p in paths]


def _not_a_regular_file(path: str) -> Exception:
    """Why ``path`` cannot be read as a raw file (what is there, not just "not found")."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.lexists(path):
            return FileNotFoundError(
                f"`raw_data_file`={path}: a symlink to {os.readlink(path)!r}, which does not exist"
            )
        return FileNotFoundError(f"Raw data file not found: {path}")
    except OSError as error:  # ELOOP, EACCES, ...
        return BadInputError(f"`raw_data_file`={path}: cannot be opened: {error.strerror}")
    kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "not a regular file or directory"
    return BadInputError(
        f"`raw_data_file`={path} is {kind}; the converter reads its input more than once: "
        "give a regular file (e.g. copy the stream to a file first)"
    )


class _ReadPosition:
    """Bytes consumed so far in the file being read (for progress)."""

    def __init__(self) -> None:
        self.bytes = 0


def chunk_lines(chunk: bytes) -> int:
    """Lines in a chunk of ``iter_chunks`` (it never ends with the newline)."""
    return chunk.count(b"\n") + 1


def iter_chunks(
    path: str, position: _ReadPosition | None = None, long_lines: dict[int, bytes] | None = None
) -> Iterator[bytes]:
    """Yields the file's text in chunks of whole lines, without the final newline.

    ``\\r\\n`` endings become ``\\n``; a last line without newline is kept. Raises
    ``BadInputError`` for a truncated or corrupt gzip stream, an I/O error, or a
    line longer than 1 MiB unless ``long_lines`` is given: then such a line is
    read past, yielded as ``LONG_LINE_PLACEHOLDER`` (it keeps its place in the count) and
    its number -> first bytes recorded in ``long_lines``.
    """
    with open(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
        rest = b""
        lines_before = 0
        skipping = False  # inside a too-long line
        while True:
            block = _read_block(path, stream, lines_before)
            if position is not None:
                position.bytes = raw.tell()
            if skipping:
                cut = block.find(b"\n")
                if cut < 0 and block:
                    continue
                skipping = False
                lines_before += 1
                yield LONG_LINE_PLACEHOLDER
                block = block[cut + 1 :] if cut >= 0 else b""
                if not block:
                    continue
            if not block:
                if rest:
                    if rest.endswith(b"\r"):
                        rest = rest[:-1]
                    yield _cut_long_lines(path, rest, lines_before + 1, long_lines)
                return
            data = rest + block
            end = data.rfind(b"\n")
            if end < 0:
                if len(data) > MAX_LINE_BYTES:
                    if long_lines is None:
                        raise BadInputError(
                            f"{path}:{lines_before + 1}: line longer than {MAX_LINE_BYTES} bytes"
                            " (`bad_lines`=skip skips such lines)"
                        )
                    long_lines[lines_before + 1] = data[:EXAMPLE_CHARS]
                    rest, skipping = b"", True
                    continue
                rest = data
                continue
            chunk, rest = data[:end], data[end + 1 :]
            chunk = _cut_long_lines(path, chunk, lines_before + 1, long_lines)
            if b"\r" in chunk or chunk.endswith(b"\r"):
                chunk = (chunk + b"\n").replace(b"\r\n", b"\n")[:-1]
            lines_before += chunk_lines(chunk)
            yield chunk


def _cut_long_lines(
    path: str, chunk: bytes, first_line: int, long_lines: dict[int, bytes] | None
) -> bytes:
    """``chunk`` with each line longer than ``MAX_LINE_BYTES`` replaced by
    ``LONG_LINE_PLACEHOLDER`` and recorded (or, without ``long_lines``, an error)."""
    # A line longer than MAX_LINE_BYTES covers a whole aligned window of half that
    # size without a newline: if every window has one, there is none (a few finds).
    half = MAX_LINE_BYTES // 2
    if all(chunk.find(b"\n", k, k + half) >= 0 for k in range(0, len(chunk) - half + 1, half)):
        return chunk
    ends = np.flatnonzero(np.frombuffer(chunk, np.uint8) == ord("\n"))
    starts = np.concatenate([[0], ends + 1])
    stops = np.concatenate([ends, [len(chunk)]])
    long = np.flatnonzero(stops - starts > MAX_LINE_BYTES)
    if not len(long):
        return chunk
    if long_lines is None:
        raise BadInputError(
            f"{path}:{first_line + int(long[0])}: line longer than {MAX_LINE_BYTES} bytes"
            " (`bad_lines`=skip skips such lines)"
        )
    pieces, position = [], 0
    for index in long.tolist():
        start, stop = int(starts[index]), int(stops[index])
        long_lines[first_line + index] = chunk[start : start + EXAMPLE_CHARS]
        pieces += [chunk[position:start], LONG_LINE_PLACEHOLDER]
        position = stop
    pieces.append(chunk[position:])
    return b"".join(pieces)


def _read_block(path: str, stream: Any, lines_before: int) -> bytes:
    """The next block of the (decompressed) file; a failure says what happened."""
    try:
        return stream.read(READ_CHUNK_BYTES)
    except OSError as error:
        if error.errno is None:  # gzip's own errors (BadGzipFile) carry no errno
            raise BadInputError(
                f"{path}: truncated or corrupt gzip stream after line {lines_before} ({error})"
            ) from error
        raise BadInputError(
            f"{path}: I/O error reading after line {lines_before} ({error.strerror}); "
            "check the disk or copy the file elsewhere"
        ) from error
    except (EOFError, zlib.error) as error:
        raise BadInputError(
            f"{path}: truncated or corrupt gzip stream after line {lines_before} ({error})"
        ) from error


def count_source_lines(
    source: Source, progress: _Progress | None = None, skip_long_lines: bool = False
) -> int:
    """Counts the lines the chunk reader yields for a file."""
    lines = 0
    position = progress.position if progress is not None else None
    long_lines = {} if skip_long_lines else None
    for chunk in iter_chunks(source.path, position, long_lines):
        count = chunk_lines(chunk)
        lines += count
        if progress is not None:
            progress.update(count)
    return lines


# ---------------------------------------------------------------------------
# Progress.


class _Progress:
    """Logs rows/s and an ETA every few seconds (absl logging, stderr)."""

    def __init__(self, label: str, total_lines: int | None, total_bytes: int) -> None:
        self.label = label
        self.total_lines = total_lines
        self.total_bytes = max(total_bytes, 1)
        self.lines = 0
        self.bytes_done = 0  # bytes of finished files
        self.position = _ReadPosition()
        self.start = time.perf_counter()
        self.last = self.start

    def update(self, lines: int) -> None:
        self.lines += lines
        now = time.perf_counter()
        if now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        elapsed = now - self.start
        if self.total_lines:
            fraction = self.lines / self.total_lines
        else:
            fraction = (self.bytes_done + self.position.bytes) / self.total_bytes
        fraction = min(max(fraction, 1e-9), 1.0)
        eta = elapsed * (1 - fraction) / fraction
        logging.info(
            "%s: %s lines (%.1f%%), %s rows/s, ETA %s",
            self.label,
            f"{self.lines:,}",
            100 * fraction,
            f"{self.lines / elapsed:,.0f}",
            time.strftime("%H:%M:%S", time.gmtime(eta)),
        )

    def file_done(self, size: int) -> None:
        self.bytes_done += size
        self.position.bytes = 0

    def summary(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.lines / max(elapsed, 1e-9)
        return f"{self.label}: {self.lines:,} lines in {elapsed:.1f} s ({rate:,.0f} rows/s)"


# ---------------------------------------------------------------------------
# Parsing with the TensorFlow rules of criteo.py.


def _parsed_chunks(
    path: str,
    preprocessor: criteo.RawPreprocessor,
    raw_values: bool,
    position: _ReadPosition,
    long_lines: dict[int, bytes] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields each chunk of the file parsed: see ``RawPreprocessor.parse_lines``,
    plus ``bad_text`` (the rejected lines)."""
    failure: list[BaseException] = []

    def generate() -> Iterator[bytes]:
        try:
            yield from iter_chunks(path, position, long_lines)
        except BaseException as error:  # re-raised below with its own message
            failure.append(error)
            raise

    def parse(chunk: tf.Tensor) -> dict[str, tf.Tensor]:
        return preprocessor.parse_lines(tf.strings.split(chunk, "\n"), raw_values=raw_values)

    dataset = tf.data.Dataset.from_generator(
        generate, output_signature=tf.TensorSpec([], tf.string)
    )
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.prefetch(2)
    try:
        yield from dataset.as_numpy_iterator()
    except tf.errors.OpError:
        if failure:
            raise failure[0] from None
        raise


class BadLines:
    """Applies the ``bad_lines`` policy and keeps the count."""

    def __init__(self, policy: str) -> None:
        if policy not in ("error", "skip"):
            raise ValueError(f"bad_lines must be 'error' or 'skip', got {policy!r}")
        self.policy = policy
        self.skipped = 0
        self.examples: list[dict[str, Any]] = []
        self._long_lines: dict[str, dict[int, bytes]] = {}

    def long_lines_in(self, path: str) -> dict[int, bytes] | None:
        """Where the reader records the too-long lines of ``path`` it skips (skip mode)."""
        return self._long_lines.setdefault(path, {}) if self.policy == "skip" else None

    def handle(self, path: str, first_line: int, parsed: dict[str, np.ndarray]) -> None:
        """``first_line``: 1-based number of the chunk's first line in its file."""
        long_lines = self._long_lines.get(path, {})
        for k, index in enumerate(parsed["bad_index"].tolist()):
            line = first_line + index
            if line in long_lines:
                text = long_lines.pop(line).decode("utf-8", "replace")
                reason = f"line longer than {MAX_LINE_BYTES} bytes"
            else:
                text = parsed["bad_text"][k].decode("utf-8", "replace")
                reason = criteo.explain_bad_line(
                    int(parsed["bad_num_fields"][k]), parsed["bad_field_ok"][k].tolist(), text
                )
            if self.policy == "error":
                raise BadInputError(f"{path}:{line}: {reason}")
            self.skipped += 1
            if len(self.examples) < MAX_BAD_LINE_EXAMPLES:
                self.examples.append(
                    {"file": path, "line": line, "reason": reason, "text": text[:EXAMPLE_CHARS]}
                )


# ---------------------------------------------------------------------------
# Splits.


def kaggle_day_sizes(total_lines: int, days: int = KAGGLE_DAYS) -> list[int]:
    """Lines per Kaggle "day": equal parts, the first ``total % days`` one longer."""
    base, extra = divmod(total_lines, days)
    return [base + (1 if d < extra else 0) for d in range(days)]


@dataclasses.dataclass
class _SplitPlan:
    """Where each line goes: (day, split) as a function of its global line index."""

    data_set: str
    day_starts: np.ndarray  # global index of each day's first line (Kaggle)
    eval_start: int  # global index of the first test line (Kaggle)
    test_end: int  # global index of the first validation line

    num_sources: int

    def assign(self, source_index: int, global_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Day and split of lines given their global indices (Kaggle: across all
        files; Terabyte: within their file)."""
        evaluation = np.where(global_index < self.test_end, TEST, VALIDATION)
        if self.data_set == "kaggle":
            day = np.searchsorted(self.day_starts, global_index, side="right") - 1
            return day, np.where(global_index < self.eval_start, TRAIN, evaluation)
        day = np.full(global_index.shape, source_index)
        if source_index < self.num_sources - 1:
            return day, np.full(global_index.shape, TRAIN)
        return day, evaluation


def _plan_splits(data_set: str, sources: list[Source]) -> _SplitPlan:
    if data_set == "kaggle":
        total = sum(s.lines or 0 for s in sources)
        sizes = kaggle_day_sizes(total)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        eval_start = int(starts[-1])
        eval_lines = sizes[-1]
    else:
        # Global indices restart per file for Terabyte: only the last file is split.
        starts = np.zeros(len(sources), np.int64)
        eval_start = 0
        eval_lines = sources[-1].lines or 0
    test_end = eval_start + (eval_lines + 1) // 2
    return _SplitPlan(data_set, starts, eval_start, test_end, len(sources))


# ---------------------------------------------------------------------------
# Output: block records, shards, shuffle spill.


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _header(tag: int, length: int) -> bytes:
    """The tag and length of a length-delimited protobuf field (wire type 2)."""
    return bytes([(tag << 3) | 2]) + _varint(length)


def _bytes_feature(key: bytes, value: bytes) -> list[bytes]:
    """Pieces of one ``Features.feature`` map entry holding a ``BytesList`` of one value."""
    inner = _header(1, len(value))  # BytesList.value
    feature_len = len(inner) + len(value)
    feature = _header(1, feature_len)  # Feature.bytes_list
    key_field = _header(1, len(key)) + key  # entry key
    value_field = _header(2, len(feature) + feature_len)  # entry value
    entry_len = len(key_field) + len(value_field) + len(feature) + feature_len
    return [_header(1, entry_len), key_field, value_field, feature, inner, value]


def _int64_feature(key: bytes, value: int) -> list[bytes]:
    """Pieces of one ``Features.feature`` map entry holding an ``Int64List`` of one value."""
    packed = _varint(value)
    int64_list = _header(1, len(packed)) + packed  # Int64List.value (packed)
    feature = _header(3, len(int64_list)) + int64_list  # Feature.int64_list
    entry = _header(1, len(key)) + key + _header(2, len(feature)) + feature
    return [_header(1, len(entry)), entry]


def serialize_block(label: np.ndarray, dense: np.ndarray, ids: np.ndarray, id_dtype: str) -> bytes:
    """One block record: ``n`` rows column-wise in a serialized ``tf.train.Example``.

    The protobuf bytes are assembled directly, headers first, and joined once
    (Feature.bytes_list = 1, Feature.int64_list = 3): building the message objects,
    or nesting the fields one copy at a time, copied every column several times.
    """
    pieces = _int64_feature(b"num_rows", len(label))
    pieces += _bytes_feature(b"label", np.ascontiguousarray(label, np.uint8).tobytes())
    pieces += _bytes_feature(b"dense", np.ascontiguousarray(dense, "<f4").tobytes())
    pieces += _bytes_feature(b"ids", np.ascontiguousarray(ids, _np_id_dtype(id_dtype)).tobytes())
    features_len = sum(len(p) for p in pieces)
    return b"".join([_header(1, features_len), *pieces])  # Example.features


def _np_id_dtype(id_dtype: str) -> str:
    return {"int32": "<i4", "int64": "<i8"}[id_dtype]


def shard_name(split: str, index: int, count: int, compression: str) -> str:
    """``train-00000-of-00008.tfrecord`` (``.tfrecord.gz`` with gzip)."""
    suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
    return f"{split}-{index:05d}-of-{count:05d}{suffix}"


class _SplitWriter:
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
                serialize_block(
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


def _record_dtype(id_dtype: str) -> np.dtype:
    return np.dtype(
        [
            ("label", "u1"),
            ("dense", "<f4", (criteo.NUM_DENSE,)),
            ("ids", _np_id_dtype(id_dtype), (criteo.NUM_SPARSE,)),
        ]
    )


class _ShuffleSpill:
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
            self.buffers.setdefault(key, []).append(records[piece])
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

    def shuffled(self) -> Iterator[np.ndarray]:
        """Yields every group's rows, permuted, group by group (files are removed)."""
        self.flush()
        for group in sorted(self.num_buckets):
            for bucket in range(self.num_buckets[group]):
                yield from self._drain(self._path(group, bucket), (group, bucket, 0))

    def _drain(self, path: str, key: tuple[int, ...]) -> Iterator[np.ndarray]:
        if not os.path.exists(path):
            return
        rows = os.path.getsize(path) // self.dtype.itemsize
        if rows <= 2 * self.bucket_rows:
            records = np.fromfile(path, dtype=self.dtype)
            os.remove(path)
            yield records[np.random.default_rng([self.seed, 3, *key]).permutation(len(records))]
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
                        records[target == k].tofile(out)
        os.remove(path)
        for k, part_path in enumerate(part_paths):
            yield from self._drain(part_path, (*key, k))


# ---------------------------------------------------------------------------
# Vocabulary counting.


class _ValueCounter:
    """Exact value frequencies per feature, merged in amortised batches."""

    def __init__(self) -> None:
        self.merged = [(np.zeros(0, np.int64), np.zeros(0, np.int64))] * criteo.NUM_SPARSE
        self.pending: list[list[tuple[np.ndarray, np.ndarray]]] = [
            [] for _ in range(criteo.NUM_SPARSE)
        ]
        self.pending_size = [0] * criteo.NUM_SPARSE

    def add(self, values: np.ndarray, present: np.ndarray) -> None:
        for f in range(criteo.NUM_SPARSE):
            unique, counts = np.unique(values[present[:, f], f], return_counts=True)
            self.pending[f].append((unique, counts.astype(np.int64)))
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


def _write_vocabularies(directory: str, counter: _ValueCounter, threshold: int) -> list[str]:
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


# ---------------------------------------------------------------------------
# The conversion.


@dataclasses.dataclass
class _Settings:
    data_set: str
    categorical: str  # "hash" or "vocabulary"
    max_ind_range: int
    frequency_threshold: int
    data_randomize: str
    data_sub_sample_rate: float
    num_shards: int
    compression: str
    block_rows: int
    seed: int


def _iterate_rows(
    sources: list[Source],
    preprocessor: criteo.RawPreprocessor,
    plan: _SplitPlan,
    settings: _Settings,
    bad_lines: BadLines,
    progress: _Progress,
    raw_values: bool,
) -> Iterator[tuple[int, np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """Yields ``(source_index, day, split, parsed)`` per chunk: the kept rows only
    (bad lines and sub-sampled negatives removed), in file order."""
    global_base = 0
    for source_index, source in enumerate(sources):
        line_base = 0
        chunks = _parsed_chunks(
            source.path,
            preprocessor,
            raw_values,
            progress.position,
            bad_lines.long_lines_in(source.path),
        )
        for chunk_index, parsed in enumerate(chunks):
            n = len(parsed["ok"])
            if len(parsed["bad_index"]):
                bad_lines.handle(source.path, line_base + 1, parsed)
            global_index = np.arange(global_base + line_base, global_base + line_base + n)
            day, split = plan.assign(source_index, global_index)
            keep = parsed["ok"]
            if settings.data_sub_sample_rate > 0:
                draw = np.random.default_rng([settings.seed, 1, source_index, chunk_index]).random(
                    n
                )
                negative = parsed["label"] == 0
                keep = keep & ~(
                    (split == TRAIN) & negative & (draw < settings.data_sub_sample_rate)
                )
            line_base += n
            progress.update(n)
            if not keep.all():
                parsed = {k: parsed[k][keep] for k in ("label", "dense", "ids")}
                day, split = day[keep], split[keep]
            yield source_index, day, split, parsed
        if line_base == 0:
            raise BadInputError(f"{source.path}: empty file (no lines)")
        if source.lines is not None and source.lines != line_base:
            raise BadInputError(
                f"{source.path}: read {line_base} lines but counted {source.lines}; "
                "did the file change during conversion?"
            )
        source.lines = line_base
        progress.file_done(source.size)
        if settings.data_set == "kaggle":
            global_base += line_base


def _convert_into(
    directory: str, sources: list[Source], settings: _Settings, bad_lines: BadLines
) -> dict[str, Any]:
    total_bytes = sum(s.size for s in sources)
    # Pass 1: line counts where the split needs them.
    to_count = sources if settings.data_set == "kaggle" else sources[-1:]
    progress = _Progress("counting lines", None, sum(s.size for s in to_count))
    for source in to_count:
        source.lines = count_source_lines(source, progress, bad_lines.policy == "skip")
        if source.lines == 0:
            raise BadInputError(f"{source.path}: empty file (no lines)")
        progress.file_done(source.size)
    logging.info(progress.summary())
    plan = _plan_splits(settings.data_set, sources)
    known_lines = sum(s.lines for s in sources) if settings.data_set == "kaggle" else None

    vocabulary_files: list[str] | None = None
    if settings.categorical == "vocabulary":
        # Pass 2: value frequencies over the training rows.
        counter = _ValueCounter()
        counting = criteo.RawPreprocessor.for_raw_values(settings.max_ind_range)
        progress = _Progress("counting values", known_lines, total_bytes)
        # Same policy (fail early), but only the conversion pass's skips are counted.
        first_pass_bad_lines = BadLines(bad_lines.policy)
        for _, _, split, parsed in _iterate_rows(
            sources, counting, plan, settings, first_pass_bad_lines, progress, raw_values=True
        ):
            train = split == TRAIN
            values = parsed["ids"][train]
            counter.add(values, values >= 0)  # -1: empty field, which has its own id
        logging.info(progress.summary())
        vocabulary_files = _write_vocabularies(directory, counter, settings.frequency_threshold)
        del counter
        preprocessor = criteo.RawPreprocessor(
            max_ind_range=settings.max_ind_range,
            vocabulary_files=[os.path.join(directory, p) for p in vocabulary_files],
        )
    else:
        preprocessor = criteo.RawPreprocessor(max_ind_range=settings.max_ind_range)
    table_sizes = list(preprocessor.table_sizes)
    id_dtype = "int32" if max(table_sizes) < 2**31 else "int64"
    record_dtype = _record_dtype(id_dtype)

    writers = {
        split: _SplitWriter(
            directory,
            split,
            settings.num_shards,
            settings.block_rows,
            id_dtype,
            settings.compression,
        )
        for split in SPLITS
    }
    spill = None
    if settings.data_randomize != "none":
        spill = _ShuffleSpill(
            os.path.join(directory, "_spill"), record_dtype, SPILL_BUCKET_ROWS, settings.seed
        )
        if settings.data_set == "kaggle":
            train_days = kaggle_day_sizes(known_lines)[:-1]
        else:
            # No line counts for Terabyte's training days: estimate from file sizes
            # (~200 bytes a line, gzip ~4x); oversized buckets are split later.
            train_days = [s.size * (4 if s.gzipped else 1) // 200 for s in sources[:-1]]
        if settings.data_randomize == "total":
            spill.start_group(0, sum(train_days))
        else:
            for day, rows in enumerate(train_days):
                spill.start_group(day, rows)

    # Pass 3: convert.
    progress = _Progress("converting", known_lines, total_bytes)
    for _, day, split, parsed in _iterate_rows(
        sources, preprocessor, plan, settings, bad_lines, progress, raw_values=False
    ):
        label = parsed["label"].astype(np.uint8)
        ids = parsed["ids"].astype(_np_id_dtype(id_dtype))
        dense = parsed["dense"]
        for code, name in ((TEST, "test"), (VALIDATION, "validation")):
            rows = split == code
            if rows.any():
                writers[name].add(label[rows], dense[rows], ids[rows])
        train = split == TRAIN
        if not train.any():
            continue
        if spill is None:
            if train.all():
                writers["train"].add(label, dense, ids)
            else:
                writers["train"].add(label[train], dense[train], ids[train])
            continue
        records = np.empty(int(train.sum()), record_dtype)
        records["label"], records["dense"], records["ids"] = label[train], dense[train], ids[train]
        groups = (
            np.zeros(len(records), np.int64) if settings.data_randomize == "total" else day[train]
        )
        for group in np.unique(groups).tolist():
            spill.add(group, records if groups[0] == groups[-1] else records[groups == group])
    logging.info(progress.summary())
    if spill is not None:
        for records in spill.shuffled():
            writers["train"].add(records["label"], records["dense"], records["ids"])
        shutil.rmtree(spill.directory, ignore_errors=True)

    shards = {split: writers[split].close() for split in SPLITS}
    return {
        "format_version": FORMAT_VERSION,
        "data_set": settings.data_set,
        "num_dense": criteo.NUM_DENSE,
        "num_sparse": criteo.NUM_SPARSE,
        "table_sizes": table_sizes,
        "rows": {split: sum(s["rows"] for s in shards[split]) for split in SPLITS},
        "preprocessing": {
            "categorical": settings.categorical,
            "max_ind_range": settings.max_ind_range,
            "frequency_threshold": settings.frequency_threshold,
            "dense": "log(max(x, 0) + 1) as float32; empty -> 0",
            "vocabulary_ids": (
                f"{criteo.OOV_ID} = out of vocabulary, {criteo.MISSING_ID} = missing, "
                f"{criteo.FIRST_VOCABULARY_ID} + k = value on line k of the vocabulary file"
                if settings.categorical == "vocabulary"
                else None
            ),
            "data_randomize": settings.data_randomize,
            "data_sub_sample_rate": settings.data_sub_sample_rate,
            "seed": settings.seed,
            "splits": (
                "kaggle: 7 days in file order; days 0-5 train; day 6: first half test, "
                "second half validation"
                if settings.data_set == "kaggle"
                else "terabyte: every day file but the last trains; the last: first half test, "
                "second half validation"
            ),
        },
        "vocabulary_files": vocabulary_files,
        "sources": [{"path": s.path, "bytes": s.size, "lines": s.lines} for s in sources],
        "bad_lines": {
            "policy": bad_lines.policy,
            "skipped": bad_lines.skipped,
            "examples": bad_lines.examples,
        },
        "block_rows": settings.block_rows,
        "record_format": {
            "features": {
                "num_rows": "int64",
                "label": "bytes: uint8 [num_rows]",
                "dense": "bytes: little-endian float32 [num_rows, 13]",
                "ids": f"bytes: little-endian {id_dtype} [num_rows, 26]",
            },
            "id_dtype": id_dtype,
            "shard_assignment": "record k of a split is in shard k % num_shards",
        },
        "compression": settings.compression,
        "num_shards": settings.num_shards,
        "shards": shards,
    }


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
    settings = _Settings(
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
    bad = BadLines(bad_lines)
    output_dir = os.path.abspath(os.fspath(output_dir))
    sources = resolve_sources(data_set, raw_data_file)
    _check_output(output_dir, sources, overwrite)
    parent, name = os.path.split(output_dir)
    os.makedirs(parent, exist_ok=True)
    with safe_files.exclusive(output_dir, f"`output_dir`={output_dir}", logging.warning):
        _check_output(output_dir, sources, overwrite)  # what the last writer left
        safe_files.remove_leftovers(parent, [f".{name}.tmp-*"], logging.warning)
        for old in glob.glob(os.path.join(glob.escape(parent), f".{name}.old-*")):
            _remove_dataset(old)
        work = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
        try:
            safe_files.private_to_umask(work)
            metadata = _convert_into(work, sources, settings, bad)
            with open(os.path.join(work, "metadata.json"), "w", encoding="utf-8") as f:
                json.dump(metadata, f, indent=2)
                f.write("\n")
            _replace_directory(work, output_dir)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    logging.info("Wrote %s: %s", output_dir, metadata["rows"])
    return {**metadata, "data_dir": output_dir}


def _check_categorical(categorical: str, max_ind_range: int, frequency_threshold: int) -> None:
    """Refuses a categorical mode its other flags contradict."""
    if categorical not in ("vocabulary", "hash"):
        raise ValueError(f"--categorical={categorical!r}: must be vocabulary or hash")
    if categorical == "hash" and max_ind_range <= 0:
        raise ValueError(
            f"--categorical=hash needs --max_ind_range=N > 0 (ids are value % N), got "
            f"--max_ind_range={max_ind_range}: give one, or drop --categorical=hash"
        )
    if categorical == "hash" and frequency_threshold > 0:
        raise ValueError(
            f"--frequency_threshold={frequency_threshold} applies to vocabularies, not to "
            "--categorical=hash: drop one of the two"
        )


def dataset_files(data_dir: str) -> list[str]:
    """The files a converted dataset consists of (relative), from its metadata.

    Raises:
      ValueError: ``data_dir`` holds no readable ``metadata.json`` of this converter,
        or it lists a path outside ``data_dir``.
    """
    path = os.path.join(data_dir, "metadata.json")
    if not os.path.isfile(path):
        raise ValueError("no metadata.json")
    try:
        with open(path, encoding="utf-8") as f:
            metadata = json.load(f)
        shards = [s["file"] for split in metadata["shards"].values() for s in split]
        listed = ["metadata.json", *shards, *(metadata.get("vocabulary_files") or [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"a metadata.json this converter did not write ({error})") from None
    for relative in listed:
        safe_files.confined(data_dir, relative, f"{path}: file")
    return [os.path.normpath(p) for p in listed]


def _check_output(output_dir: str, sources: list[Source], overwrite: bool) -> None:
    """Refuses an output that would destroy the input or something not ours."""
    for source in sources:
        if safe_files.contains(output_dir, source.path):
            raise BadInputError(
                f"`output_dir`={output_dir} contains the raw input {source.path}; the output "
                "directory is replaced as a whole: choose an `output_dir` outside the input"
            )
    if not os.path.lexists(output_dir):
        return
    if os.path.islink(output_dir) or not os.path.isdir(output_dir):
        raise safe_files.NotOursError(
            f"`output_dir`={output_dir} exists and is not a directory; refusing to replace "
            "it (with or without `overwrite`): remove it yourself or choose another `output_dir`"
        )
    if not os.listdir(output_dir):
        return
    try:
        foreign = safe_files.unexpected_entries(output_dir, dataset_files(output_dir))
        reason = f"it also holds {safe_files.describe(foreign)}" if foreign else ""
    except ValueError as error:
        held = safe_files.describe(sorted(os.listdir(output_dir)))
        reason = f"it holds {held} and {error}"
    if reason:
        raise safe_files.NotOursError(
            f"`output_dir`={output_dir} is not a dataset written by this converter ({reason}); "
            "refusing to replace it (with or without `overwrite`): choose another `output_dir`"
        )
    if not overwrite:
        raise FileExistsError(
            f"Output directory {output_dir} already holds a converted dataset; "
            "pass overwrite=True (`overwrite`) to replace it"
        )


def _remove_dataset(path: str) -> None:
    """Deletes a converted dataset's listed files and then its empty directories;
    anything else in it stays (and is reported)."""
    try:
        listed = dataset_files(path)
    except ValueError:
        listed = []
    for relative in listed:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(path, relative))
    shutil.rmtree(os.path.join(path, "_spill"), ignore_errors=True)
    for root, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            os.rmdir(root)
    if os.path.exists(path):
        logging.warning("kept %s: it holds files this converter did not write", path)
    elif listed:
        logging.info("removed the replaced dataset %s", path)


def _replace_directory(source: str, target: str) -> None:
    """Publishes the finished ``source`` as ``target`` (fsynced first); an existing
    dataset there (checked to be ours) is moved aside and its files removed."""
    old = None
    if os.path.isdir(target) and os.listdir(target):
        old = tempfile.mkdtemp(
            prefix=f".{os.path.basename(target)}.old-", dir=os.path.dirname(target)
        )
        os.rmdir(old)
        os.rename(target, old)
    try:
        safe_files.publish(source, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        _remove_dataset(old)


# ---------------------------------------------------------------------------
# CLI.

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


if __name__ == "__main__":
    run()
