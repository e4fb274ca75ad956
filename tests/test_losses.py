"""The reference's losses and the rounded accuracy (dlrm_tf/model/losses.py)."""

import math

import numpy as np
import pytest

from dlrm_tf.model.losses import DLRMLoss, RoundedAccuracy


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


