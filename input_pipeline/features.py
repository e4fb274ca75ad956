"""The batch format every data source yields and the model takes: its feature keys.

A batch is ``({DENSE_KEY: float32 [B, num_dense], SPARSE_KEY: int64 [B, T] or
[B, T, H]}, labels)``. The keys are also the input names of the exported
SavedModel's signatures. Standard library only (nothing at all), so the readers
and generators here, the model in ``dlrm_tf`` and the exporter in ``export``
share one definition without breaking the import rules.
"""

DENSE_KEY = "dense_features"
SPARSE_KEY = "sparse_features"
