"""Chunk parsing: ``criteo.py``'s rules over a whole chunk of well-formed lines at once.

A chunk whose lines all have 40 fields and valid values is parsed here, by the
C++ kernel (``line_kernel``) or, where it cannot be built, column by column over
the raw bytes in NumPy; any other chunk returns None and goes through the
TensorFlow rules (``RawPreprocessor.parse_lines``), which explain bad lines.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from input_pipeline import criteo
from input_pipeline.convert import line_kernel

_TAB, _NEWLINE, _MINUS, _ZERO = 9, 10, ord("-"), ord("0")
_PAD = 32  # bytes after the chunk, so fixed-width reads past a field stay in bounds
# Rows parsed per NumPy pass: the temporaries of a block stay in cache and are
# reused, instead of faulting in fresh pages for a whole 4 MB chunk (1.4x faster).
_ROWS_PER_BLOCK = 8192

_U64_HIGH = np.uint64(0x8080808080808080)
_U64_ONES = 0x0101010101010101
_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_LOWER_CASE = np.uint64(0x2020202020202020)
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], np.uint64)
_PREFIX_MASKS = np.array([sum(0x80 << (8 * i) for i in range(k)) for k in range(9)], np.uint64)


def _bytes_at_least(words: np.ndarray, threshold: int) -> np.ndarray:
    """Per byte of 7-bit ASCII words: high bit set where the byte is >= threshold."""
    return ((words | _U64_HIGH) - np.uint64(_U64_ONES * threshold)) & _U64_HIGH


def _bytes_in(words: np.ndarray, low: int, high: int) -> np.ndarray:
    """Per byte of 7-bit ASCII words: high bit set where ``low <= byte < high``."""
    return _bytes_at_least(words, low) & ~_bytes_at_least(words, high)


def _prefix_all(words: np.ndarray, marked: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Whether each word is ASCII and its first ``length`` bytes are all ``marked``."""
    wanted = _PREFIX_MASKS[length]
    return ((words & _U64_HIGH) == 0) & ((marked & wanted) == wanted)


