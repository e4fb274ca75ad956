"""Exact test-set metrics: ROC AUC, accuracy and log loss, computed in NumPy.

AUC is ``input_pipeline.auc.roc_auc`` (exact, ties at their average rank).
"""

from __future__ import annotations

import numpy as np

from input_pipeline.auc import NonFiniteScoresError, roc_auc

__all__ = ["NonFiniteScoresError", "binary_metrics", "roc_auc"]

_EPS = 1e-7


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """AUC, accuracy (round(p) == label) and log loss (BCE, p clipped to [1e-7, 1-1e-7])."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if labels.size == 0:
        raise ValueError("no test examples to evaluate")
    clipped = np.clip(p, _EPS, 1.0 - _EPS)
    log_loss = -np.mean(labels * np.log(clipped) + (1.0 - labels) * np.log(1.0 - clipped))
    return {
        "auc": roc_auc(labels, p),
        "accuracy": float(np.mean(np.round(p) == labels)),
        "log_loss": float(log_loss),
        "num_examples": int(labels.size),
    }
