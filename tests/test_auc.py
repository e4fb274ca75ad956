"""The one ROC AUC (input_pipeline/auc.py) against the pairwise definition."""

import math

import numpy as np
import pytest

from input_pipeline.auc import NonFiniteScoresError, roc_auc


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 20, 300).astype(float)  # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc_auc(labels, scores) == pytest.approx(pairwise, abs=1e-12)


def test_auc_of_one_class_is_nan_and_of_non_finite_scores_an_error():
    assert math.isnan(roc_auc(np.ones(4), np.arange(4.0)))
    with pytest.raises(NonFiniteScoresError, match="1 of 3 test predictions"):
        roc_auc(np.array([0, 1, 1]), np.array([0.2, np.nan, 0.4]))
