"""Tests of the tf.data reader (input_pipeline/dataset.py)."""

import json
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import convert, criteo, dataset
from input_pipeline import metadata as metadata_file
from input_pipeline import planted_signal as synthetic

NUM_LINES = 2000
RANGE = 5000


def oracle(lines):
    labels, dense, ids = [], [], []
    for line in lines:
        fields = line.split("\t")
        labels.append(float(fields[0]))
        dense.append([math.log(max(int(t), 0) + 1) if t else 0.0 for t in fields[1:14]])
        ids.append([(int(t, 16) if t else 0) % RANGE for t in fields[14:]])
    return np.array(labels, np.float32), np.array(dense, np.float32), np.array(ids, np.int64)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    lines = synthetic.generate(NUM_LINES, seed=21).lines()
    raw = root / "train.txt"
    raw.write_text("\n".join(lines) + "\n")
    convert.convert(
        "kaggle", str(raw), root / "out", max_ind_range=RANGE, categorical="hash",
        data_randomize="none", num_shards=4, block_rows=100,
    )  # fmt: skip
    return root / "out", oracle(lines)


def collect(ds):
    labels, dense, ids = [], [], []
    for features, label in ds:
        labels.append(label.numpy()[:, 0])
        dense.append(features["dense_features"].numpy())
        ids.append(features["sparse_features"].numpy())
    return np.concatenate(labels), np.concatenate(dense), np.concatenate(ids)


def row_keys(rows):
    label, dense, ids = rows
    return sorted(
        map(tuple, np.concatenate([label[:, None], dense, ids.astype(np.float64)], axis=1).tolist())
    )


def test_reads_training_rows_in_order(converted):
    data_dir, (labels, dense, ids) = converted
    metadata = metadata_file.read(data_dir)
    train = metadata["rows"]["train"]
    ds = dataset.make_dataset(data_dir, "train", 64)
    features, label = next(iter(ds))
    assert features["dense_features"].dtype == tf.float32 and features["dense_features"].shape == (
        64,
        13,
    )
    assert features["sparse_features"].dtype == tf.int64 and features["sparse_features"].shape == (
        64,
        26,
    )
    assert label.dtype == tf.float32 and label.shape == (64, 1)
    got = collect(ds)
    np.testing.assert_array_equal(got[0], labels[:train])
    np.testing.assert_array_max_ulp(got[1], dense[:train], 1)
    np.testing.assert_array_equal(got[2], ids[:train])


def test_batches_and_drop_remainder(converted):
    data_dir, _ = converted
    rows = metadata_file.read(data_dir)["rows"]["test"]
    sizes = [label.shape[0] for _, label in dataset.make_dataset(data_dir, "test", 37)]
    assert sum(sizes) == rows and set(sizes[:-1]) == {37}
    dropped = dataset.make_dataset(data_dir, "test", 37, drop_remainder=True)
    assert dropped.element_spec[1].shape == (37, 1)
    assert sum(label.shape[0] for _, label in dropped) == rows - rows % 37


def test_multi_hot_shape(converted):
    data_dir, _ = converted
    features, _ = next(iter(dataset.make_dataset(data_dir, "validation", 8, multi_hot=True)))
    assert features["sparse_features"].shape == (8, 26, 1)


def test_shuffle_covers_every_row_once_and_is_seeded(converted):
    data_dir, (labels, dense, ids) = converted
    train = metadata_file.read(data_dir)["rows"]["train"]
    first = collect(
        dataset.make_dataset(data_dir, "train", 50, shuffle=True, seed=3, shuffle_blocks=2)
    )
    again = collect(
        dataset.make_dataset(data_dir, "train", 50, shuffle=True, seed=3, shuffle_blocks=2)
    )
    assert row_keys(first) == row_keys((labels[:train], dense[:train], ids[:train]))
    np.testing.assert_array_equal(first[2], again[2])
    assert not np.array_equal(first[2], ids[:train])


