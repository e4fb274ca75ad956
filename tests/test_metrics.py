"""Exact test-set metrics (dlrm_tf/training/metrics.py) against brute force."""

import itertools
import math

import numpy as np
import pytest

from dlrm_tf.training.metrics import binary_metrics, roc_auc


def brute_force_auc(labels, scores):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    total = 0.0
    for a, b in itertools.product(pos, neg):
        total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(pos) * len(neg))


def test_auc_is_exact_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + 0.5 * labels, 1)  # many ties
    assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)
    assert math.isnan(roc_auc(np.zeros(5), np.arange(5)))


def test_binary_metrics():
    labels = np.array([0, 1, 1, 0], dtype=np.float32)
    probs = np.array([0.1, 0.8, 0.4, 0.6])
    m = binary_metrics(labels, probs)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["auc"] == pytest.approx(0.75)
    want = -np.mean(np.log([0.9, 0.8, 0.4, 0.4]))
    assert m["log_loss"] == pytest.approx(want, rel=1e-9)


def test_auc_of_non_finite_scores_is_an_error():
    from dlrm_tf.training.metrics import NonFiniteScoresError, binary_metrics

    labels = np.array([0, 1, 0, 1])
    for bad in (np.nan, np.inf):
        with pytest.raises(NonFiniteScoresError, match="1 of 4 test predictions"):
            binary_metrics(labels, np.array([0.1, bad, 0.3, 0.8]))
