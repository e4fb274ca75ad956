"""Tests of the trace-driven synthetic generator against independent replays."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pytest

from input_pipeline import trace
from input_pipeline.trace import (
    DistributionError,
    TraceDistribution,
    TraceGenerator,
    load_distribution,
    profile_trace,
    save_distribution,
    stack_distances,
    synthetic_dataset,
    table_file,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_PATTERN = os.path.join(REPO, "input", "dist_emb_j.log")


class FixedDraws:
    """A stand-in rng returning given doubles in order."""

    def __init__(self, values: Sequence[float]) -> None:
        self.values = list(values)

    def random(self, k: int) -> np.ndarray:
        out, self.values = self.values[:k], self.values[k:]
        assert len(out) == k, "test supplied too few draws"
        return np.array(out)


def replay_oracle(
    unique: Sequence[int],
    distances: Sequence[int],
    probs: Sequence[float],
    draws: Sequence[float],
    padding: bool,
) -> tuple[list[int], list[int]]:
    """The documented semantics, written plainly: a list as LRU stack (top = end).

    Returns the ids and the LRU distance of each access (a wrap-around is a
    distance-0 draw that reuses the bottom id, whose distance is the stack depth).
    """
    stack: list[int] = []
    used = 0
    out, true_distances = [], []
    for u in draws:
        reach = [i for i, d in enumerate(distances) if d <= len(stack)]
        positive_mass = sum(probs[i] for i in reach if distances[i] > 0)
        if padding and used >= len(unique) and positive_mass > 0:
            reach = [i for i in reach if distances[i] > 0]
        total = sum(probs[i] for i in reach)
        acc, pick = 0.0, reach[-1]
        for i in reach:
            acc += probs[i]
            if u * total < acc:
                pick = i
                break
        s = distances[pick]
        if s > 0:
            x = stack.pop(len(stack) - s)
        elif used < len(unique):
            x = unique[used]
            used += 1
        else:
            x = stack.pop(0)
            s = len(stack) + 1
        stack.append(x)
        out.append(x)
        true_distances.append(s)
    return out, true_distances


def dyadic_dist(rng: np.random.Generator, n_unique: int) -> TraceDistribution:
    """A random distribution whose probabilities are multiples of 1/64 (exact sums)."""
    k = int(rng.integers(1, min(n_unique, 6) + 1))
    dists = np.concatenate([[0], np.sort(rng.choice(np.arange(1, n_unique + 1), k, replace=False))])
    weights = rng.integers(0, 5, size=dists.size).astype(float)
    weights[0] = max(weights[0], 1.0)
    weights *= 64.0 / weights.sum()
    weights = np.floor(weights)
    weights[-1] += 64 - weights.sum()  # the floors only lowered the sum
    ids = rng.choice(10_000, n_unique, replace=False)
    return TraceDistribution(ids, dists, np.cumsum(weights) / 64.0)


# --- generation -------------------------------------------------------------------


def test_hand_worked_sequence() -> None:
    # Derived by hand in the module's semantics: stack bottom..top after each access
    # [7] [7] [7,8] [8,7] [8,7] [8,7,9], then (no padding) wrap 8 -> [7,9,8], s=2 -> 9.
    dist = TraceDistribution([7, 8, 9], [0, 1, 2], [0.5, 0.75, 1.0])
    draws = [0.7, 0.9, 0.2, 0.8, 0.6, 0.1, 0.3, 0.99]
    gen = TraceGenerator(dist, FixedDraws(draws))
    assert gen.next_ids(8).tolist() == [7, 7, 8, 7, 7, 9, 8, 9]
    # With padding, distance 0 is excluded after 9: u=0.3 -> 0.65 -> s=1 (9),
    # u=0.99 -> 0.995 -> s=2 (7).
    gen = TraceGenerator(dist, FixedDraws(draws), enable_padding=True)
    assert gen.next_ids(8).tolist() == [7, 7, 8, 7, 7, 9, 9, 7]


@pytest.mark.parametrize("padding", [False, True])
def test_generator_matches_plain_replay(padding: bool) -> None:
    rng = np.random.default_rng(7)
    for case in range(40):
        dist = dyadic_dist(rng, int(rng.integers(1, 12)))
        seed = 1000 + case
        chunks = [int(c) for c in rng.integers(0, 40, size=6)]
        gen = TraceGenerator(dist, np.random.default_rng(seed), enable_padding=padding)
        got = np.concatenate([gen.next_ids(c) for c in chunks]).tolist()
        draws = np.random.default_rng(seed).random(sum(chunks))
        probs = dist.probabilities.tolist()
        expected, true_distances = replay_oracle(
            dist.unique_ids.tolist(), dist.distances.tolist(), probs, draws, padding
        )
        assert got == expected, (case, dist)
        # the profiler measures exactly the distances the replay applied
        assert stack_distances(got)[0].tolist() == true_distances


def test_long_stream_matches_plain_replay_on_example_file() -> None:
    dist = load_distribution(table_file(EXAMPLE_PATTERN, 1))
    gen = TraceGenerator(dist, np.random.default_rng(3))
    got = np.concatenate([gen.next_ids(k) for k in (1, 500, 3000, 4000)])
    draws = np.random.default_rng(3).random(got.size)
    # The file's probabilities are rounded decimals; compare through the CDF itself
    # so both sides make the same floating-point comparisons.
    cdf = dist.cdf.tolist()
    stack: list[int] = []
    used = 0
    expected = []
    ids, dists = dist.unique_ids.tolist(), dist.distances.tolist()
    for u in draws:
        j = max(i for i, d in enumerate(dists) if d <= len(stack))
        i = next(i for i in range(j + 1) if cdf[i] > u * cdf[j]) if u * cdf[j] < cdf[j] else j
        s = dists[i]
        x = stack.pop(len(stack) - s) if s else (ids[used] if used < len(ids) else stack.pop(0))
        used += s == 0
        stack.append(x)
        expected.append(x)
    assert got.tolist() == expected
    assert gen.depth == len(ids)  # 7.5k accesses at P(new)=0.087 exhaust 433 ids


def test_padding_stops_new_ids_and_wraparound_cycles() -> None:
    dist = TraceDistribution([1, 2, 3, 4], [0, 1, 2], [0.5, 0.75, 1.0])
    padded = TraceGenerator(dist, 5, enable_padding=True).next_ids(2000)
    d_padded, _ = stack_distances(padded)
    assert (d_padded == 0).sum() == 4  # each id is new exactly once
    assert d_padded.max() <= 2  # only the file's distances
    plain = TraceGenerator(dist, 5).next_ids(2000)
    d_plain, _ = stack_distances(plain)
    # Without padding, later distance-0 draws reuse the least recently used id,
    # which is then 4 deep: about half of the accesses after the warm-up.
    assert (d_plain == 0).sum() == 4
    assert 0.4 < (d_plain == 4).mean() < 0.6
    assert set(plain.tolist()) == {1, 2, 3, 4}


def test_only_new_ids_distribution_cycles_even_with_padding() -> None:
    dist = TraceDistribution([5, 6, 7], [0], [1.0])
    for padding in (False, True):
        ids = TraceGenerator(dist, 0, enable_padding=padding).next_ids(7)
        assert ids.tolist() == [5, 6, 7, 5, 6, 7, 5]


# --- profiling --------------------------------------------------------------------


def test_profile_hand_worked() -> None:
    dist = profile_trace([5, 6, 5, 5, 7, 6, 5])
    assert stack_distances([5, 6, 5, 5, 7, 6, 5])[0].tolist() == [0, 0, 2, 1, 0, 3, 3]
    assert dist.unique_ids.tolist() == [5, 6, 7]
    assert dist.distances.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(dist.cdf, [3 / 7, 4 / 7, 5 / 7, 1.0])


def test_stack_distances_match_naive() -> None:
    rng = np.random.default_rng(11)
    seq = rng.integers(0, 30, size=2000).tolist()
    stack: list[int] = []
    naive = []
    for x in seq:
        if x in stack:
            naive.append(len(stack) - stack.index(x))
            stack.remove(x)
        else:
            naive.append(0)
        stack.append(x)
    got, unique = stack_distances(seq)
    assert got.tolist() == naive
    assert unique.tolist() == list(dict.fromkeys(seq))


def _reuse_pmf(distances: np.ndarray) -> np.ndarray:
    """Distribution of the positive distances in log2 bins: 1, 2, [3, 4], [5, 8], ..."""
    d = distances[distances > 0]
    bins = np.where(d <= 2, d, 2 + np.ceil(np.log2(np.maximum(d, 1))))
    counts = np.bincount(bins.astype(np.int64), minlength=32)
    return counts / counts.sum()


def test_profile_generate_profile_recovers_distribution() -> None:
    original = trace.zipf_trace(num_ids=500, length=5000, exponent=1.05, seed=4)
    d_orig, _ = stack_distances(original)
    dist = profile_trace(original)
    generated = TraceGenerator(dist, 9, enable_padding=True).next_ids(50_000)
    again = profile_trace(generated)
    d_gen, first_order = stack_distances(generated)
    # New ids: each id of line 1 exactly once, in the file's order.
    assert first_order.tolist() == dist.unique_ids.tolist()
    assert again.unique_ids.tolist() == dist.unique_ids.tolist()
    assert (d_gen == 0).sum() == dist.unique_ids.size
    # Reuse distances: as in the original, up to sampling error and the short
    # warm-up (the stack is full after about 5000 of the 50000 accesses).
    assert 0.5 * np.abs(_reuse_pmf(d_orig) - _reuse_pmf(d_gen)).sum() < 0.05
    assert set(again.distances.tolist()) <= set(dist.distances.tolist())
    # A stream of the same ids without locality is clearly told apart.
    uniform = np.random.default_rng(0).choice(dist.unique_ids, 50_000)
    d_uniform, _ = stack_distances(uniform)
    assert 0.5 * np.abs(_reuse_pmf(d_orig) - _reuse_pmf(d_uniform)).sum() > 0.2


# --- files ------------------------------------------------------------------------


def test_save_load_roundtrip(tmp_path) -> None:
    dist = profile_trace(trace.zipf_trace(50, 3000, 1.1, seed=1))
    path = tmp_path / "d.log"
    save_distribution(dist, path)
    back = load_distribution(path)
    assert back.unique_ids.tolist() == dist.unique_ids.tolist()
    assert back.distances.tolist() == dist.distances.tolist()
    assert back.cdf.tolist() == dist.cdf.tolist()
    assert path.read_text().splitlines()[1].startswith("0, 1, ")
    save_distribution(dist, path, precision=3)
    rounded = load_distribution(path)
    np.testing.assert_allclose(rounded.cdf, dist.cdf, atol=5e-3)
    assert rounded.cdf[-1] == 1.0


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("1, 2\n0, 1\n", "found 2", "expected 3 lines"),
        ("1, 2\n0, 1\n0.5, 1\n0.5\n", "found 4", "expected 3 lines"),
        ("1, x\n0, 1\n0.5, 1\n", "line 1", "'x'"),
        ("1, 1\n0, 1\n0.5, 1\n", "line 1", "more than once"),
        ("1, 2\n0, 2, 1\n0.2, 0.5, 1\n", "line 2", "increase"),
        ("1, 2\n1, 2\n0.5, 1\n", "line 2", "first stack distance must be 0"),
        ("1, 2\n0, 3\n0.5, 1\n", "line 2", "exceeds the 2 ids"),
        ("1, 2\n0, 1\n0.5\n", "line 3", "1 probabilities for 2"),
        ("1, 2\n0, 1, 2\n0.6, 0.4, 1\n", "line 3", "decreases"),
        ("1, 2\n0, 1\n0.5, 0.9\n", "line 3", "must be 1"),
        ("1, 2\n0, 1\n0.0, 1.0\n", "line 3", "probability 0"),
    ],
)
def test_load_rejects_malformed(tmp_path, text: str, where: str, what: str) -> None:
    path = tmp_path / "bad_dist.log"
    path.write_text(text)
    with pytest.raises(DistributionError) as err:
        load_distribution(path)
    message = str(err.value)
    assert "bad_dist.log" in message and where in message and what in message, message


def test_table_file_replaces_last_j_of_the_name_only() -> None:
    assert table_file("input/dist_emb_j.log", 3) == "input/dist_emb_3.log"
    assert table_file("/data/job_j/traj_j.log", 12) == os.path.join("/data/job_j", "traj_12.log")
    assert table_file("/data/j/dist.log", 1) == "/data/j/dist.log"


def test_example_files_are_valid() -> None:
    for t, size in enumerate((100, 500, 1000)):
        dist = load_distribution(table_file(EXAMPLE_PATTERN, t))
        assert 0 <= dist.unique_ids.min() and dist.unique_ids.max() < size
        assert os.path.getsize(table_file(EXAMPLE_PATTERN, t)) < 16_000


def test_cli_zipf_profile_generate(tmp_path) -> None:
    raw, dist_file, out = tmp_path / "raw.log", tmp_path / "dist.log", tmp_path / "gen.log"
    assert trace.main(["zipf", "--num_ids=40", "--length=500", "--seed=2", f"--output={raw}"]) == 0
    # the reader takes several lines and mixed separators
    ids = trace.read_trace(raw)
    raw.write_text(", ".join(map(str, ids[:200])) + ",\n" + " ".join(map(str, ids[200:])) + "\n")
    assert trace.main(["profile", f"--trace={raw}", f"--output={dist_file}"]) == 0
    assert load_distribution(dist_file).cdf.tolist() == profile_trace(ids).cdf.tolist()
    assert (
        trace.main(["generate", f"--dist={dist_file}", "--num=300", "--seed=5", f"--output={out}"])
        == 0
    )
    generated = trace.read_trace(out)
    expected = TraceGenerator(load_distribution(dist_file), 5).next_ids(300)
    assert generated.tolist() == expected.tolist()


# --- data set ---------------------------------------------------------------------


def _write_tables(tmp_path, dists: Sequence[TraceDistribution]) -> str:
    for t, d in enumerate(dists):
        save_distribution(d, tmp_path / f"tab_{t}.log")
    return str(tmp_path / "tab_j.log")


@pytest.mark.parametrize("fixed", [False, True])
def test_synthetic_dataset_matches_per_table_streams(tmp_path, fixed: bool) -> None:
    rng = np.random.default_rng(2)
    dists = [
        TraceDistribution(np.arange(100, 130), [0, 1, 2, 5], [0.3, 0.6, 0.8, 1.0]),
        TraceDistribution(np.arange(200, 210), [0, 1, 3], [0.25, 0.5, 1.0]),
        profile_trace(rng.integers(0, 50, 400) + 1000),
    ]
    pattern = _write_tables(tmp_path, dists)
    sizes_t = [1000, 1000, 5000]
    h, batch, num_batches, seed = 4, 16, 5, 42
    ds = synthetic_dataset(
        trace_file_pattern=pattern,
        table_sizes=sizes_t,
        num_dense=3,
        batch_size=batch,
        num_batches=num_batches,
        num_indices_per_lookup=h,
        num_indices_per_lookup_fixed=fixed,
        enable_padding=False,
        seed=seed,
    )
    batches = [
        (f["dense_features"].numpy(), f["sparse_features"].numpy(), y.numpy()) for f, y in ds
    ]
    assert len(batches) == num_batches
    # Oracle: the documented draw order, and one stream per table across batches.
    gens = [TraceGenerator(d, np.random.default_rng([seed, 1, t])) for t, d in enumerate(dists)]
    for b, (dense, ids, labels) in enumerate(batches):
        brng = np.random.default_rng([seed, 0, b])
        np.testing.assert_array_equal(dense, brng.random((batch, 3)).astype(np.float32))
        assert ids.shape == (batch, 3, h) and ids.dtype == np.int64
        for t, size in enumerate(sizes_t):
            if fixed:
                ks = [h] * batch
            else:
                m = min(size, h)
                ks = [max(1, int(np.round(r * m))) for r in brng.random(batch)]
            stream = gens[t].next_ids(sum(ks)).tolist()
            pos = 0
            for i, k in enumerate(ks):
                want = sorted(set(stream[pos : pos + k]))
                pos += k
                assert ids[i, t].tolist() == want + [-1] * (h - len(want))
        np.testing.assert_array_equal(labels, brng.random((batch, 1)).astype(np.float32))
    # every pass gives the same data
    again = [f["sparse_features"].numpy() for f, _ in ds]
    assert all((a == b[1]).all() for a, b in zip(again, batches, strict=True))


def test_synthetic_dataset_streamed_equals_precomputed(tmp_path, monkeypatch) -> None:
    kwargs = dict(
        trace_file_pattern=EXAMPLE_PATTERN,
        table_sizes=[100, 500, 1000],
        num_dense=2,
        batch_size=32,
        num_batches=0,
        data_size=100,
        num_indices_per_lookup=3,
        num_indices_per_lookup_fixed=False,
        enable_padding=True,
        seed=1,
        round_targets=True,
    )
    small = [(f["sparse_features"].numpy(), y.numpy()) for f, y in synthetic_dataset(**kwargs)]
    monkeypatch.setattr(trace.random_data, "PRECOMPUTE_MAX_BYTES", 0)
    streamed = synthetic_dataset(**kwargs)
    big = [(f["sparse_features"].numpy(), y.numpy()) for f, y in streamed]
    assert [s.shape[0] for s, _ in small] == [32, 32, 32, 4]
    for (a, ya), (b, yb) in zip(small, big, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ya, yb)
    labels = np.concatenate([y for _, y in small])
    assert set(np.unique(labels).tolist()) <= {0.0, 1.0}
    ids = np.concatenate([s for s, _ in small])
    for t, size in enumerate((100, 500, 1000)):
        valid = ids[:, t][ids[:, t] >= 0]
        assert valid.max() < size
        assert set(valid.tolist()) <= set(
            load_distribution(table_file(EXAMPLE_PATTERN, t)).unique_ids.tolist()
        )


def test_out_of_range_ids_wrap_modulo_with_one_warning(tmp_path, caplog) -> None:
    dist = TraceDistribution([3, 10, 17, 25], [0, 1], [0.5, 1.0])
    save_distribution(dist, tmp_path / "d_0.log")
    trace._warned.clear()
    with caplog.at_level(logging.WARNING, logger="input_pipeline.trace"):
        ds = synthetic_dataset(
            trace_file_pattern=str(tmp_path / "d_j.log"),
            table_sizes=[7],
            num_dense=1,
            batch_size=8,
            num_batches=4,
            num_indices_per_lookup=2,
            num_indices_per_lookup_fixed=True,
            enable_padding=False,
            seed=0,
        )
        ids = np.concatenate([f["sparse_features"].numpy() for f, _ in ds])
    assert set(ids[ids >= 0].tolist()) <= {3, 10 % 7, 17 % 7, 25 % 7}
    warnings = [r for r in caplog.records if "modulo 7" in r.getMessage()]
    assert len(warnings) == 1 and "d_0.log" in warnings[0].getMessage()


def test_one_hot_output_and_errors(tmp_path) -> None:
    common = dict(
        trace_file_pattern=EXAMPLE_PATTERN,
        table_sizes=[100, 500],
        num_dense=4,
        batch_size=8,
        num_batches=2,
        num_indices_per_lookup_fixed=False,
        enable_padding=False,
        seed=3,
    )
    ds = synthetic_dataset(num_indices_per_lookup=1, multi_hot=False, **common)
    features, labels = next(iter(ds))
    assert features["sparse_features"].shape == (8, 2)
    assert (features["sparse_features"].numpy() >= 0).all()
    assert labels.shape == (8, 1)
    with pytest.raises(ValueError, match="multi_hot"):
        synthetic_dataset(num_indices_per_lookup=2, multi_hot=False, **common)
    with pytest.raises(FileNotFoundError):
        synthetic_dataset(
            num_indices_per_lookup=2, **{**common, "trace_file_pattern": str(tmp_path / "no_j")}
        )


def test_cli_errors_are_one_line_exit_2(tmp_path) -> None:
    from cli_check import assert_one_error_line, run_module

    bad = tmp_path / "bad.txt"
    bad.write_text("1, 2, x3\n")
    cases = [
        (["profile", f"--trace={tmp_path / 'missing.txt'}", "--output=o"], "missing.txt"),
        (["profile", f"--trace={bad}", f"--output={tmp_path / 'o'}"], "bad.txt: invalid literal"),
        (["generate", "--num=3"], "the following arguments are required: --dist, --output"),
    ]
    for args, message in cases:
        result = run_module("input_pipeline.trace", *args)
        assert_one_error_line(result.returncode, result.stderr, message)