def test_repeat(converted):
    data_dir, _ = converted
    rows = metadata_file.read(data_dir)["rows"]["validation"]
    ds = dataset.make_dataset(data_dir, "validation", 64, repeat=True, drop_remainder=True)
    batches = list(ds.take(2 * rows // 64 + 1))
    assert len(batches) == 2 * rows // 64 + 1


@pytest.mark.parametrize("pipelines", [2, 3, 5])
def test_input_context_shards_cover_every_row_once(converted, pipelines):
    data_dir, (labels, dense, ids) = converted
    train = metadata_file.read(data_dir)["rows"]["train"]
    parts = []
    for pipeline_id in range(pipelines):
        context = tf.distribute.InputContext(
            num_input_pipelines=pipelines,
            input_pipeline_id=pipeline_id,
            num_replicas_in_sync=pipelines,
        )
        ds = dataset.make_dataset(data_dir, "train", 30 * pipelines, input_context=context)
        got = collect(ds)
        assert len(got[0]) > 0
        assert max(label.shape[0] for _, label in ds) == 30  # per-replica batch
        parts.append(got)
    union = tuple(np.concatenate([p[k] for p in parts]) for k in range(3))
    assert row_keys(union) == row_keys((labels[:train], dense[:train], ids[:train]))


def _copy(data_dir, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(data_dir, target)
    return target


def test_ids_beyond_table_size_fail_naming_the_shard(converted, tmp_path):
    data_dir = _copy(converted[0], tmp_path)
    path = data_dir / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["table_sizes"][4] = 3
    path.write_text(json.dumps(metadata))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"out of range.*test-0000\d-of-00004"):
        collect(dataset.make_dataset(data_dir, "test", 64))


def test_truncated_shard_fails_naming_it(converted, tmp_path):
    data_dir = _copy(converted[0], tmp_path)
    shard = data_dir / "train-00001-of-00004.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match="train-00001-of-00004.tfrecord has .* bytes"):
        dataset.make_dataset(data_dir, "train", 64)


def test_corrupt_shard_fails_naming_it(converted, tmp_path):
    data_dir = _copy(converted[0], tmp_path)
    shard = data_dir / "train-00002-of-00004.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, broken checksum
    shard.write_bytes(bytes(data))
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="Corrupt or truncated shard.*train-00002-of-00004"
    ):
        collect(dataset.make_dataset(data_dir, "train", 64))


def test_missing_shard_and_metadata(converted, tmp_path):
    data_dir = _copy(converted[0], tmp_path)
    os.remove(data_dir / "validation-00003-of-00004.tfrecord")
    with pytest.raises(FileNotFoundError, match="validation-00003-of-00004.tfrecord is missing"):
        metadata_file.read(data_dir)
    with pytest.raises(FileNotFoundError, match="metadata.json not found"):
        metadata_file.read(tmp_path)


def test_unsupported_format_version(converted, tmp_path):
    data_dir = _copy(converted[0], tmp_path)
    path = data_dir / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["format_version"] = 99
    path.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=r"metadata.json: format_version 99 is not supported"):
        metadata_file.read(data_dir)


def test_unknown_split(converted):
    with pytest.raises(ValueError, match="Unknown split 'dev'"):
        dataset.make_dataset(converted[0], "dev", 8)


@pytest.mark.parametrize(
    "tamper, message",
    [
        ("absolute shard path", r"train shard '/.*' must be a path relative to"),
        ("../ shard path", r"train shard '../outside.tfrecord' points outside"),
        ("absolute vocabulary path", r"vocabulary file '/.*' must be a path relative to"),
        ("inflated rows", r"rows\['train'\] = 2715 but its shards record 1715 rows"),
        ("removed shard entry", r"train lists 3 shards, num_shards is 4"),
        (
            "moved rows between shards",
            r"shard train-00000-of-00004.tfrecord records 6 blocks and 600 rows; "
            r"the split's layout gives 5 and 500",
        ),
    ],
)
def test_tampered_metadata_is_refused(converted, tmp_path, tamper, message):
    data_dir = _copy(converted[0], tmp_path)
    path = data_dir / "metadata.json"
    metadata = json.loads(path.read_text())
    train = metadata["shards"]["train"]
    outside = tmp_path / "outside.tfrecord"
    shutil.copy(data_dir / train[0]["file"], outside)  # a real shard, just not inside
    if tamper == "absolute shard path":
        train[0]["file"] = str(outside)
    elif tamper == "../ shard path":
        train[0]["file"] = "../outside.tfrecord"
    elif tamper == "absolute vocabulary path":
        metadata["vocabulary_files"] = [str(outside)] * 26
    elif tamper == "inflated rows":
        metadata["rows"]["train"] += 1000
    elif tamper == "removed shard entry":
        del train[1]
    else:
        train[0]["rows"], train[1]["rows"] = train[0]["rows"] + 100, train[1]["rows"] - 100
        train[0]["blocks"], train[1]["blocks"] = train[0]["blocks"] + 1, train[1]["blocks"] - 1
    path.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=message):
        metadata_file.read(data_dir)
    if tamper == "absolute vocabulary path":  # what the export reads
        with pytest.raises(ValueError, match=message):
            criteo.RawPreprocessor.from_metadata(data_dir)
