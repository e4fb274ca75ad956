"""Tests of the raw -> TFRecord converter (the input_pipeline.convert package).

Every converted value is checked against an independent pure-Python parse of
the same lines, and shards are read back without the project's reader.
"""

import collections
import glob
import gzip
import json
import logging
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from cli_check import REPO, assert_one_error_line, run_module

from input_pipeline import convert, criteo
from input_pipeline import planted_signal as synthetic
from input_pipeline.convert import job, reading, row_cache, spill
from input_pipeline.convert import records as record_encoding
from input_pipeline.convert.ahead import map_ahead

# ---------------------------------------------------------------------------
# Independent oracle and shard reader.


def oracle_rows(lines, categorical):
    """``categorical(feature, text) -> id``; returns label, dense, ids arrays."""
    labels, dense, ids = [], [], []
    for line in lines:
        fields = line.split("\t")
        assert len(fields) == 40
        labels.append(int(fields[0]))
        dense.append([math.log(max(int(t), 0) + 1) if t else 0.0 for t in fields[1:14]])
        ids.append([categorical(f, t) for f, t in enumerate(fields[14:])])
    return (
        np.array(labels, np.uint8),
        np.array(dense, np.float64).astype(np.float32).reshape(-1, 13),
        np.array(ids, np.int64).reshape(-1, 26),
    )


def hashed(max_ind_range):
    return lambda feature, text: (int(text, 16) if text else 0) % max_ind_range


def reference_splits(total):
    """The reference's rule, restated: 7 days, first total % 7 one longer."""
    base, extra = divmod(total, 7)
    days = [base + (d < extra) for d in range(7)]
    train = sum(days[:6])
    test = (days[6] + 1) // 2
    return {"train": train, "test": test, "validation": days[6] - test}, days


def read_split(data_dir, split):
    """Rows of a split, reading blocks round-robin over the shards."""
    with open(os.path.join(data_dir, "metadata.json")) as f:
        metadata = json.load(f)
    compression = "GZIP" if metadata["compression"] == "gzip" else ""
    id_dtype = np.dtype(metadata["record_format"]["id_dtype"]).newbyteorder("<")
    per_shard = [
        list(
            tf.data.TFRecordDataset(
                os.path.join(data_dir, s["file"]), compression
            ).as_numpy_iterator()
        )
        for s in metadata["shards"][split]
    ]
    labels, dense, ids = [], [], []
    for k in range(max((len(r) for r in per_shard), default=0)):
        for records in per_shard:
            if k < len(records):
                feature = tf.train.Example.FromString(records[k]).features.feature
                n = feature["num_rows"].int64_list.value[0]
                labels.append(np.frombuffer(feature["label"].bytes_list.value[0], np.uint8))
                dense.append(
                    np.frombuffer(feature["dense"].bytes_list.value[0], "<f4").reshape(n, 13)
                )
                ids.append(
                    np.frombuffer(feature["ids"].bytes_list.value[0], id_dtype).reshape(n, 26)
                )
    if not labels:
        return np.zeros(0, np.uint8), np.zeros((0, 13), np.float32), np.zeros((0, 26), np.int64)
    return np.concatenate(labels), np.concatenate(dense), np.concatenate(ids).astype(np.int64)


def assert_rows_equal(actual, expected):
    np.testing.assert_array_equal(actual[0], expected[0])
    np.testing.assert_array_max_ulp(actual[1], expected[1], 1)
    np.testing.assert_array_equal(actual[2], expected[2])


def sort_rows(rows):
    label, dense, ids = rows
    key = np.concatenate([label[:, None].astype(np.float64), dense, ids], axis=1)
    order = np.lexsort(key.T[::-1])
    return label[order], dense[order], ids[order]


def write_lines(path, lines, newline="\n", final_newline=True):
    text = newline.join(lines) + (newline if final_newline else "")
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(text.encode())
    return str(path)


@pytest.fixture(scope="module")
def lines():
    return synthetic.generate(3001, seed=11).lines()


@pytest.fixture()
def raw_file(tmp_path, lines):
    return write_lines(tmp_path / "train.txt", lines)


# ---------------------------------------------------------------------------
# Round trips.


def test_hash_round_trip_every_value(tmp_path, raw_file, lines):
    out = tmp_path / "out"
    metadata = convert.convert(
        "kaggle",
        raw_file,
        out,
        max_ind_range=1000,
        categorical="hash",
        data_randomize="none",
        num_shards=3,
        block_rows=128,
    )
    sizes, _ = reference_splits(len(lines))
    assert metadata["rows"] == sizes
    assert metadata["table_sizes"] == [1000] * 26
    assert metadata["preprocessing"]["categorical"] == "hash"
    expected = oracle_rows(lines, hashed(1000))
    start = 0
    for split in ("train", "test", "validation"):
        stop = start + sizes[split]
        got = read_split(out, split)
        assert_rows_equal(got, tuple(a[start:stop] for a in expected))
        start = stop
    on_disk = json.loads((out / "metadata.json").read_text())
    assert on_disk["format_version"] == 1 and on_disk["data_set"] == "kaggle"
    assert on_disk["num_dense"] == 13 and on_disk["num_sparse"] == 26
    assert [s["file"] for s in on_disk["shards"]["train"]] == [
        f"train-0000{i}-of-00003.tfrecord" for i in range(3)
    ]
    assert on_disk["sources"] == [
        {"path": raw_file, "bytes": os.path.getsize(raw_file), "lines": 3001}
    ]
    assert on_disk["bad_lines"]["skipped"] == 0 and on_disk["block_rows"] == 128
    assert sorted(os.listdir(tmp_path)) == ["out", "train.txt"]  # no temporary leftovers


