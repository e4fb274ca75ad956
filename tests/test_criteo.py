"""Tests of the raw-line preprocessing rules (input_pipeline/criteo.py)."""

import math
import os
import random

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import criteo
from input_pipeline import planted_signal as synthetic


def oracle_dense(text: str) -> np.float32:
    """Independent rule: empty -> 0, negative -> 0, log(x + 1)."""
    value = int(text) if text else 0
    return np.float32(math.log(max(value, 0) + 1))


def oracle_hash(text: str, max_ind_range: int) -> int:
    return (int(text, 16) if text else 0) % max_ind_range


def test_constants():
    assert (criteo.NUM_DENSE, criteo.NUM_SPARSE) == (13, 26)
    assert len(criteo.KAGGLE_CARDINALITIES) == 26
    assert sum(criteo.KAGGLE_CARDINALITIES) == 33_762_577


def test_parse_hex_matches_python_int():
    rng = random.Random(0)
    alphabet = "0123456789abcdefABCDEF"
    valid = ["", "0", "F", "00000000", "ffffffff", "7fffffffffffffff"[:15], "123456789"]
    valid += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 15))) for _ in range(300)]
    values, ok = criteo.parse_hex(tf.constant(valid))
    assert ok.numpy().all()
    assert values.numpy().tolist() == [int(v, 16) if v else 0 for v in valid]
    # Only short values in a batch take the one-word path; check it separately.
    short = [v for v in valid if len(v) <= 8]
    values, ok = criteo.parse_hex(tf.constant(short))
    assert ok.numpy().all() and values.numpy().tolist() == [int(v, 16) if v else 0 for v in short]


@pytest.mark.parametrize(
    "bad", ["g", "12 4", "0x1f", "-1", "1f\x00", "é", "/", ":", "@", "G", "`", "f" * 16, " a"]
)
def test_parse_hex_rejects(bad):
    _, ok = criteo.parse_hex(tf.constant([bad, "ab"]))
    assert ok.numpy().tolist() == [False, True]


def test_parse_counts_matches_python():
    rng = random.Random(1)
    texts = ["", "0", "-1", "-3", "7", "123456789012345678"]
    texts += [str(rng.randint(-5, 10 ** rng.randint(1, 12))) for _ in range(300)]
    dense, ok = criteo.parse_counts(tf.constant(texts))
    assert ok.numpy().all()
    np.testing.assert_array_max_ulp(dense.numpy(), np.array([oracle_dense(t) for t in texts]), 1)


def test_dense_features_of_any_accepted_count_are_finite():
    """Training needs no NaN/Inf guard on converted data: the rule cannot make one.

    The largest accepted count (18 nines) gives log(1e18) ~ 41.4; anything longer,
    "nan", "inf" or a float is rejected as a bad line, never turned into a value.
    """
    extremes = ["9" * 18, "-" + "9" * 18, "", "0", "1"]
    dense, ok = criteo.parse_counts(tf.constant(extremes))
    assert ok.numpy().all()
    assert np.isfinite(dense.numpy()).all()
    assert dense.numpy().max() == pytest.approx(math.log(10**18), rel=1e-6)
    _, ok = criteo.parse_counts(tf.constant(["nan", "inf", "-inf", "1e400", "9" * 19]))
    assert not ok.numpy().any()


@pytest.mark.parametrize("bad", ["abc", "1.5", "-", "+5", " 5", "1e3", "1234567890123456789"])
def test_parse_counts_rejects(bad):
    _, ok = criteo.parse_counts(tf.constant([bad, "4"]))
    assert ok.numpy().tolist() == [False, True]


def _fields(lines: list[str]) -> np.ndarray:
    return np.array([line.split("\t")[1:] for line in lines], dtype=object)


def test_raw_preprocessor_hash_mode_matches_oracle():
    lines = synthetic.generate(500, seed=3).lines()
    pre = criteo.RawPreprocessor(max_ind_range=1000)
    dense, ids = pre(tf.constant(_fields(lines)))
    expected_dense = [[oracle_dense(t) for t in line.split("\t")[1:14]] for line in lines]
    expected_ids = [[oracle_hash(t, 1000) for t in line.split("\t")[14:]] for line in lines]
    np.testing.assert_array_max_ulp(dense.numpy(), np.array(expected_dense, np.float32), 1)
    assert ids.numpy().tolist() == expected_ids
    assert ids.dtype == tf.int64 and dense.dtype == tf.float32
    assert pre.table_sizes == [1000] * 26 and pre.asset_paths == []


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [(2, "abc", "field I3"), (20, "xyz", "field C8"), (0, "1.5", "field I1")],
)
def test_raw_preprocessor_rejects_malformed(column, value, expected):
    row = ["1"] * 13 + ["a1"] * 26
    bad = list(row)
    bad[column] = value
    pre = criteo.RawPreprocessor(max_ind_range=10)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        pre(tf.constant([row, bad]))
    assert expected in error.value.message and "row 1" in error.value.message
    assert value in error.value.message


