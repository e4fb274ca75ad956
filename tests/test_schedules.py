"""The reference's learning-rate schedule (dlrm_tf/model/schedules.py)."""

import pytest

from dlrm_tf.model.schedules import WarmupPolyDecay


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