def vocabulary_oracle(train_lines, threshold, max_ind_range=0, categorical="hash"):
    counts = [collections.Counter() for _ in range(26)]
    for line in train_lines:
        for f, text in enumerate(line.split("\t")[14:]):
            if text:
                value = int(text, 16)
                counts[f][value % max_ind_range if max_ind_range else value] += 1
    vocabularies = []
    for counter in counts:
        kept = [(-c, v) for v, c in counter.items() if c >= threshold]
        vocabularies.append([v for _, v in sorted(kept)])
    positions = [{v: i for i, v in enumerate(vocab)} for vocab in vocabularies]

    def categorical(feature, text):
        if not text:
            return 1
        value = int(text, 16) % max_ind_range if max_ind_range else int(text, 16)
        return 2 + positions[feature][value] if value in positions[feature] else 0

    return vocabularies, categorical


@pytest.mark.parametrize(("threshold", "max_ind_range"), [(1, 0), (3, 0), (2, 500)])
def test_vocabulary_round_trip(tmp_path, raw_file, lines, threshold, max_ind_range):
    out = tmp_path / "out"
    metadata = convert.convert(
        "kaggle",
        raw_file,
        out,
        frequency_threshold=threshold,
        max_ind_range=max_ind_range,
        data_randomize="none",
        num_shards=2,
    )
    sizes, _ = reference_splits(len(lines))
    vocabularies, categorical = vocabulary_oracle(lines[: sizes["train"]], threshold, max_ind_range)
    assert metadata["table_sizes"] == [2 + len(v) for v in vocabularies]
    for f, path in enumerate(metadata["vocabulary_files"]):
        assert (out / path).read_text().split() == [str(v) for v in vocabularies[f]]
    expected = oracle_rows(lines, categorical)
    start = 0
    for split in ("train", "test", "validation"):
        stop = start + sizes[split]
        assert_rows_equal(read_split(out, split), tuple(a[start:stop] for a in expected))
        start = stop
    # The serving preprocessor built from the metadata agrees with the converter.
    pre = criteo.RawPreprocessor.from_metadata(str(out))
    dense, ids = pre(tf.constant([line.split("\t")[1:] for line in lines]))
    got = read_split(out, "train")
    np.testing.assert_array_equal(ids.numpy()[: sizes["train"]], got[2])
    np.testing.assert_array_equal(dense.numpy()[: sizes["train"]], got[1])


def test_raw_preprocessor_agrees_with_converter_hash(tmp_path, raw_file, lines):
    out = tmp_path / "out"
    convert.convert(
        "kaggle", raw_file, out, max_ind_range=977, categorical="hash", data_randomize="none"
    )
    pre = criteo.RawPreprocessor.from_metadata(str(out))
    dense, ids = pre(tf.constant([line.split("\t")[1:] for line in lines]))
    converted = [read_split(out, s) for s in ("train", "test", "validation")]
    np.testing.assert_array_equal(np.concatenate([c[1] for c in converted]), dense.numpy())
    np.testing.assert_array_equal(np.concatenate([c[2] for c in converted]), ids.numpy())


def reference_reduced_values(train_lines, max_ind_range):
    """The reference's ``getCriteoAdData`` restated: per feature, the distinct
    ``int(hex, 16) % max_ind_range`` of the (non-empty) training values."""
    distinct = [set() for _ in range(26)]
    for line in train_lines:
        for f, text in enumerate(line.split("\t")[14:]):
            if text:
                distinct[f].add(int(text, 16) % max_ind_range)
    return distinct


