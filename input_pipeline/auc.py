"""Exact ROC AUC in NumPy, shared by the trainer's metrics and the generators' oracle.

The exact area under the ROC curve over all predictions (no thresholds or
buckets): the Mann-Whitney statistic with tied scores given their average rank,
which is what ``sklearn.metrics.roc_auc_score`` (the reference's choice)
computes. It costs one sort of the predictions. NumPy only, so both
``input_pipeline`` and ``dlrm_tf`` may import it.
"""

from __future__ import annotations

import numpy as np


class NonFiniteScoresError(ValueError):
    """Predictions are NaN or infinite, so AUC and the other metrics are undefined."""


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC of ``scores`` for binary ``labels``; NaN if one class is absent.

    Raises:
      NonFiniteScoresError: a score is NaN or infinite (a ranking of them means nothing).
    """
    labels = np.asarray(labels).reshape(-1) > 0.5
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise NonFiniteScoresError(
            f"{bad} of {scores.size} test predictions are not finite: the model diverged"
        )
    num_pos = int(labels.sum())
    num_neg = labels.size - num_pos
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # Average rank (1-based) of each group of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], sorted_scores.size]
    avg_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(scores.size, dtype=np.float64)
    ranks[order] = np.repeat(avg_rank, ends - starts)
    rank_sum = ranks[labels].sum()
    return float((rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))
