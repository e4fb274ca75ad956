"""NumPy oracles shared by the tests, written from the spec independently of the package."""

import numpy as np


def numpy_bags(tables, ids):
    """Sum of each bag's rows, ``[B, T, d]``; ids ``[B, T]`` or ``[B, T, H]``, -1 is absent."""
    ids = np.asarray(ids)
    if ids.ndim == 2:
        ids = ids[:, :, None]
    batch, num_tables, _ = ids.shape
    out = np.zeros((batch, num_tables, tables[0].shape[1]), dtype=np.float64)
    for b in range(batch):
        for t in range(num_tables):
            for i in ids[b, t]:
                if i >= 0:
                    out[b, t] += tables[t][i]
    return out