def test_max_ind_range_gives_the_reference_table_sizes(tmp_path, raw_file, lines):
    """``--max_ind_range=N`` alone: ``% N``, then contiguous ids per feature, so a
    table has ``min(distinct, N)`` value rows (plus the OOV and missing ids), not N."""
    n = 100
    out = tmp_path / "out"
    result = run_module(
        "input_pipeline.convert", f"--raw_data_file={raw_file}", f"--output_dir={out}",
        f"--max_ind_range={n}", "--data_randomize=none", "--num_shards=2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metadata = json.loads((out / "metadata.json").read_text())
    sizes, _ = reference_splits(len(lines))
    distinct = reference_reduced_values(lines[: sizes["train"]], n)
    expected_sizes = [criteo.FIRST_VOCABULARY_ID + len(d) for d in distinct]
    assert metadata["table_sizes"] == expected_sizes
    assert metadata["preprocessing"]["categorical"] == "vocabulary"
    # The data exercises both sides of the cap: some features have more than N
    # distinct reduced values (then exactly N), most have fewer.
    assert max(len(d) for d in distinct) == n and min(len(d) for d in distinct) < 10
    train, test = read_split(out, "train"), read_split(out, "test")
    fields = [line.split("\t")[14:] for line in lines[: sizes["train"]]]
    for f, size in enumerate(expected_sizes):
        ids = train[2][:, f]
        empty = np.array([row[f] == "" for row in fields])
        assert (ids[empty] == criteo.MISSING_ID).all()
        # Contiguous: the values seen take exactly the ids 2 .. size - 1 ...
        assert set(ids[~empty].tolist()) == set(range(criteo.FIRST_VOCABULARY_ID, size))
        # ... one id per reduced value and one reduced value per id.
        pairs = {
            (int(row[f], 16) % n, int(i)) for row, i in zip(fields, ids, strict=True) if row[f]
        }
        assert len(pairs) == len(distinct[f]) == len({i for _, i in pairs})
        assert test[2][:, f].max() < size


def test_categorical_hash_needs_a_range_and_no_threshold(tmp_path, raw_file):
    out = tmp_path / "out"
    result = run_module(
        "input_pipeline.convert", f"--raw_data_file={raw_file}", f"--output_dir={out}",
        "--categorical=hash",
    )  # fmt: skip
    assert_one_error_line(
        result.returncode, result.stderr, "--categorical=hash needs --max_ind_range=N > 0"
    )
    assert not out.exists()
    with pytest.raises(ValueError, match="`frequency_threshold`=2 applies to vocabularies"):
        convert.convert(
            "kaggle", raw_file, out, max_ind_range=10, frequency_threshold=2, categorical="hash"
        )
    assert not out.exists()


@pytest.mark.parametrize("total", [1, 6, 7, 8, 13, 20, 51, 100])
def test_split_sizes_follow_reference_rule(tmp_path, total):
    lines = synthetic.generate(total, seed=total).lines()
    raw = write_lines(tmp_path / "train.txt", lines)
    metadata = convert.convert(
        "kaggle", raw, tmp_path / "out", max_ind_range=10, categorical="hash", data_randomize="none"
    )
    sizes, _ = reference_splits(total)
    assert metadata["rows"] == sizes
    labels = np.array([int(line[0]) for line in lines], np.uint8)
    assert (
        read_split(tmp_path / "out", "validation")[0].tolist()
        == labels[total - sizes["validation"] :].tolist()
    )


def test_terabyte_days(tmp_path):
    days = [synthetic.generate(n, seed=i).lines() for i, n in enumerate((40, 31, 25))]
    directory = tmp_path / "raw"
    directory.mkdir()
    # day_10 sorts after day_2 by day number, not by name.
    for name, day in zip(("day_0.gz", "day_2", "day_10"), days, strict=True):
        write_lines(directory / name, day)
    metadata = convert.convert(
        "terabyte",
        directory,
        tmp_path / "out",
        max_ind_range=100,
        categorical="hash",
        data_randomize="none",
    )
    assert metadata["rows"] == {"train": 71, "test": 13, "validation": 12}
    assert [os.path.basename(s["path"]) for s in metadata["sources"]] == [
        "day_0.gz",
        "day_2",
        "day_10",
    ]
    expected = oracle_rows(days[0] + days[1] + days[2], hashed(100))
    assert_rows_equal(read_split(tmp_path / "out", "train"), tuple(a[:71] for a in expected))
    assert_rows_equal(read_split(tmp_path / "out", "test"), tuple(a[71:84] for a in expected))


def test_gzip_input_and_output(tmp_path, lines):
    raw = write_lines(tmp_path / "train.txt.gz", lines)
    metadata = convert.convert(
        "kaggle",
        raw,
        tmp_path / "out",
        max_ind_range=1000,
        categorical="hash",
        data_randomize="none",
        compression="gzip",
    )
    assert all(s["file"].endswith(".tfrecord.gz") for s in metadata["shards"]["train"])
    sizes, _ = reference_splits(len(lines))
    expected = oracle_rows(lines[: sizes["train"]], hashed(1000))
    assert_rows_equal(read_split(tmp_path / "out", "train"), expected)


# ---------------------------------------------------------------------------
# Shuffling and sub-sampling.


@pytest.mark.parametrize("mode", ["total", "day"])
def test_randomize_is_a_permutation_of_training_rows(tmp_path, raw_file, lines, mode):
    metadata = convert.convert(
        "kaggle",
        raw_file,
        tmp_path / "out",
        max_ind_range=1000,
        categorical="hash",
        data_randomize=mode,
    )
    sizes, days = reference_splits(len(lines))
    expected = oracle_rows(lines, hashed(1000))
    got = read_split(tmp_path / "out", "train")
    assert_rows_equal(sort_rows(got), sort_rows(tuple(a[: sizes["train"]] for a in expected)))
    assert not np.array_equal(got[2], expected[2][: sizes["train"]])  # really shuffled
    # Test and validation keep file order.
    test = read_split(tmp_path / "out", "test")
    assert_rows_equal(
        test, tuple(a[sizes["train"] : sizes["train"] + sizes["test"]] for a in expected)
    )
    if mode == "day":
        start = 0
        for day in days[:6]:
            segment = tuple(a[start : start + day] for a in got)
            assert_rows_equal(
                sort_rows(segment), sort_rows(tuple(a[start : start + day] for a in expected))
            )
            start += day
    assert metadata["preprocessing"]["data_randomize"] == mode


def test_shuffle_buckets_split_when_too_large(tmp_path, raw_file, lines, monkeypatch):
    monkeypatch.setattr(spill, "SPILL_BUCKET_ROWS", 100)
    monkeypatch.setattr(spill, "SPILL_BUFFER_BYTES", 10_000)
    sizes, _ = reference_splits(len(lines))
    # Too few buckets planned: the spill must split them again.
    original = spill.ShuffleSpill.start_group
    monkeypatch.setattr(
        spill.ShuffleSpill,
        "start_group",
        lambda self, group, rows: original(self, group, rows // 20),
    )
    convert.convert(
        "kaggle",
        raw_file,
        tmp_path / "out",
        max_ind_range=1000,
        categorical="hash",
        data_randomize="total",
    )
    expected = oracle_rows(lines[: sizes["train"]], hashed(1000))
    assert_rows_equal(sort_rows(read_split(tmp_path / "out", "train")), sort_rows(expected))


def test_sub_sampling_drops_only_training_negatives(tmp_path, raw_file, lines):
    kwargs = dict(
        max_ind_range=1000,
        categorical="hash",
        data_randomize="none",
        data_sub_sample_rate=0.5,
        seed=5,
    )
    metadata = convert.convert("kaggle", raw_file, tmp_path / "a", **kwargs)
    sizes, _ = reference_splits(len(lines))
    expected = oracle_rows(lines, hashed(1000))
    train_labels = expected[0][: sizes["train"]]
    got = read_split(tmp_path / "a", "train")
    positives, negatives = int(train_labels.sum()), int((train_labels == 0).sum())
    assert int(got[0].sum()) == positives
    kept = int((got[0] == 0).sum())
    assert abs(kept - negatives / 2) < 4 * math.sqrt(negatives / 4)
    # The kept rows are a subsequence of the training rows, in order.
    positive_rows = expected[2][: sizes["train"]][train_labels == 1]
    np.testing.assert_array_equal(got[2][got[0] == 1], positive_rows)
    assert (
        metadata["rows"]["test"] == sizes["test"]
        and metadata["rows"]["validation"] == sizes["validation"]
    )
    again = convert.convert("kaggle", raw_file, tmp_path / "b", **kwargs)
    assert again["rows"] == metadata["rows"]
    np.testing.assert_array_equal(read_split(tmp_path / "b", "train")[2], got[2])


# ---------------------------------------------------------------------------
# Vocabulary mode: the text parsed once.


def _reparsing_the_text(directory, sources, plan, settings, bad_lines):
    """Vocabulary mode as it was: a pass that only counts values, then a pass that
    parses the text again (the hash mode's conversion pass, with the vocabularies)."""
    cache = row_cache.RowCache(os.path.join(directory, "_counting"), row_cache.parsed_dtype(0))
    files, _ = job.counting_pass(
        directory, sources, plan, settings, convert.BadLines(bad_lines.policy), cache, None
    )
    cache.close()
    shutil.rmtree(cache.directory)
    preprocessor = criteo.RawPreprocessor(
        max_ind_range=settings.max_ind_range,
        vocabulary_files=[os.path.join(directory, p) for p in files],
    )
    id_dtype = job._id_dtype(preprocessor.table_sizes)
    shards = job.conversion_pass(
        directory, sources, plan, settings, bad_lines, preprocessor, id_dtype
    )
    return files, list(preprocessor.table_sizes), id_dtype, shards


def dataset_bytes(data_dir):
    """Every file of a dataset (metadata.json without its own location)."""
    files = {}
    for relative in convert.dataset_files(str(data_dir)):
        files[relative] = (data_dir / relative).read_bytes()
    metadata = json.loads(files.pop("metadata.json"))
    metadata.pop("data_dir", None)
    return files, metadata


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(data_randomize="total", max_ind_range=0),
        dict(data_randomize="day", max_ind_range=300, block_rows=100, num_shards=3),
        dict(data_randomize="none", frequency_threshold=2, compression="gzip"),
        dict(data_randomize="total", data_sub_sample_rate=0.4, bad_lines="skip", seed=9),
    ],
)
def test_vocabulary_mode_writes_what_reparsing_the_text_wrote(tmp_path, lines, monkeypatch, kwargs):
    body = list(lines)
    body[5] = "1\t2"  # a bad training line, and a bad validation line
    body[-3] = body[-3].replace("\t", "\t-x", 1)
    raw = write_lines(tmp_path / "train.txt", body if "bad_lines" in kwargs else lines)
    # Small shuffle buckets, some of them split again.
    monkeypatch.setattr(spill, "SPILL_BUCKET_ROWS", 200)
    monkeypatch.setattr(spill, "SPILL_BUFFER_BYTES", 50_000)
    once = convert.convert("kaggle", raw, tmp_path / "once", **kwargs)
    monkeypatch.setattr(job, "_convert_with_vocabulary", _reparsing_the_text)
    twice = convert.convert("kaggle", raw, tmp_path / "twice", **kwargs)
    assert once["rows"] == twice["rows"] and once["bad_lines"] == twice["bad_lines"]
    assert dataset_bytes(tmp_path / "once") == dataset_bytes(tmp_path / "twice")
    if "bad_lines" in kwargs:
        assert once["bad_lines"]["skipped"] == 2
    assert sorted(os.listdir(tmp_path)) == ["once", "train.txt", "twice"]


