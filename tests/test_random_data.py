"""Tests of the random data generator: exact reference stream and distributions."""

from __future__ import annotations

import numpy as np
import pytest

from input_pipeline import random_data
from input_pipeline.random_data import (
    batch_sizes,
    chain_starts,
    random_batch,
    random_dataset,
)


def reference_loop(rs: np.random.RandomState, table_sizes, num_dense, n, h, fixed):
    """The reference's per-example algorithm, example by example, on one stream."""
    dense = rs.rand(n, num_dense).astype(np.float32)
    bags = []
    for size in table_sizes:
        table = []
        for _ in range(n):
            if fixed:
                k = h
            else:
                r = rs.random_sample(1)[0]
                k = int(max(1.0, np.round(r * min(size, h))))
            u = rs.random_sample(k)
            table.append(np.unique(np.round(u * (size - 1)).astype(np.int64)).tolist())
        bags.append(table)
    targets = rs.rand(n, 1).astype(np.float32)
    return dense, bags, targets


def as_bags(ids: np.ndarray) -> list[list[list[int]]]:
    """[n, T, H] padded -> per table, per example, the ids (checks the -1 tail)."""
    out = []
    for t in range(ids.shape[1]):
        table = []
        for row in ids[:, t, :]:
            valid = row[row >= 0]
            assert (row[valid.size :] == -1).all(), row
            table.append(valid.tolist())
        out.append(table)
    return out


@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize(
    ("table_sizes", "h"), [([4, 3, 2], 10), ([100, 1, 7, 10**6], 5), ([50, 9], 1)]
)
def test_random_batch_reproduces_reference_stream(table_sizes, h, fixed) -> None:
    ours, theirs = np.random.RandomState(123), np.random.RandomState(123)
    for n in (37, 64, 1, 5):  # consecutive batches continue the same stream
        dense, bags, targets = reference_loop(theirs, table_sizes, 3, n, h, fixed)
        d, ids, y = random_batch(ours, table_sizes, 3, n, h, fixed)
        np.testing.assert_array_equal(d, dense)
        np.testing.assert_array_equal(y, targets)
        assert ids.shape == (n, len(table_sizes), h) and ids.dtype == np.int64
        assert as_bags(ids) == bags


def test_chain_starts_matches_walk() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 6, size=400)
    walk, p = [], 0
    for _ in range(60):
        walk.append(p)
        p += 1 + int(sizes[p])
    assert chain_starts(sizes, 60).tolist() == walk
    assert chain_starts(sizes, 1).tolist() == [0]


def test_batch_sizes_follow_reference() -> None:
    assert batch_sizes(4, 0, 10) == [4, 4, 2]
    assert batch_sizes(4, 0, 8) == [4, 4]
    assert batch_sizes(4, 3, 10) == [4, 4, 4]  # num_batches wins over data_size
    with pytest.raises(ValueError, match="data_size"):
        batch_sizes(4, 0, None)
    with pytest.raises(ValueError, match="batch_size"):
        batch_sizes(0, 1, None)


def collect(ds):
    return [(f["dense_features"].numpy(), f["sparse_features"].numpy(), y.numpy()) for f, y in ds]


def test_dataset_structure_sizes_and_determinism() -> None:
    kwargs = dict(
        table_sizes=[10, 20, 5],
        num_dense=4,
        batch_size=16,
        num_batches=0,
        data_size=50,
        num_indices_per_lookup=3,
        seed=5,
    )
    ds = random_dataset(**kwargs)
    features, labels = ds.element_spec
    assert features["dense_features"].shape.as_list() == [None, 4]
    assert features["sparse_features"].shape.as_list() == [None, 3, 3]
    assert labels.shape.as_list() == [None, 1]
    first, second = collect(ds), collect(ds)
    assert [b[0].shape[0] for b in first] == [16, 16, 16, 2]
    for a, b in zip(first, second, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    rebuilt = collect(random_dataset(**kwargs))
    np.testing.assert_array_equal(rebuilt[2][1], first[2][1])
    other = collect(random_dataset(**{**kwargs, "seed": 6}))
    assert not np.array_equal(other[0][0], first[0][0])
    # batch i is random_batch with its own generator
    d, ids, y = random_batch(random_data.batch_rng(5, 3), [10, 20, 5], 4, 2, 3, False)
    np.testing.assert_array_equal(first[3][1], ids)
    np.testing.assert_array_equal(first[3][2], y)


def test_streamed_path_equals_precomputed(monkeypatch) -> None:
    kwargs = dict(
        table_sizes=[30, 7],
        num_dense=2,
        batch_size=8,
        num_batches=3,
        num_indices_per_lookup=4,
        round_targets=True,
        seed=1,
    )
    small = collect(random_dataset(**kwargs))
    small_ref = collect(random_dataset(reference_stream=True, **kwargs))
    monkeypatch.setattr(random_data, "PRECOMPUTE_MAX_BYTES", 0)
    for got, want in (
        (random_dataset(**kwargs), small),
        (random_dataset(reference_stream=True, **kwargs), small_ref),
    ):
        for a, b in zip(collect(got), want, strict=True):
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x, y)


