"""The chunk parsers (C++ kernel and NumPy) against the TensorFlow rules of ``criteo.py`` and a
per-row oracle."""

import math

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import criteo
from input_pipeline import planted_signal as synthetic
from input_pipeline.convert import block_parse, line_kernel
from input_pipeline.convert.block_parse import BlockParser


@pytest.fixture(params=["kernel", "numpy"])
def native(request):
    """Each test runs with both parsers: the C++ kernel and the NumPy passes."""
    if request.param == "kernel" and not line_kernel.available():
        pytest.skip("the C++ kernels are turned off in this environment")
    return request.param == "kernel"


def tensorflow_parse(preprocessor, chunk, raw_values):
    lines = tf.strings.split(tf.constant(chunk), "\n")
    return {k: v.numpy() for k, v in preprocessor.parse_lines(lines, raw_values).items()}


def assert_same_as_tensorflow(preprocessor, lines, native, raw_values=False):
    chunk = "\n".join(lines).encode()
    fast = BlockParser(preprocessor, raw_values, native).parse(chunk)
    assert fast is not None
    slow = tensorflow_parse(preprocessor, chunk, raw_values)
    assert slow["ok"].all()
    for key in ("label", "dense", "ids", "ok", "bad_index"):
        assert fast[key].dtype == slow[key].dtype, key
        np.testing.assert_array_equal(fast[key], slow[key], err_msg=key)
    return fast


def line(label="1", counts=None, values=None):
    counts = counts if counts is not None else ["1"] * criteo.NUM_DENSE
    values = values if values is not None else ["a"] * criteo.NUM_SPARSE
    return "\t".join([label, *counts, *values])


EDGE_COUNTS = [
    "",
    "0",
    "-1",
    "-0",
    "-999999999999999999",
    "007",
    "9",
    "10",
    "123456789",
    "999999999999999999",
    "18446744",
    "2",
    "65535",
]
EDGE_VALUES = [
    "",
    "0",
    "00000000",
    "0000000a",
    "000000000000001",
    "f",
    "F",
    "aBcDeF01",
    "123456789",
    "fffffffffffffff",
    "ffffffff",
    "100000000",
    "7fffffff",
    "80000000",
    "deadbeefcafe",
    "1",
    "10",
    "abc",
    "ABCDEF",
    "0123456789abcde",
    "00",
    "9",
    "a0a0a0a0a",
    "e",
    "1234567",
    "12345678",
]


@pytest.mark.parametrize("max_ind_range", [0, 7, 10_000_000])
def test_edge_values_match_tensorflow_raw(max_ind_range, native):
    preprocessor = criteo.RawPreprocessor.for_raw_values(max_ind_range)
    lines = [
        line("0", EDGE_COUNTS, EDGE_VALUES),
        line("1", EDGE_COUNTS[::-1], EDGE_VALUES[::-1]),
        line("0", [""] * 13, [""] * 26),
    ]
    parsed = assert_same_as_tensorflow(preprocessor, lines, native, raw_values=True)
    expected = [(int(v, 16) if v else -1) for v in EDGE_VALUES]
    if max_ind_range:
        expected = [v % max_ind_range if v >= 0 else v for v in expected]
    assert parsed["ids"][0].tolist() == expected
    assert parsed["ids"][2].tolist() == [-1] * 26


def test_dense_follows_the_per_row_rule(native):
    preprocessor = criteo.RawPreprocessor(max_ind_range=100)
    parsed = assert_same_as_tensorflow(preprocessor, [line("1", EDGE_COUNTS, EDGE_VALUES)], native)
    expected = [math.log(max(int(t), 0) + 1) if t else 0.0 for t in EDGE_COUNTS]
    np.testing.assert_array_equal(parsed["dense"][0], np.array(expected).astype(np.float32))
    assert parsed["label"].tolist() == [1]


def test_hash_ids_match_tensorflow_on_generated_lines(native):
    lines = synthetic.generate(2000, seed=3).lines()
    assert_same_as_tensorflow(criteo.RawPreprocessor(max_ind_range=1000), lines, native)
    assert_same_as_tensorflow(
        criteo.RawPreprocessor.for_raw_values(0), lines, native, raw_values=True
    )


def write_vocabulary(path, values):
    path.write_text("".join(f"{v}\n" for v in values))
    return str(path)


def test_vocabulary_ids_match_tensorflow(tmp_path, native):
    values = list(dict.fromkeys(int(v, 16) for v in reversed(EDGE_VALUES) if v))  # unsorted
    files = []
    for f in range(criteo.NUM_SPARSE):
        kept = [] if f == 3 else values[f % 5 :: 2]  # feature C4: an empty vocabulary
        files.append(write_vocabulary(tmp_path / f"v{f}.txt", kept))
    preprocessor = criteo.RawPreprocessor(vocabulary_files=files)
    lines = [line(str(k % 2), EDGE_COUNTS, np.roll(EDGE_VALUES, k).tolist()) for k in range(26)]
    parsed = assert_same_as_tensorflow(preprocessor, lines, native)
    assert set(parsed["ids"][:, 3].tolist()) <= {criteo.OOV_ID, criteo.MISSING_ID}
    assert (parsed["ids"] == criteo.MISSING_ID).sum() == 26


