"""Tests of the TFDS builder criteo_kaggle, built from a generated manual_dir."""

import math

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import planted_signal as synthetic
from input_pipeline import tfds_criteo


def test_build_and_read_back(tmp_path):
    total = 500
    lines = synthetic.generate(total, seed=8).lines()
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "train.txt").write_text("\n".join(lines) + "\n")
    config = tfds_criteo.CriteoKaggleConfig(name="hashed_1000", max_ind_range=1000)
    builder = tfds_criteo.CriteoKaggle(config=config, data_dir=str(tmp_path / "tfds"))
    assert builder.name == "criteo_kaggle"
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual), try_download_gcs=False)
    )
    base, extra = divmod(total, 7)
    days = [base + (d < extra) for d in range(7)]
    train = sum(days[:6])
    test = (days[6] + 1) // 2
    bounds = {
        "train": (0, train),
        "test": (train, train + test),
        "validation": (train + test, total),
    }
    for split, (start, stop) in bounds.items():
        assert builder.info.splits[split].num_examples == stop - start
        examples = sorted(
            tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)),
            key=lambda e: e["dense_features"].tolist() + e["sparse_features"].tolist(),
        )
        expected = []
        for line in lines[start:stop]:
            fields = line.split("\t")
            expected.append(
                (
                    int(fields[0]),
                    np.float32([math.log(max(int(t), 0) + 1) if t else 0.0 for t in fields[1:14]]),
                    [(int(t, 16) if t else 0) % 1000 for t in fields[14:]],
                )
            )
        expected.sort(key=lambda e: e[1].tolist() + e[2])
        for got, (label, dense, ids) in zip(examples, expected, strict=True):
            assert got["label"] == label
            np.testing.assert_array_max_ulp(got["dense_features"], dense, 1)
            assert got["sparse_features"].tolist() == ids


def test_manual_dir_without_train_txt(tmp_path):
    builder = tfds_criteo.CriteoKaggle(config="hashed_1m", data_dir=str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=str(tmp_path), try_download_gcs=False
            )
        )