def hex_words(words: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Up to 8 hex characters per little-endian uint64 word (``length`` of them,
    zero bytes after) -> (their value as the top of a 32-bit int64, ok)."""
    hex_digit = _bytes_in(words, 0x30, 0x3A) | _bytes_in(words | _LOWER_CASE, 0x61, 0x67)
    ok = _prefix_all(words, hex_digit, length)
    nibbles = (words & _LOW_NIBBLES) + ((words >> np.uint64(6)) & np.uint64(_U64_ONES)) * np.uint64(
        9
    )
    pairs = ((nibbles << np.uint64(4)) | (nibbles >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    quads = ((pairs << np.uint64(8)) | (pairs >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    packed = ((quads << np.uint64(16)) | (quads >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
    return packed.astype(np.int64), ok


def _words_at(padded: np.ndarray) -> np.ndarray:
    """An unaligned view: element ``i`` is the little-endian uint64 at byte ``i``."""
    return np.ndarray((len(padded) - 7,), "<u8", buffer=padded, strides=(1,))


def parse_hex_fields(
    padded: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``int(value, 16)`` of the fields at ``starts`` (``lengths`` bytes each, at
    most 15) in ``padded``; empty -> 0. Returns ``(int64 values, ok)``."""
    words = _words_at(padded)
    first_length = np.minimum(lengths, 8)
    second_length = np.clip(lengths - 8, 0, 8)
    first, first_ok = hex_words(words[starts] & _BYTE_MASKS[first_length], first_length)
    value = first >> (4 * (8 - first_length))
    long = lengths > 8
    if long.any():
        rest = starts[long] + 8
        n = lengths[long]
        second, second_ok = hex_words(
            words[rest] & _BYTE_MASKS[second_length[long]], second_length[long]
        )
        value[long] = (first[long] << (4 * (n - 8))) + (second >> (4 * (16 - n)))
        first_ok[long] &= second_ok
    return np.where(first_ok, value, 0), first_ok


def parse_count_fields(
    padded: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Integer counts ``-?[0-9]{1,18}`` (or empty: 0) at ``starts`` in ``padded``
    -> ``(int64 counts clipped at 0, ok)``."""
    negative = (lengths > 0) & (padded[starts] == _MINUS)
    first = starts + negative
    digits = lengths - negative
    ok = (digits <= criteo.MAX_COUNT_DIGITS) & ((lengths == 0) | (digits > 0))
    short = np.minimum(digits, 8)
    words = _words_at(padded)[first] & _BYTE_MASKS[short]
    ok &= _prefix_all(words, _bytes_in(words, 0x30, 0x3A), short)
    value = _eight_digits(words, short)
    long = digits > 8
    if long.any():
        value[long], long_ok = _long_counts(padded, first[long], digits[long])
        ok[long] &= long_ok
    return np.where(negative | ~ok, 0, value), ok


def _eight_digits(words: np.ndarray, length: np.ndarray) -> np.ndarray:
    """The decimal value of the first ``length`` (<= 8) digits of each word."""
    digits = (words - np.uint64(_U64_ONES * _ZERO)) & _BYTE_MASKS[length]
    # Right-aligned, the missing leading digits are zero bytes; then pairs, quads
    # and the eight digits combine by multiplication (first character most significant).
    digits <<= np.uint64(8) * (np.uint64(8) - np.maximum(length, 1).astype(np.uint64))
    digits = (digits * np.uint64(10 * 256 + 1)) >> np.uint64(8)
    digits = ((digits & np.uint64(0x00FF00FF00FF00FF)) * np.uint64(100 * 65536 + 1)) >> np.uint64(
        16
    )
    digits = ((digits & np.uint64(0x0000FFFF0000FFFF)) * np.uint64(10000 * (1 << 32) + 1)) >> (
        np.uint64(32)
    )
    return digits.astype(np.int64)


def _long_counts(
    padded: np.ndarray, first: np.ndarray, digits: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of more than 8 digits, one digit position at a time (rare)."""
    ok = np.ones(first.shape, bool)
    value = np.zeros(first.shape, np.int64)
    for k in range(min(int(digits.max()), criteo.MAX_COUNT_DIGITS)):
        active = k < digits
        digit = padded[first + k] - np.uint8(_ZERO)  # wraps: a non-digit is > 9
        ok &= ~active | (digit <= 9)
        value = np.where(active, value * 10 + digit, value)
    return value, ok


def in_row_blocks(
    parse: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    padded: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``parse(padded, starts, lengths)`` over blocks of ``_ROWS_PER_BLOCK`` rows."""
    if len(starts) <= _ROWS_PER_BLOCK:
        return parse(padded, starts, lengths)
    blocks = [
        parse(padded, starts[row : row + _ROWS_PER_BLOCK], lengths[row : row + _ROWS_PER_BLOCK])
        for row in range(0, len(starts), _ROWS_PER_BLOCK)
    ]
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


def field_bounds(chunk: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(padded bytes, starts [L, 40], lengths [L, 40])`` of a chunk of lines
    (no final newline), or None unless every line has exactly 40 fields."""
    padded = np.frombuffer(chunk + bytes(_PAD), np.uint8)
    # One comparison finds tabs, newlines and other control bytes; the check
    # below rejects a chunk where such a byte is not a tab or newline.
    ends = np.flatnonzero(padded[: len(chunk)] <= _NEWLINE)
    ends = np.append(ends, len(chunk))
    if len(ends) % criteo.NUM_FIELDS:
        return None
    ends = ends.reshape(-1, criteo.NUM_FIELDS)
    separators = padded[ends]
    # Each line's last separator (the chunk's end for the last line) is its only newline.
    if not (separators[:, :-1] == _TAB).all() or not (separators[:-1, -1] == _NEWLINE).all():
        return None
    starts = np.empty_like(ends)
    flat_starts = starts.reshape(-1)
    flat_starts[0] = 0
    flat_starts[1:] = ends.reshape(-1)[:-1] + 1
    return padded, starts, ends - starts


# Counts below this take their dense feature from a table made once by the
# TensorFlow op: most counts are small, and the op costs ~20 ns a value.
_TABLED_COUNTS = 1 << 16


@functools.cache
def _dense_table() -> np.ndarray:
    return criteo.dense_from_counts(np.arange(_TABLED_COUNTS, dtype=np.int64)).numpy()


def dense_features(counts: np.ndarray) -> np.ndarray:
    """``criteo.dense_from_counts`` of non-negative int64 counts, bit for bit: the
    TensorFlow op's values (NumPy's log1p may differ in the last bit)."""
    dense = _dense_table()[np.minimum(counts, _TABLED_COUNTS - 1)]
    large = counts >= _TABLED_COUNTS
    if large.any():
        dense[large] = criteo.dense_from_counts(counts[large]).numpy()
    return dense


def numpy_columns(chunk: bytes, max_ind_range: int) -> line_kernel.Columns | None:
    """``line_kernel.clean_columns`` in NumPy passes over the chunk, column by column."""
    bounds = field_bounds(chunk)
    if bounds is None:
        return None
    padded, starts, lengths = bounds
    label_start, label_length = starts[:, 0], lengths[:, 0]
    label_byte = padded[label_start]
    if not ((label_length == 1) & ((label_byte == _ZERO) | (label_byte == _ZERO + 1))).all():
        return None
    dense_columns = slice(1, 1 + criteo.NUM_DENSE)
    counts, counts_ok = in_row_blocks(
        parse_count_fields, padded, starts[:, dense_columns], lengths[:, dense_columns]
    )
    sparse_starts = starts[:, 1 + criteo.NUM_DENSE :]
    sparse_lengths = lengths[:, 1 + criteo.NUM_DENSE :]
    if not counts_ok.all() or sparse_lengths.max() > criteo.MAX_HEX_DIGITS:
        return None
    values, values_ok = in_row_blocks(parse_hex_fields, padded, sparse_starts, sparse_lengths)
    if not values_ok.all():
        return None
    if max_ind_range > 0:
        values %= max_ind_range
    label = (label_byte - _ZERO).astype(np.int32)
    return line_kernel.Columns(label, counts, values, sparse_lengths == 0)


class BlockParser:
    """Parses chunks of clean lines as ``RawPreprocessor.parse_lines`` does: with
    the C++ kernel where it is built, else in NumPy."""

    def __init__(
        self, preprocessor: criteo.RawPreprocessor, raw_values: bool, native: bool | None = None
    ) -> None:
        """``native``: use the C++ kernel (default: where it is available)."""
        self.preprocessor = preprocessor
        self.max_ind_range = preprocessor.max_ind_range
        self.raw_values = raw_values
        self.native = line_kernel.available() if native is None else native
        # One graph call per chunk instead of ~150 eager ops.
        self._lookup = tf.function(
            preprocessor.ids_from_values,
            input_signature=[
                tf.TensorSpec([None, criteo.NUM_SPARSE], tf.int64),
                tf.TensorSpec([None, criteo.NUM_SPARSE], tf.bool),
            ],
        )

    def parse(self, chunk: bytes) -> dict[str, np.ndarray] | None:
        """The chunk's columns (see ``parse_lines``), or None if any line is not
        clean: a wrong field count, a bad value, or a value too long."""
        columns = (line_kernel.clean_columns if self.native else numpy_columns)(
            chunk, self.max_ind_range
        )
        if columns is None:
            return None
        return {
            "label": columns.label,
            "dense": dense_features(columns.counts),
            "ids": self._ids(columns.values, columns.missing),
            "ok": np.ones(len(columns.label), bool),
            "bad_index": np.zeros(0, np.int64),
        }

    def _ids(self, values: np.ndarray, missing: np.ndarray) -> np.ndarray:
        if self.raw_values:
            return np.where(missing, -1, values)
        if not self.preprocessor.uses_vocabulary:
            return values
        # The preprocessor's own hash tables: the same ids, and ~10x faster than
        # a binary search of the sorted vocabulary.
        return self._lookup(values, missing).numpy()