def test_raw_preprocessor_rejects_wrong_width():
    pre = criteo.RawPreprocessor(max_ind_range=10)
    with pytest.raises((ValueError, TypeError)):
        pre(tf.constant([["1"] * 38]))


def test_hash_mode_needs_a_range():
    with pytest.raises(ValueError):
        criteo.RawPreprocessor()


def _write_vocabularies(directory, vocabularies):
    paths = []
    for f, values in enumerate(vocabularies):
        path = os.path.join(directory, f"C{f + 1}.txt")
        with open(path, "w") as out:
            out.write("".join(f"{v}\n" for v in values))
        paths.append(path)
    return paths


def _vocabulary_example(tmp_path):
    rng = np.random.default_rng(0)
    vocabularies = [
        rng.choice(200, size=rng.integers(0, 20), replace=False).tolist() for _ in range(26)
    ]
    vocabularies[0] = []  # an empty vocabulary: everything but "missing" is OOV
    paths = _write_vocabularies(tmp_path, vocabularies)
    rows = []
    for _ in range(50):
        rows.append(
            ["5"] * 13
            + [("" if rng.random() < 0.2 else f"{rng.integers(200):x}") for _ in range(26)]
        )

    def oracle(row):
        ids = []
        for f, text in enumerate(row[13:]):
            if text == "":
                ids.append(1)
            elif int(text, 16) in vocabularies[f]:
                ids.append(2 + vocabularies[f].index(int(text, 16)))
            else:
                ids.append(0)
        return ids

    return paths, vocabularies, rows, oracle


def test_vocabulary_mode_ids(tmp_path):
    paths, vocabularies, rows, oracle = _vocabulary_example(tmp_path)
    pre = criteo.RawPreprocessor(vocabulary_files=paths)
    _, ids = pre(tf.constant(rows))
    assert ids.numpy().tolist() == [oracle(r) for r in rows]
    assert pre.table_sizes == [2 + len(v) for v in vocabularies]
    assert pre.asset_paths == paths


def test_vocabulary_mode_applies_modulus_first(tmp_path):
    paths = _write_vocabularies(tmp_path, [[3, 7]] * 26)
    pre = criteo.RawPreprocessor(max_ind_range=10, vocabulary_files=paths)
    row = ["1"] * 13 + ["d", "11", "7", "3", "", "5"] + ["0"] * 20  # 13 % 10 = 3, 17 % 10 = 7
    _, ids = pre(tf.constant([row]))
    assert ids.numpy()[0, :6].tolist() == [2, 3, 3, 2, 1, 0]


def test_saved_model_round_trip_with_vocabulary_assets(tmp_path):
    vocab_dir = tmp_path / "vocab"
    vocab_dir.mkdir()
    paths, _, rows, oracle = _vocabulary_example(vocab_dir)
    pre = criteo.RawPreprocessor(vocabulary_files=paths)
    expected_dense, expected_ids = pre(tf.constant(rows))
    export_dir = str(tmp_path / "saved")
    tf.saved_model.save(pre, export_dir, signatures=pre.__call__.get_concrete_function())
    for path in paths:
        os.remove(path)
    assert sorted(os.listdir(os.path.join(export_dir, "assets"))) == sorted(
        os.path.basename(p) for p in paths
    )
    loaded = tf.saved_model.load(export_dir)
    dense, ids = loaded(tf.constant(rows))
    assert ids.numpy().tolist() == [oracle(r) for r in rows] == expected_ids.numpy().tolist()
    np.testing.assert_array_equal(dense.numpy(), expected_dense.numpy())
    outputs = loaded.signatures["serving_default"](tf.constant(rows))
    assert sorted(outputs) == ["output_0", "output_1"]


def test_from_metadata_dict(tmp_path):
    paths = _write_vocabularies(tmp_path, [[1, 2, 3]] * 26)
    metadata = {
        "data_dir": str(tmp_path),
        "preprocessing": {"max_ind_range": 0},
        "vocabulary_files": [os.path.basename(p) for p in paths],
        "table_sizes": [5] * 26,
    }
    pre = criteo.RawPreprocessor.from_metadata(metadata)
    assert pre.uses_vocabulary and pre.table_sizes == [5] * 26
    hashed = criteo.RawPreprocessor.from_metadata(
        {"preprocessing": {"max_ind_range": 7}, "vocabulary_files": None, "table_sizes": [7] * 26}
    )
    assert not hashed.uses_vocabulary and hashed.table_sizes == [7] * 26