@pytest.mark.parametrize("max_ind_range", [0, 1000, 2**31])
def test_row_cache_gives_back_the_rows_of_each_split_in_order(tmp_path, max_ind_range):
    dtype = row_cache.parsed_dtype(max_ind_range)
    assert dtype["values"].base == np.dtype("<i4" if max_ind_range else "<i8")
    cache = row_cache.RowCache(str(tmp_path / "rows"), dtype)
    rng = np.random.default_rng(0)
    top = max_ind_range or 2**60
    added = {"train": [], "test": []}
    for k in range(7):
        split = "train" if k % 3 else "test"
        n = int(rng.integers(0, 40))
        columns = (
            rng.integers(0, 2, n).astype(np.uint8),
            rng.random((n, 13), np.float32),
            rng.integers(-1, top, (n, 26)),
        )
        cache.writer(split).add(*columns)
        added[split].append(columns)
    for split, parts in added.items():
        blocks = list(cache.rows(split, block_rows=16))
        assert all(len(b) <= 16 for b in blocks) and len(blocks) > 1
        rows = np.concatenate(blocks)
        for name, column in zip(dtype.names, zip(*parts, strict=True), strict=True):
            np.testing.assert_array_equal(rows[name], np.concatenate(column))
    assert list(cache.rows("validation")) == []
    assert os.listdir(tmp_path / "rows") == []


