"""The preprocessing rules for one raw Criteo line, defined once with TensorFlow ops.

A raw line has 40 tab-separated fields: the label (``0``/``1``), 13 integer counts
``I1..I13`` and 26 categorical values ``C1..C26`` written as hexadecimal strings.
Any count or categorical field may be empty.

Dense features: an empty count is 0, a negative count is 0, then ``log(x + 1)`` is
computed in float64 and rounded to float32. A count must match ``-?[0-9]{1,18}``.

Categorical features: a value must match ``[0-9a-fA-F]{0,15}`` and is read as
``int(value, 16)`` (an empty value reads as 0). Two ways turn that integer into a
row id of the feature's embedding table:

* hashing (the converter's ``--categorical=hash``; ``max_ind_range > 0``, no
  vocabulary): ``id = value % max_ind_range``; every table has ``max_ind_range`` rows.
* vocabulary (the default): an ordered list of known values per feature (a text
  file, one value per line, written as the decimal integer ``int(hex, 16)`` after
  the optional ``% max_ind_range``). Ids: ``0`` = out-of-vocabulary, ``1`` = missing (empty
  field), ``2 + k`` = the value on line ``k`` of the file. The converter writes the
  values seen at least ``frequency_threshold`` times in the training rows, most
  frequent first (ties by ascending value). Table size = ``2 + len(vocabulary)``.
  With ``max_ind_range`` this is the reference's rule (``% N``, then contiguous
  ids per feature): at most ``2 + N`` rows.

The same ops serve the converter (``parse_lines``, which reports bad lines instead
of failing) and the SavedModel's raw-input signature (``RawPreprocessor.__call__``,
which raises ``InvalidArgumentError`` on malformed input), so training and serving
cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf

from input_pipeline.safe_files import confined

NUM_DENSE = 13
NUM_SPARSE = 26
NUM_INPUT_FIELDS = NUM_DENSE + NUM_SPARSE  # a line without its label
NUM_FIELDS = 1 + NUM_INPUT_FIELDS

DENSE_NAMES = tuple(f"I{i}" for i in range(1, NUM_DENSE + 1))
SPARSE_NAMES = tuple(f"C{i}" for i in range(1, NUM_SPARSE + 1))
FIELD_NAMES = ("label",) + DENSE_NAMES + SPARSE_NAMES

# Distinct values per categorical feature of Criteo Kaggle `train.txt` (no cap).
KAGGLE_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip

OOV_ID = 0
MISSING_ID = 1
FIRST_VOCABULARY_ID = 2

MAX_COUNT_DIGITS = 18  # keeps every count inside int64
MAX_HEX_DIGITS = 15  # keeps every categorical value inside int64
MAX_SHOWN_CHARS = 200  # of a bad value echoed in an error message

_COUNT_PATTERN = f"(-?[0-9]{{1,{MAX_COUNT_DIGITS}}})?"

_U64_HIGH = 0x8080808080808080
_U64_ONES = 0x0101010101010101


def _u64(value: int) -> tf.Tensor:
    return tf.constant(value, tf.uint64)


def _bytes_at_least(words: tf.Tensor, threshold: int) -> tf.Tensor:
    """Per byte of 7-bit ASCII words: high bit set where the byte is >= threshold.

    Setting every high bit first means no byte's subtraction borrows from the next.
    """
    high = _u64(_U64_HIGH)
    shifted = tf.bitwise.bitwise_or(words, high) - _u64(_U64_ONES * threshold)
    return tf.bitwise.bitwise_and(shifted, high)


# High-bit masks of the first k bytes of a little-endian 64-bit word, k = 0..8.
_PREFIX_MASKS = [sum(0x80 << (8 * i) for i in range(k)) for k in range(9)]


def _hex_word(words: tf.Tensor, length: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Up to 8 hex characters per little-endian uint64 word (``length`` of them,
    zero bytes after) -> (their value as the top of a 32-bit int64, ok)."""
    band, bor = tf.bitwise.bitwise_and, tf.bitwise.bitwise_or
    shr, shl = tf.bitwise.right_shift, tf.bitwise.left_shift
    is_ascii = tf.equal(band(words, _u64(_U64_HIGH)), _u64(0))
    is_digit = band(_bytes_at_least(words, 0x30), tf.bitwise.invert(_bytes_at_least(words, 0x3A)))
    lower = bor(words, _u64(0x2020202020202020))
    is_alpha = band(_bytes_at_least(lower, 0x61), tf.bitwise.invert(_bytes_at_least(lower, 0x67)))
    wanted = tf.gather(tf.constant(_PREFIX_MASKS, tf.uint64), length)
    ok = is_ascii & tf.equal(band(bor(is_digit, is_alpha), wanted), wanted)
    # '0'-'9' -> 0-9 and 'a'-'f' / 'A'-'F' -> 10-15, one nibble per byte.
    nibbles = band(words, _u64(0x0F0F0F0F0F0F0F0F)) + band(
        shr(words, _u64(6)), _u64(_U64_ONES)
    ) * _u64(9)
    # Pack the 8 nibbles (first character most significant) into 32 bits.
    pairs = band(bor(shl(nibbles, _u64(4)), shr(nibbles, _u64(8))), _u64(0x00FF00FF00FF00FF))
    quads = band(bor(shl(pairs, _u64(8)), shr(pairs, _u64(16))), _u64(0x0000FFFF0000FFFF))
    packed = band(bor(shl(quads, _u64(16)), shr(quads, _u64(32))), _u64(0xFFFFFFFF))
    return tf.cast(packed, tf.int64), ok