GOOD = line("1", EDGE_COUNTS, EDGE_VALUES)


@pytest.mark.parametrize(
    "bad",
    [
        "\t".join(GOOD.split("\t")[:-1]),  # 39 fields
        GOOD + "\t",  # 41 fields
        GOOD + "\tab",
        "",
        "-",
        line("2"),
        line(""),
        line("01"),
        line("1", ["1.5"] + ["1"] * 12),
        line("1", ["-"] + ["1"] * 12),
        line("1", ["1-"] + ["1"] * 12),
        line("1", ["--1"] + ["1"] * 12),
        line("1", ["+1"] + ["1"] * 12),
        line("1", [" 1"] + ["1"] * 12),
        line("1", ["1" * 19] + ["1"] * 12),
        line("1", ["-" + "1" * 19] + ["1"] * 12),
        line("1", ["1" * 100_000] + ["1"] * 12),
        line("1", ["12345678x9"] + ["1"] * 12),
        line("1", ["1\x0b2"] + ["1"] * 12),
        line("1", None, ["g"] + ["a"] * 25),
        line("1", None, ["0x1"] + ["a"] * 25),
        line("1", None, ["1" * 16] + ["a"] * 25),
        line("1", None, ["12345678g"] + ["a"] * 25),
        line("1", None, ["-1"] + ["a"] * 25),
        line("1", None, ["é"] + ["a"] * 25),
        line("1", None, ["a\x00"] + ["a"] * 25),
    ],
)
def test_any_bad_line_leaves_the_chunk_to_tensorflow(bad, native):
    preprocessor = criteo.RawPreprocessor(max_ind_range=100)
    chunk = "\n".join([GOOD, bad, GOOD]).encode()
    assert BlockParser(preprocessor, False, native).parse(chunk) is None
    assert not tensorflow_parse(preprocessor, chunk, raw_values=False)["ok"].all()


def test_chunk_of_one_line_and_long_fields(native):
    preprocessor = criteo.RawPreprocessor(max_ind_range=10**9)
    long = line("0", ["-" + "9" * 18] + ["9" * 18] * 12, ["f" * 15] * 26)
    parsed = assert_same_as_tensorflow(preprocessor, [long], native)
    assert parsed["ids"][0, 0] == int("f" * 15, 16) % 10**9
    assert parsed["dense"][0, 0] == 0.0


def test_chunk_longer_than_a_block_keeps_every_row_in_place(native):
    rows = 2 * block_parse._ROWS_PER_BLOCK + 11
    lines = synthetic.generate(rows, seed=5).lines()
    edges = (line("0", EDGE_COUNTS, EDGE_VALUES), line("1", EDGE_COUNTS[::-1], EDGE_VALUES[::-1]))
    for at in (0, block_parse._ROWS_PER_BLOCK - 1, block_parse._ROWS_PER_BLOCK, rows - 1):
        lines[at] = edges[at % 2]
    preprocessor = criteo.RawPreprocessor.for_raw_values(0)
    parsed = assert_same_as_tensorflow(preprocessor, lines, native, raw_values=True)
    assert parsed["ids"].shape == (rows, criteo.NUM_SPARSE)
    assert parsed["ids"][block_parse._ROWS_PER_BLOCK - 1].tolist() == [
        int(v, 16) if v else -1 for v in EDGE_VALUES[::-1]
    ]
    bad = lines[:]
    bad[-2] = line("1", None, ["g"] + ["a"] * 25)  # only the last block holds a bad value
    assert BlockParser(preprocessor, True, native).parse("\n".join(bad).encode()) is None


@pytest.mark.parametrize(
    "chunk", [b"", GOOD.encode() + b"\n", b"\n" + GOOD.encode(), b"1\t" * 40 + b"1"]
)
def test_chunks_without_forty_fields_per_line_are_left_to_tensorflow(chunk, native):
    preprocessor = criteo.RawPreprocessor(max_ind_range=100)
    assert BlockParser(preprocessor, False, native).parse(chunk) is None


def test_dense_features_match_the_tensorflow_op_across_the_table_edge():
    counts = np.array([0, 1, 2, 65534, 65535, 65536, 65537, 10**9, 10**18 - 1, 7], np.int64)
    expected = criteo.dense_from_counts(counts).numpy()
    np.testing.assert_array_equal(
        block_parse.dense_features(counts.reshape(2, 5)), expected.reshape(2, 5)
    )


def test_the_kernel_parses_by_default_where_it_is_built():
    parser = BlockParser(criteo.RawPreprocessor(max_ind_range=100), raw_values=False)
    assert parser.native == line_kernel.available()