def test_map_ahead_keeps_order_and_reports_errors_in_place():
    assert list(map_ahead(lambda x: x * x, range(50), threads=3)) == [x * x for x in range(50)]

    def items():
        yield from range(5)
        raise OSError("read failed")

    results = []
    with pytest.raises(OSError, match="read failed"):
        for result in map_ahead(lambda x: -x, items(), threads=2):
            results.append(result)
    assert results == [0, -1, -2, -3, -4]  # everything read before the error
    with pytest.raises(ZeroDivisionError):
        list(map_ahead(lambda x: 1 // (x - 3), range(6), threads=2))


# ---------------------------------------------------------------------------
# Bad input.


def _bad_line_cases(good):
    fields = good.split("\t")

    def replace(index, value):
        copy = list(fields)
        copy[index] = value
        return "\t".join(copy)

    return {
        "wrong field count": ("\t".join(fields[:-1]), "expected 40 tab-separated fields, found 39"),
        "non-integer count": (replace(3, "12x"), "field I3 '12x' is not an integer count"),
        "non-hex categorical": (replace(20, "zz11"), "field C7 'zz11' is not a hexadecimal"),
        "label not 0/1": (replace(0, "2"), "label '2' is not 0 or 1"),
        "empty line": ("", "expected 40 tab-separated fields, found 1"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong field count",
        "non-integer count",
        "non-hex categorical",
        "label not 0/1",
        "empty line",
    ],
)
def test_bad_line_error_names_file_and_line(tmp_path, lines, case):
    bad, message = _bad_line_cases(lines[0])[case]
    raw = write_lines(tmp_path / "train.txt", lines[:40] + [bad] + lines[40:60])
    with pytest.raises(convert.BadInputError) as error:
        convert.convert("kaggle", raw, tmp_path / "out", max_ind_range=10, categorical="hash")
    assert str(error.value).startswith(f"{raw}:41: ")
    assert message in str(error.value)
    assert not (tmp_path / "out").exists()


def convert_skipping_bad_lines(raw, out):
    """Hashed ids in file order, bad lines skipped and counted."""
    return convert.convert(
        "kaggle", raw, out, max_ind_range=10, categorical="hash", bad_lines="skip",
        data_randomize="none",
    )  # fmt: skip


def test_bad_lines_skip_counts_and_keeps_boundaries(tmp_path, lines):
    cases = _bad_line_cases(lines[0])
    body = list(lines[:70])
    for k, (bad, _) in enumerate(cases.values()):
        body[3 + 5 * k] = bad  # all in day 0 (train)
    raw = write_lines(tmp_path / "train.txt", body)
    metadata = convert_skipping_bad_lines(raw, tmp_path / "out")
    sizes, _ = reference_splits(70)
    assert metadata["bad_lines"]["skipped"] == len(cases)
    assert metadata["rows"] == {**sizes, "train": sizes["train"] - len(cases)}
    first = metadata["bad_lines"]["examples"][0]
    assert (first["file"], first["line"]) == (str(raw), 4)
    good = [line for i, line in enumerate(body[: sizes["train"]]) if i not in {3, 8, 13, 18, 23}]
    assert_rows_equal(read_split(tmp_path / "out", "train"), oracle_rows(good, hashed(10)))


def test_crlf_is_accepted(tmp_path, lines):
    lf = write_lines(tmp_path / "lf.txt", lines[:50])
    crlf = write_lines(tmp_path / "crlf.txt", lines[:50], newline="\r\n")
    convert.convert(
        "kaggle", lf, tmp_path / "a", max_ind_range=99, categorical="hash", data_randomize="none"
    )
    convert.convert(
        "kaggle", crlf, tmp_path / "b", max_ind_range=99, categorical="hash", data_randomize="none"
    )
    for split in ("train", "test", "validation"):
        assert_rows_equal(read_split(tmp_path / "b", split), read_split(tmp_path / "a", split))


def test_last_line_without_newline(tmp_path, lines):
    complete = write_lines(tmp_path / "complete.txt", lines[:30], final_newline=False)
    metadata = convert.convert(
        "kaggle", complete, tmp_path / "a", max_ind_range=99, categorical="hash"
    )
    assert sum(metadata["rows"].values()) == 30
    cut = lines[29][: len(lines[29]) // 2]
    truncated = write_lines(tmp_path / "truncated.txt", lines[:29] + [cut], final_newline=False)
    with pytest.raises(convert.BadInputError, match=r"truncated.txt:30: expected 40"):
        convert.convert("kaggle", truncated, tmp_path / "b", max_ind_range=99, categorical="hash")


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "train.txt"
    empty.write_bytes(b"")
    with pytest.raises(convert.BadInputError, match="empty file"):
        convert.convert(
            "kaggle", str(empty), tmp_path / "out", max_ind_range=10, categorical="hash"
        )
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        convert.convert(
            "kaggle",
            str(tmp_path / "nope.txt"),
            tmp_path / "out",
            max_ind_range=10,
            categorical="hash",
        )
    with pytest.raises(FileNotFoundError, match=r"day_\*"):
        convert.convert(
            "terabyte",
            str(tmp_path / "day_*"),
            tmp_path / "out",
            max_ind_range=10,
            categorical="hash",
        )
    assert sorted(os.listdir(tmp_path)) == ["train.txt"]


def test_truncated_gzip(tmp_path, lines):
    raw = write_lines(tmp_path / "train.txt.gz", lines)
    data = open(raw, "rb").read()
    with open(raw, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(convert.BadInputError, match=r"train.txt.gz: truncated or corrupt gzip"):
        convert.convert("kaggle", raw, tmp_path / "out", max_ind_range=10, categorical="hash")
    assert sorted(os.listdir(tmp_path)) == ["train.txt.gz"]


# ---------------------------------------------------------------------------
# Atomicity and reruns.


def test_failure_leaves_no_output_and_keeps_existing(tmp_path, raw_file, monkeypatch):
    out = tmp_path / "out"
    first = convert.convert(
        "kaggle", raw_file, out, max_ind_range=10, categorical="hash", data_randomize="none"
    )
    before = {p: (out / p).read_bytes() for p in os.listdir(out)}

    calls = []
    real = record_encoding.serialize_block

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(record_encoding, "serialize_block", failing)
    with pytest.raises(OSError, match="disk full"):
        convert.convert(
            "kaggle",
            raw_file,
            out,
            max_ind_range=20,
            categorical="hash",
            data_randomize="none",
            block_rows=64,
            overwrite=True,
        )
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before
    with pytest.raises(OSError, match="disk full"):
        calls.clear()
        convert.convert(
            "kaggle",
            raw_file,
            tmp_path / "fresh",
            max_ind_range=20,
            categorical="hash",
            block_rows=64,
        )
    assert sorted(os.listdir(tmp_path)) == ["out", "train.txt"]
    assert first["table_sizes"] == [10] * 26


def test_existing_output_is_refused_unless_overwrite(tmp_path, raw_file):
    out = tmp_path / "out"
    convert.convert("kaggle", raw_file, out, max_ind_range=10, categorical="hash")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert.convert("kaggle", raw_file, out, max_ind_range=20, categorical="hash")
    metadata = convert.convert(
        "kaggle", raw_file, out, max_ind_range=20, categorical="hash", overwrite=True
    )
    assert (
        json.loads((out / "metadata.json").read_text())["table_sizes"]
        == metadata["table_sizes"]
        == [20] * 26
    )
    assert sorted(os.listdir(tmp_path)) == ["out", "train.txt"]


def test_cli(tmp_path, lines):
    raw = write_lines(tmp_path / "train.txt", lines[:100])
    result = subprocess.run(
        [
            sys.executable, "-m", "input_pipeline.convert", "--data_set=kaggle",
            f"--raw_data_file={raw}", f"--output_dir={tmp_path / 'out'}", "--max_ind_range=50",
            "--categorical=hash", "--num_shards=2", "--data_randomize=day",
        ],
        capture_output=True, text=True, check=False, cwd=os.path.dirname(os.path.dirname(__file__)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rows"] == reference_splits(100)[0]


def test_cli_without_a_compiler_parses_in_numpy_and_writes_the_same_dataset(tmp_path, lines):
    raw = write_lines(tmp_path / "train.txt", lines[:3000])

    def run(out, **env):
        result = subprocess.run(
            [
                sys.executable, "-m", "input_pipeline.convert", "--data_set=kaggle",
                f"--raw_data_file={raw}", f"--output_dir={out}", "--num_shards=2",
            ],
            capture_output=True, text=True, check=False, cwd=REPO, env=dict(os.environ, **env),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    run(tmp_path / "kernel")
    fallback = run(
        tmp_path / "numpy", CXX="no-such-compiler", DLRM_TF_KERNEL_CACHE=str(tmp_path / "empty")
    )
    assert "criteo_lines: no C++ compiler" in fallback.stderr
    assert "the NumPy line parser" in fallback.stderr
    written = tree(tmp_path / "kernel")
    assert any(name.startswith("train-") for name in written)
    assert tree(tmp_path / "numpy") == written


# ---------------------------------------------------------------------------
# Output safety: what --overwrite may replace, one writer, leftovers of a kill.


def tree(path):
    """Every file under ``path`` (relative) -> its bytes."""
    found = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                found[os.path.relpath(full, path)] = f.read()
    return found


@pytest.mark.parametrize("case", ["raw inside", "foreign dir", "dataset plus a file", "file"])
def test_overwrite_replaces_only_a_dataset_of_ours(tmp_path, lines, case):
    out = tmp_path / "out"
    raw = write_lines(tmp_path / "train.txt", lines[:100])
    if case == "raw inside":
        out.mkdir()
        raw = write_lines(out / "train.txt", lines[:100])
        expected = "contains the raw input"
    elif case == "foreign dir":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        expected = "is not a dataset written by this converter (it holds notes.txt and no "
    elif case == "dataset plus a file":
        convert.convert("kaggle", raw, out, max_ind_range=10, categorical="hash")
        (out / "mine.txt").write_text("mine")
        expected = "(it also holds mine.txt)"
    else:
        out.write_text("a file")
        expected = "exists and is not a directory"
    before = tree(tmp_path)
    with pytest.raises((convert.BadInputError, FileExistsError), match=re.escape(expected)):
        convert.convert("kaggle", raw, out, max_ind_range=20, categorical="hash", overwrite=True)
    assert tree(tmp_path) == before  # nothing deleted, moved or added (no hidden .old-*)


def test_overwrite_replaces_a_dataset_and_removes_only_its_files(tmp_path, lines):
    raw = write_lines(tmp_path / "train.txt", lines[:100])
    out = tmp_path / "out"
    convert.convert("kaggle", raw, out, max_ind_range=10, categorical="hash", num_shards=3)
    umask = os.umask(0o022)
    try:
        convert.convert(
            "kaggle", raw, out, max_ind_range=20, categorical="hash", num_shards=2, overwrite=True
        )
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o755  # as any new directory, not mkdtemp's 0700
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["table_sizes"] == [20] * 26
    listed = {"metadata.json"} | {s["file"] for v in metadata["shards"].values() for s in v}
    assert set(os.listdir(out)) == listed  # the 3-shard files are gone
    assert sorted(os.listdir(tmp_path)) == ["out", "train.txt"]


def _converter(raw, out, *extra):
    return subprocess.Popen(
        [
            sys.executable, "-m", "input_pipeline.convert", f"--raw_data_file={raw}",
            f"--output_dir={out}", "--max_ind_range=50", "--categorical=hash", "--num_shards=2",
            *extra,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
    )  # fmt: skip


def _wait_for(condition, process, what):
    deadline = time.monotonic() + 300
    while not condition():
        assert process.poll() is None, f"converter ended before {what}: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _lock_holder(out):
    try:
        return (out.parent / f".{out.name}.lock").read_text().split(" ")[0]
    except FileNotFoundError:
        return ""


def test_two_converters_one_output(tmp_path, lines):
    out = tmp_path / "out"
    first_raw = write_lines(tmp_path / "a.txt", lines[:700])
    second_raw = write_lines(tmp_path / "b.txt", lines[700:1000])
    first = _converter(first_raw, out, "--data_randomize=none")
    try:
        # Freeze the first converter while it holds the lock: the second one starts
        # while the first is certainly mid-conversion.
        _wait_for(lambda: _lock_holder(out) == str(first.pid), first, "the lock")
        os.kill(first.pid, signal.SIGSTOP)
        second = _converter(second_raw, out, "--data_randomize=none")
        _, second_err = second.communicate(timeout=300)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first_out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    line = assert_one_error_line(
        second.returncode, second_err, f"--output_dir={out} is being written by another process"
    )
    assert f"pid {first.pid} on " in line
    # The survivor is complete and holds exactly the first converter's input.
    summary = json.loads(first_out.strip().splitlines()[-1])
    assert summary["rows"] == reference_splits(700)[0]
    train = sum(reference_splits(700)[1][:6])
    assert_rows_equal(read_split(out, "train"), oracle_rows(lines[:train], hashed(50)))
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt", "out"]


def test_rerun_after_kill_removes_only_its_own_leftovers(tmp_path, lines, caplog):
    raw = write_lines(tmp_path / "train.txt", lines)
    out = tmp_path / "out"
    other = tmp_path / ".other.tmp-keep"  # another output's leftover: not ours to remove
    other.mkdir()
    killed = _converter(raw, out)
    try:
        _wait_for(lambda: glob.glob(str(tmp_path / ".out.tmp-*" / "*")), killed, "its work")
    finally:
        killed.kill()
        killed.wait()
    leftovers = glob.glob(str(tmp_path / ".out.tmp-*"))
    assert len(leftovers) == 1 and _lock_holder(out) == str(killed.pid)
    with caplog.at_level(logging.INFO):
        convert.convert("kaggle", raw, out, max_ind_range=50, categorical="hash", num_shards=2)
    assert sorted(os.listdir(tmp_path)) == [".other.tmp-keep", "out", "train.txt"]
    assert f"removed {leftovers[0]} (" in caplog.text
    assert f"lock left by {killed.pid} on " in caplog.text


def test_long_bad_lines_are_skipped_and_kept_short(tmp_path, lines):
    body = list(lines[:70])
    body[3] = lines[3] + "x" * (3 << 20)  # longer than the 1 MiB line limit
    fields = lines[10].split("\t")
    body[10] = "\t".join([fields[0], "7" * 19, *fields[2:]])  # a 19-digit count
    body[30] = "y" * (3 << 19)  # long, and with whole lines before and after in one read
    body[69] = "9" * (convert.MAX_LINE_BYTES + 10)  # the last line, no newline after it
    raw = write_lines(tmp_path / "train.txt", body, final_newline=False)
    with pytest.raises(convert.BadInputError, match=":4: line longer than 1048576 bytes"):
        convert.convert("kaggle", raw, tmp_path / "strict", max_ind_range=10, categorical="hash")
    metadata = convert_skipping_bad_lines(raw, tmp_path / "out")
    sizes, _ = reference_splits(70)  # the skipped lines keep their place in the split
    assert metadata["rows"] == {**sizes, "train": sizes["train"] - 3, "validation": 4}
    examples = metadata["bad_lines"]["examples"]
    assert [(e["line"], e["reason"]) for e in examples] == [
        (4, "line longer than 1048576 bytes"),
        (11, "field I1 '7777777777777777777' is not an integer count of at most 18 digits"),
        (31, "line longer than 1048576 bytes"),
        (70, "line longer than 1048576 bytes"),
    ]
    assert examples[0]["text"] == body[3][:200]
    assert os.path.getsize(tmp_path / "out" / "metadata.json") < 20_000
    good = [line for i, line in enumerate(body[: sizes["train"]]) if i not in (3, 10, 30)]
    assert_rows_equal(read_split(tmp_path / "out", "train"), oracle_rows(good, hashed(10)))


LINE_COUNT_CASES = [
    b"",
    b"\n",
    b"\n\n",
    b"a",
    b"a\n",
    b"a\r\n",
    b"\r",
    b"a\nb",
    b"a\r\nb\r\n",
    b"ab\rcd\n",
    b"x" * 40 + b"\n" + b"y" * 63 + b"\n" + b"z" * 64,  # around a read's end
    b"\n".join(b"w" * n for n in range(0, 140, 7)),
    b"q" * 127 + b"\n" + b"r" * 128 + b"\n",  # around half the line limit
    b"s\n" + b"t" * 300 + b"\nu\n",  # a too-long line in the middle
    b"s\n" + b"t" * 257,  # a too-long last line
    b"v" * 1000,
]


@pytest.mark.parametrize("case", range(len(LINE_COUNT_CASES)))
@pytest.mark.parametrize("suffix", [".txt", ".txt.gz"])
def test_line_count_is_the_chunk_readers(tmp_path, monkeypatch, case, suffix):
    """The line count pass (a newline count over one buffer) counts what the chunk
    reader yields, with reads and the line limit shrunk to a few bytes."""
    monkeypatch.setattr(reading, "READ_CHUNK_BYTES", 64)
    monkeypatch.setattr(reading, "MAX_LINE_BYTES", 256)
    data = LINE_COUNT_CASES[case]
    path = tmp_path / f"train{suffix}"
    with (gzip.open if suffix.endswith(".gz") else open)(path, "wb") as f:
        f.write(data)
    source = convert.Source(str(path), os.path.getsize(path))
    chunks = list(reading.iter_chunks(str(path), None, {}))
    assert convert.count_source_lines(source, skip_long_lines=True) == sum(
        map(reading.chunk_lines, chunks)
    )
    longest = max(len(line) for line in data.split(b"\n"))
    if longest > 256:
        with pytest.raises(convert.BadInputError, match=":[123]: line longer than 256 bytes"):
            convert.count_source_lines(source)
    elif longest < 128:
        # Lines shorter than half the limit are counted without the chunk reader.
        monkeypatch.setattr(reading, "iter_chunks", None)
        assert convert.count_source_lines(source) == sum(map(reading.chunk_lines, chunks))


def test_fifo_and_symlink_loop_say_what_they_are(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(convert.BadInputError, match="is a FIFO"):
        convert.convert("kaggle", fifo, tmp_path / "out")
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    with pytest.raises(convert.BadInputError, match="Too many levels of symbolic links"):
        convert.convert("kaggle", loop, tmp_path / "out")


@pytest.mark.parametrize(
    "mistake, message",
    [
        ("output is the input", "contains the raw input"),
        ("missing input", "Raw data file not found"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path, lines, mistake, message):
    raw = write_lines(tmp_path / "train.txt", lines[:50])
    if mistake == "output is the input":
        process = _converter(raw, tmp_path, "--overwrite")
    else:
        process = _converter(tmp_path / "nothing.txt", tmp_path / "out")
    _, stderr = process.communicate(timeout=300)
    assert_one_error_line(process.returncode, stderr, message)
    assert (tmp_path / "train.txt").read_text().count("\n") == 50
