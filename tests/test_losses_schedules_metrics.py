"""Losses, the learning-rate schedule and the exact AUC against independent oracles."""

import itertools
import math

import numpy as np
import pytest

from dlrm_tf.losses import DLRMLoss, RoundedAccuracy
from dlrm_tf.metrics import binary_metrics, roc_auc
from dlrm_tf.schedules import WarmupPolyDecay


def test_mse_bce_wbce_match_formulas():
    y = np.array([[0.0], [1.0], [1.0], [0.0], [0.3]], dtype=np.float32)
    p = np.array([[0.2], [0.9], [0.0], [1.0], [0.5]], dtype=np.float32)
    mse = DLRMLoss("mse")(y, p).numpy()
    assert mse == pytest.approx(np.mean((p - y) ** 2), rel=1e-6)

    def bce_terms(yy, pp):
        out = []
        for a, b in zip(yy.ravel(), pp.ravel(), strict=True):
            log_p = max(math.log(b), -100.0) if b > 0 else -100.0
            log_q = max(math.log(1 - b), -100.0) if b < 1 else -100.0
            out.append(-(a * log_p + (1 - a) * log_q))
        return np.array(out)

    assert DLRMLoss("bce")(y, p).numpy() == pytest.approx(bce_terms(y, p).mean(), rel=1e-5)
    w = 0.5 * (1 - y.ravel()) + 3.0 * y.ravel()
    wbce = DLRMLoss("wbce", (0.5, 3.0))(y, p).numpy()
    assert wbce == pytest.approx(np.mean(w * bce_terms(y, p)), rel=1e-5)
    rounded = DLRMLoss("mse", round_targets=True)(y, p).numpy()
    assert rounded == pytest.approx(np.mean((p - np.round(y)) ** 2), rel=1e-6)


def test_loss_rejects_unknown_kind():
    with pytest.raises(ValueError, match="loss_function"):
        DLRMLoss("hinge")


def test_accuracy_does_not_round_labels_unless_asked():
    y = np.array([[0.4], [1.0], [0.0]], dtype=np.float32)
    p = np.array([[0.2], [0.7], [0.6]], dtype=np.float32)
    acc = RoundedAccuracy()
    acc.update_state(y, p)
    assert float(acc.result()) == pytest.approx(1 / 3)
    acc_r = RoundedAccuracy(round_targets=True)
    acc_r.update_state(y, p)
    assert float(acc_r.result()) == pytest.approx(2 / 3)


def reference_lr(base, warmup, start, num_decay, update_index):
    """The reference scheduler's rule, with this project's constant middle phase."""
    s = update_index + 1
    end = start + num_decay
    if s < warmup:
        return base * (1.0 - (warmup - s) / warmup)
    if num_decay > 0 and start <= s < end:
        return max(1e-7, base * ((num_decay - (s - start)) / num_decay) ** 2)
    if num_decay > 0 and s >= end:
        return max(1e-7, base * (1 / num_decay) ** 2)
    return base


@pytest.mark.parametrize("warmup,start,num_decay", [(0, 0, 0), (5, 5, 0), (4, 10, 6), (0, 3, 5)])
def test_schedule_matches_reference_rule(warmup, start, num_decay):
    schedule = WarmupPolyDecay(0.5, warmup, start, num_decay)
    for step in range(25):
        want = reference_lr(0.5, warmup, start, num_decay, step)
        assert float(schedule(step)) == pytest.approx(want, rel=1e-6), step


def test_schedule_rejects_decay_before_warmup_end():
    with pytest.raises(ValueError, match="lr_decay_start_step"):
        WarmupPolyDecay(0.1, 10, 5, 3)


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
    from dlrm_tf.metrics import NonFiniteScoresError, binary_metrics

    labels = np.array([0, 1, 0, 1])
    for bad in (np.nan, np.inf):
        with pytest.raises(NonFiniteScoresError, match="1 of 4 test predictions"):
            binary_metrics(labels, np.array([0.1, bad, 0.3, 0.8]))
