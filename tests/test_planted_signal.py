"""Tests of the synthetic Criteo-shaped generator (input_pipeline/planted_signal.py)."""

import gzip
import itertools
import math
import subprocess
import sys

import numpy as np
import pytest

from input_pipeline import planted_signal as synthetic


@pytest.fixture(scope="module")
def sample():
    return synthetic.generate(100_000, seed=4)


def test_lines_encode_the_sample(sample):
    small = synthetic.generate(3000, seed=9)
    lines = small.lines()
    assert len(lines) == 3000
    for i, line in enumerate(lines):
        fields = line.split("\t")
        assert len(fields) == 40
        assert int(fields[0]) == small.labels[i]
        for j, text in enumerate(fields[1:14]):
            assert (text == "") == small.count_missing[i, j]
            if text:
                assert int(text) == small.counts[i, j]
        for f, text in enumerate(fields[14:]):
            assert (text == "") == small.categorical_missing[i, f]
            if text:
                assert len(text) == 8 and int(text, 16) == small.categorical[i, f]


def test_deterministic_and_seed_dependent():
    a, b = synthetic.generate(500, seed=1), synthetic.generate(500, seed=1)
    c = synthetic.generate(500, seed=2)
    assert a.lines() == b.lines() and a.lines() != c.lines()


def test_criteo_like_shape(sample):
    assert 0.22 < sample.labels.mean() < 0.28
    np.testing.assert_allclose(
        sample.count_missing.mean(axis=0), synthetic.DENSE_MISSING_RATES, atol=0.01
    )
    np.testing.assert_allclose(
        sample.categorical_missing.mean(axis=0), synthetic.SPARSE_MISSING_RATES, atol=0.01
    )
    present = sample.counts[~sample.count_missing[:, 4], 4]
    assert np.percentile(present, 99) > 20 * np.median(present)  # heavy tail
    assert (sample.counts[:, 1] < 0).any()
    cards = synthetic.scaled_cardinalities()
    for f in range(26):
        values = sample.categorical[~sample.categorical_missing[:, f], f]
        _, counts = np.unique(values, return_counts=True)
        assert len(counts) <= cards[f]
        if cards[f] > 1000:  # Zipf-like: the top value is far more common than the median
            assert counts.max() > 50 * np.median(counts)


def test_labels_follow_the_planted_probabilities(sample):
    p, y = sample.probabilities, sample.labels
    edges = np.quantile(p, np.linspace(0, 1, 11))
    for low, high in itertools.pairwise(edges):
        inside = (p >= low) & (p < high)
        assert abs(y[inside].mean() - p[inside].mean()) < 4 * math.sqrt(0.25 / inside.sum()) + 0.005
    expected = synthetic.oracle_auc(p)
    empirical = synthetic.oracle_auc(p, y)
    assert 0.7 < expected < 0.9
    assert abs(expected - empirical) < 0.01


def test_planted_probability_is_a_function_of_preprocessed_features(sample):
    # Rows whose preprocessed features coincide must share the probability.
    world = synthetic.make_world(0)
    z = (
        world.intercept
        + (np.log1p(np.maximum(sample.counts, 0)) * ~sample.count_missing) @ world.dense_weights
    )
    for feature, effect in world.effects.items():
        rank = np.where(
            sample.categorical_missing[:, feature],
            world.cardinalities[feature],
            sample.ranks[:, feature],
        )
        z += effect[rank]
    np.testing.assert_allclose(sample.probabilities, 1 / (1 + np.exp(-z)), rtol=1e-12)


def test_expected_oracle_auc_matches_pairwise_definition():
    p = np.random.default_rng(1).choice([0.1, 0.3, 0.5, 0.9], size=200)
    num = den = 0.0
    for i in range(len(p)):
        for j in range(len(p)):
            if i != j:
                w = p[i] * (1 - p[j])
                den += w
                num += w * (1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0)
    assert synthetic.oracle_auc(p) == pytest.approx(num / den, abs=1e-12)


def test_write_text_gzip_and_crlf(tmp_path):
    path = tmp_path / "x.txt.gz"
    written = synthetic.write_text(path, 70_000, seed=5, use_gzip=True)
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    assert lines == synthetic.generate(70_000, seed=5).lines()
    assert written.labels.tolist() == [int(line[0]) for line in lines]
    crlf = tmp_path / "y.txt"
    synthetic.write_text(crlf, 10, seed=5, crlf=True)
    assert crlf.read_bytes().count(b"\r\n") == 10


def test_cli(tmp_path):
    out = tmp_path / "cli.txt.gz"
    result = subprocess.run(
        [sys.executable, "-m", "input_pipeline.planted_signal", f"--output={out}",
         "--num_rows=1000", "--seed=3", "--gzip"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with gzip.open(out, "rt") as f:
        assert f.read().splitlines() == synthetic.generate(1000, seed=3).lines()


def test_cli_creates_the_output_directory_and_reports_mistakes_in_one_line(tmp_path):
    from cli_check import assert_one_error_line, run_module

    output = tmp_path / "new" / "dir" / "train.txt"
    result = run_module("input_pipeline.planted_signal", f"--output={output}", "--num_rows=7")
    assert result.returncode == 0, result.stderr
    assert output.read_text().count("\n") == 7
    result = run_module("input_pipeline.planted_signal", "--num_rows=7")
    assert_one_error_line(result.returncode, result.stderr, "--output must have a value")
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    result = run_module("input_pipeline.planted_signal", f"--output={blocked}/train.txt")
    assert_one_error_line(result.returncode, result.stderr, "File exists")