def parse_hex(values: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Reads hexadecimal strings as integers: ``int(value, 16)``, empty -> 0.

    Args:
      values: tf.string tensor of any shape.

    Returns:
      ``(int64 values, bool ok)`` of the same shape; ``ok`` is False where a value
      is not 0 to 15 hexadecimal digits (its integer is then meaningless).
    """
    # Eight characters per uint64 word, decoded with SWAR arithmetic: ~3x faster
    # than per-byte tensors on CPU, which matters for conversion throughput.
    length = tf.strings.length(values)
    n = tf.cast(length, tf.int64)

    def up_to_8_digits() -> tuple[tf.Tensor, tf.Tensor]:
        words = tf.bitcast(tf.io.decode_raw(values, tf.int64, fixed_length=8), tf.uint64)
        value, ok = _hex_word(words[..., 0], length)
        return tf.bitwise.right_shift(value, 4 * (8 - n)), ok

    def up_to_16_digits() -> tuple[tf.Tensor, tf.Tensor]:
        words = tf.bitcast(tf.io.decode_raw(values, tf.int64, fixed_length=16), tf.uint64)
        first, first_ok = _hex_word(words[..., 0], tf.minimum(length, 8))
        second, second_ok = _hex_word(words[..., 1], tf.clip_by_value(length - 8, 0, 8))
        short = tf.bitwise.right_shift(first, 4 * tf.maximum(8 - n, 0))
        long = tf.bitwise.left_shift(first, 4 * tf.clip_by_value(n - 8, 0, 7))
        long += tf.bitwise.right_shift(second, 4 * tf.clip_by_value(16 - n, 1, 8))
        ok = first_ok & second_ok & (length <= MAX_HEX_DIGITS)
        return tf.where(n <= 8, short, long), ok

    value, ok = tf.cond(tf.reduce_max(length) <= 8, up_to_8_digits, up_to_16_digits)
    return tf.where(ok, value, tf.zeros_like(value)), ok


def dense_from_counts(counts) -> tf.Tensor:
    """The dense features of non-negative int64 counts: ``log(count + 1)`` computed in
    float64, rounded to float32."""
    return tf.cast(tf.math.log1p(tf.cast(counts, tf.float64)), tf.float32)


def parse_counts(values: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Turns integer-count strings into dense features: ``log(max(x, 0) + 1)``.

    Args:
      values: tf.string tensor of any shape; empty strings count as 0.

    Returns:
      ``(float32 features, bool ok)``; ``ok`` is False where a value is not an
      optionally negative integer of at most 18 digits.
    """
    ok = tf.strings.regex_full_match(values, _COUNT_PATTERN)
    usable = ok & tf.not_equal(values, "")
    counts = tf.strings.to_number(tf.where(usable, values, "0"), out_type=tf.int64)
    return dense_from_counts(tf.maximum(counts, 0)), ok


def parse_labels(values: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Reads label strings: ``"0"`` or ``"1"`` -> int32; anything else is not ok."""
    positive = tf.equal(values, "1")
    return tf.cast(positive, tf.int32), positive | tf.equal(values, "0")


def count_lines(path: str) -> int:
    """Number of lines of a text file (a last line without newline counts)."""
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


class RawPreprocessor(tf.Module):
    """Raw Criteo fields (strings) -> ``(dense float32 [B, 13], ids int64 [B, 26])``.

    Hashing mode (``vocabulary_files`` None): ``id = int(hex, 16) % max_ind_range``.
    Vocabulary mode: ``value = int(hex, 16)`` (``% max_ind_range`` first when
    ``max_ind_range > 0``), looked up in one ``tf.lookup.StaticHashTable`` per
    feature built from the vocabulary text files (see the module docstring for ids).
    The files are tracked, so ``tf.saved_model.save`` copies them as assets.
    """

    def __init__(
        self,
        max_ind_range: int = 0,
        vocabulary_files: Sequence[str] | None = None,
        table_sizes: Sequence[int] | None = None,
        name: str | None = None,
        *,
        raw_values_only: bool = False,
    ) -> None:
        """Builds the preprocessor.

        Args:
          max_ind_range: modulus applied to categorical values (0 = none). Required
            (> 0) without vocabulary files.
          vocabulary_files: 26 vocabulary text files, or None for hashing mode.
          table_sizes: the 26 table sizes if already known (vocabulary mode;
            counted from the files otherwise).
          name: tf.Module name.
          raw_values_only: allow ``max_ind_range == 0`` without vocabulary; for
            ``parse_lines(..., raw_values=True)`` only (see ``for_raw_values``).
        """
        super().__init__(name=name)
        self.max_ind_range = int(max_ind_range)
        if self.max_ind_range < 0:
            raise ValueError(f"max_ind_range must be >= 0, got {max_ind_range}")
        self.asset_paths: list[str] = []
        self._tables: list[tf.lookup.StaticHashTable | None] = []
        self._empty_vocabularies: list[tf.saved_model.Asset] = []
        if vocabulary_files is None:
            if self.max_ind_range <= 0 and not raw_values_only:
                raise ValueError("Hashing mode needs max_ind_range > 0 (or give vocabulary_files)")
            self.table_sizes = [self.max_ind_range] * NUM_SPARSE
            return
        if len(vocabulary_files) != NUM_SPARSE:
            raise ValueError(f"Need {NUM_SPARSE} vocabulary files, got {len(vocabulary_files)}")
        self.asset_paths = [os.fspath(p) for p in vocabulary_files]
        for path in self.asset_paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Vocabulary file not found: {path}")
        if table_sizes is None:
            table_sizes = [FIRST_VOCABULARY_ID + count_lines(p) for p in self.asset_paths]
        self.table_sizes = [int(s) for s in table_sizes]
        for path, size in zip(self.asset_paths, self.table_sizes, strict=True):
            if size <= FIRST_VOCABULARY_ID:
                # An empty vocabulary: every value is OOV. No table (an empty file
                # cannot initialise one), but the file still travels as an asset.
                self._tables.append(None)
                self._empty_vocabularies.append(tf.saved_model.Asset(path))
                continue
            initializer = tf.lookup.TextFileInitializer(
                path,
                key_dtype=tf.int64,
                key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
                value_dtype=tf.int64,
                value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            )
            self._tables.append(tf.lookup.StaticHashTable(initializer, default_value=-1))

    @classmethod
    def from_metadata(
        cls, data_dir_or_metadata: str | os.PathLike | Mapping[str, Any]
    ) -> RawPreprocessor:
        """Builds the preprocessor a converted dataset was made with.

        Args:
          data_dir_or_metadata: the converted data directory, or its metadata dict
            (as returned by ``metadata.read`` or ``convert.convert``; relative
            vocabulary paths resolve against its ``data_dir`` entry).
        """
        if isinstance(data_dir_or_metadata, Mapping):
            metadata = data_dir_or_metadata
        else:
            from input_pipeline import metadata as metadata_file  # it imports this module

            metadata = metadata_file.read(data_dir_or_metadata, check_files=False)
        settings = metadata["preprocessing"]
        vocabulary = metadata.get("vocabulary_files")
        if vocabulary:
            base = metadata.get("data_dir", "")
            vocabulary = [confined(base, p, "metadata.json: vocabulary file") for p in vocabulary]
        return cls(
            max_ind_range=settings.get("max_ind_range", 0),
            vocabulary_files=vocabulary or None,
            table_sizes=metadata["table_sizes"],
        )

    @classmethod
    def for_raw_values(cls, max_ind_range: int = 0) -> RawPreprocessor:
        """A preprocessor that only reads categorical values (``% max_ind_range``
        when > 0), e.g. to count them before vocabularies exist."""
        return cls(max_ind_range=max_ind_range, raw_values_only=True)

    @property
    def uses_vocabulary(self) -> bool:
        """True in vocabulary mode."""
        return bool(self.asset_paths)

    def categorical_values(self, fields: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``[..., 26]`` hex strings -> (int64 values after the modulus, ok)."""
        values, ok = parse_hex(fields)
        if self.max_ind_range > 0:
            values = values % self.max_ind_range
        return values, ok

    def ids_from_values(self, values: tf.Tensor, missing: tf.Tensor) -> tf.Tensor:
        """Categorical values ``[B, 26]`` (and their emptiness) -> table ids ``[B, 26]``."""
        if not self.uses_vocabulary:
            return values
        columns = []
        for feature, table in enumerate(self._tables):
            if table is None:
                found = tf.fill(tf.shape(values[:, feature]), tf.constant(-1, tf.int64))
            else:
                found = table.lookup(values[:, feature])
            ids = tf.where(found >= 0, found + FIRST_VOCABULARY_ID, tf.constant(OOV_ID, tf.int64))
            columns.append(tf.where(missing[:, feature], tf.constant(MISSING_ID, tf.int64), ids))
        return tf.stack(columns, axis=1)

    def parse_fields(
        self, fields: tf.Tensor, raw_values: bool = False
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``[B, 39]`` strings -> ``(dense [B, 13], ids [B, 26], ok bool [B, 39])``.

        Never fails on malformed values: ``ok`` marks them. With ``raw_values`` the
        categorical integers (after the modulus; -1 for an empty field) come back
        instead of table ids.
        """
        dense, dense_ok = parse_counts(fields[:, :NUM_DENSE])
        sparse_fields = fields[:, NUM_DENSE:]
        values, sparse_ok = self.categorical_values(sparse_fields)
        missing = tf.equal(sparse_fields, "")
        if raw_values:
            ids = tf.where(missing, tf.constant(-1, tf.int64), values)
        else:
            ids = self.ids_from_values(values, missing)
        return dense, ids, tf.concat([dense_ok, sparse_ok], axis=1)

    def parse_lines(self, lines: tf.Tensor, raw_values: bool = False) -> dict[str, tf.Tensor]:
        """Raw lines ``[B]`` (no newline) -> parsed columns plus per-line validity.

        Returns a dict: ``label`` int32 [B], ``dense`` float32 [B, 13], ``ids`` int64
        [B, 26] (raw values with ``raw_values``), ``ok`` bool [B], and for the lines
        that are not ok: ``bad_index`` (positions), ``bad_num_fields``,
        ``bad_field_ok`` bool [n_bad, 40] (to explain each one) and ``bad_text``.
        """
        parts = tf.strings.split(lines, "\t")
        num_fields = parts.row_lengths()
        fields = tf.cond(
            tf.reduce_all(tf.equal(num_fields, NUM_FIELDS)),
            lambda: tf.reshape(parts.flat_values, [-1, NUM_FIELDS]),  # no copy: the usual case
            lambda: parts.to_tensor(default_value="", shape=[None, NUM_FIELDS]),
        )
        parsed = self.parse_table(fields, num_fields, raw_values=raw_values)
        parsed["bad_text"] = tf.gather(lines, parsed["bad_index"])
        return parsed

    def parse_table(
        self, fields: tf.Tensor, num_fields: tf.Tensor, raw_values: bool = False
    ) -> dict[str, tf.Tensor]:
        """``[B, 40]`` fields (label first) and each line's field count -> see
        ``parse_lines`` (without ``bad_text``)."""
        label, label_ok = parse_labels(fields[:, 0])
        dense, ids, fields_ok = self.parse_fields(fields[:, 1:], raw_values=raw_values)
        field_ok = tf.concat([label_ok[:, None], fields_ok], axis=1)
        ok = tf.equal(num_fields, NUM_FIELDS) & tf.reduce_all(field_ok, axis=1)
        bad = tf.where(~ok)[:, 0]
        return {
            "label": label,
            "dense": dense,
            "ids": ids,
            "ok": ok,
            "bad_index": bad,
            "bad_num_fields": tf.gather(num_fields, bad),
            "bad_field_ok": tf.gather(field_ok, bad),
        }

    @tf.function(input_signature=[tf.TensorSpec([None, NUM_INPUT_FIELDS], tf.string)])
    def __call__(self, fields: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``[B, 39]`` raw fields (13 counts, then 26 categorical; no label) ->
        ``(dense float32 [B, 13], ids int64 [B, 26])``.

        Raises:
          tf.errors.InvalidArgumentError: a count is not an integer or a categorical
            value is not hexadecimal (the message names the first such row, field
            and value).
        """
        dense, ids, ok = self.parse_fields(fields)
        all_ok = tf.reduce_all(ok)

        def describe_first_bad() -> tf.Tensor:
            row, column = tf.unstack(tf.where(~ok)[0])
            kind = tf.where(
                column < NUM_DENSE, "an integer count", "a hexadecimal categorical value"
            )
            name = tf.gather(tf.constant(FIELD_NAMES[1:]), column)
            return tf.strings.join(
                ["row ", tf.strings.as_string(row), " field ", name, ": value ["]
                + [shown_value(fields[row, column]), "] is not ", kind]
            )

        detail = tf.cond(all_ok, lambda: tf.constant(""), describe_first_bad)
        check = tf.debugging.Assert(all_ok, ["Malformed raw Criteo input:", detail])
        with tf.control_dependencies([check]):
            return tf.identity(dense), tf.identity(ids)


def shown_value(value: tf.Tensor, limit: int = MAX_SHOWN_CHARS) -> tf.Tensor:
    """A client's string made safe to echo in an error: valid UTF-8, at most ``limit`` characters.

    Bytes that are not UTF-8 become U+FFFD (an error message that is not UTF-8
    cannot even be read by the client); a longer value is cut, with its size.
    """
    text = tf.strings.unicode_transcode(
        value, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
    )
    head = tf.strings.substr(text, 0, limit, unit="UTF8_CHAR")
    cut = tf.strings.join(
        [head, "... (", tf.strings.as_string(tf.strings.length(value)), " bytes)"]
    )
    return tf.where(tf.strings.length(text, unit="UTF8_CHAR") > limit, cut, head)


def explain_bad_line(num_fields: int, field_ok: Sequence[bool], line: str | None = None) -> str:
    """A human-readable reason why a raw line was rejected."""
    if num_fields != NUM_FIELDS:
        return f"expected {NUM_FIELDS} tab-separated fields, found {num_fields}"
    parts = line.split("\t") if line is not None else None
    for index, good in enumerate(field_ok):
        if good:
            continue
        shown = f" {parts[index][:40]!r}" if parts is not None and len(parts) > index else ""
        if index == 0:
            return f"label{shown} is not 0 or 1"
        if index <= NUM_DENSE:
            return (
                f"field {FIELD_NAMES[index]}{shown} is not an integer count"
                f" of at most {MAX_COUNT_DIGITS} digits"
            )
        return (
            f"field {FIELD_NAMES[index]}{shown} is not a hexadecimal value"
            f" of at most {MAX_HEX_DIGITS} digits"
        )
    return "malformed line"
