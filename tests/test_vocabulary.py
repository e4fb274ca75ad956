"""Value frequencies of the vocabulary pass against ``collections.Counter``, in chunks."""

import collections

import numpy as np
import pytest

from input_pipeline import criteo
from input_pipeline.convert import vocabulary


@pytest.mark.parametrize("high", [50, 2**40], ids=["int32 values", "int64 values"])
def test_counter_matches_a_counter_of_every_present_value(high):
    rng = np.random.default_rng(3)
    counter = vocabulary.ValueCounter()
    want = [collections.Counter() for _ in range(criteo.NUM_SPARSE)]
    for rows in (0, 7, 300, 1):
        values = rng.integers(0, high, (rows, criteo.NUM_SPARSE))
        values[rng.random(values.shape) < 0.2] = -1  # empty fields
        present = values >= 0
        counter.add(values, present)
        for f in range(criteo.NUM_SPARSE):
            want[f].update(values[present[:, f], f].tolist())
    for f in range(criteo.NUM_SPARSE):
        for threshold in (1, 2):
            kept = [(v, c) for v, c in want[f].items() if c >= threshold]
            ordered = [v for v, _ in sorted(kept, key=lambda vc: (-vc[1], vc[0]))]
            assert counter.vocabulary(f, threshold).tolist() == ordered