def test_reference_stream_dataset_is_the_reference_sequence() -> None:
    ds = random_dataset(
        table_sizes=[6, 40],
        num_dense=3,
        batch_size=5,
        num_batches=0,
        data_size=12,
        num_indices_per_lookup=4,
        seed=123,
        reference_stream=True,
    )
    rs = np.random.RandomState(123)
    for _ in range(2):  # each pass restarts the stream, as the reference reseeds
        batches = collect(ds)
        rs = np.random.RandomState(123)
        for (d, ids, y), n in zip(batches, [5, 5, 2], strict=True):
            dense, bags, targets = reference_loop(rs, [6, 40], 3, n, 4, False)
            np.testing.assert_array_equal(d, dense)
            np.testing.assert_array_equal(y, targets)
            assert as_bags(ids) == bags


def test_value_distributions() -> None:
    n, h = 20_000, 6
    rng = np.random.default_rng(0)
    big = 10**12  # practically no duplicate ids, so bag length = drawn size
    dense, ids, targets = random_batch(rng, [big, 5, 3], 7, n, h, False)
    # dense and targets: U[0, 1), float32, targets not binary
    assert dense.dtype == np.float32 and dense.shape == (n, 7)
    assert 0 <= dense.min() and dense.max() < 1 and abs(dense.mean() - 0.5) < 0.01
    assert targets.shape == (n, 1) and abs(targets.mean() - 0.5) < 0.02
    assert np.unique(targets).size > 1000
    # bag sizes: k = max(1, round(r * 6)): P(1) = 1.5/6, P(2..5) = 1/6, P(6) = 0.5/6
    lengths = (ids[:, 0, :] >= 0).sum(axis=1)
    freq = np.bincount(lengths, minlength=h + 1)[1:] / n
    expected = np.array([1.5, 1, 1, 1, 1, 0.5]) / 6
    np.testing.assert_allclose(freq, expected, atol=0.015)
    # ids in range; round(u * (size - 1)) gives the end ids half weight
    assert ids[:, 0].max() < big and ids[ids >= 0].min() >= 0
    t1 = ids[:, 1][ids[:, 1] >= 0]
    assert t1.max() <= 4
    # table of 3 rows: bag sizes up to min(3, 6) = 3, then de-duplicated
    t2 = ids[:, 2]
    assert ((t2 >= 0).sum(axis=1) <= 3).all() and (t2[:, 3:] == -1).all()
    # within a bag: ascending, no repeats, -1 only at the end
    valid = ids >= 0
    assert (np.diff(valid.astype(int), axis=2) <= 0).all()
    both = valid[:, :, 1:] & valid[:, :, :-1]
    assert (np.diff(ids, axis=2)[both] > 0).all()
    # id frequencies for 5 rows: before de-duplication each draw is 0 and 4 with
    # probability 1/8 and 1..3 with 1/4; use one-id bags (no de-duplication)
    single = ids[:, 1, 0][(ids[:, 1] >= 0).sum(axis=1) == 1]
    id_freq = np.bincount(single, minlength=5) / single.size
    np.testing.assert_allclose(id_freq, [1 / 8, 1 / 4, 1 / 4, 1 / 4, 1 / 8], atol=0.02)


def test_fixed_bag_size_and_dedup() -> None:
    rng = np.random.default_rng(1)
    _, ids, _ = random_batch(rng, [10**12, 2], 1, 2000, 4, True)
    assert ((ids[:, 0] >= 0).sum(axis=1) == 4).all()  # always H ids in a huge table
    small = ids[:, 1]
    # two rows, 4 draws: {0, 1} unless all four round the same way (2 * 2^-4)
    lengths = (small >= 0).sum(axis=1)
    assert set(small[small >= 0].tolist()) == {0, 1}
    assert abs((lengths == 1).mean() - 2 / 16) < 0.03
    assert (small[:, 2:] == -1).all()


def test_one_hot_and_round_targets() -> None:
    ds = random_dataset(
        table_sizes=[3, 4],
        num_dense=2,
        batch_size=64,
        num_batches=2,
        num_indices_per_lookup=1,
        round_targets=True,
        multi_hot=False,
        seed=0,
    )
    for features, labels in ds:
        ids = features["sparse_features"].numpy()
        assert ids.shape == (64, 2) and (ids >= 0).all() and (ids < [3, 4]).all()
        assert set(np.unique(labels.numpy()).tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="multi_hot"):
        random_dataset(
            table_sizes=[3],
            num_dense=2,
            batch_size=4,
            num_batches=1,
            num_indices_per_lookup=2,
            multi_hot=False,
        )
