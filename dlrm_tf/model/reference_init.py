"""The reference DLRM's initial weights, drawn from NumPy, and its parameter layout.

``--init=reference`` replaces Keras's initial weights with the ones the
reference PyTorch DLRM draws from one legacy ``np.random.RandomState`` seeded
with ``numpy_rand_seed``, in its order:

1. every embedding table ``t`` of ``n`` rows: ``uniform(-sqrt(1/n), sqrt(1/n),
   size=(n, d))``;
2. every bottom-MLP layer ``n -> m``, then every top-MLP layer (its input width
   is the interaction width): the weight ``normal(0, sqrt(2/(m+n)), size=(m, n))``,
   then the bias ``normal(0, sqrt(1/m), size=m)``;

each drawn in float64 and cast to float32. A weight is stored ``[out, in]`` by
the reference and ``[in, out]`` by Keras, so the kernel is its transpose.

The reference's data loader draws random data from the same global stream. In
a plain run it reseeds before the first batch, so the weights are the first
draws after seeding. With ``--debug_mode`` it prints (and so draws) the
whole first epoch of random data before building the model, and the weights
come after those draws: :func:`initial_stream` replays them when asked.

:func:`reference_parameters` reads a model's weights back in the reference's
order and layout, which is how ``--debug_mode`` prints them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dlrm_tf.config import ModelConfig
from dlrm_tf.model.placed_variables import held_elsewhere


def _mlp_shapes(widths: Sequence[int]) -> list[tuple[int, int]]:
    """``(m, n)`` = (output, input) width of each layer of an MLP given all its widths."""
    return [(int(widths[i + 1]), int(widths[i])) for i in range(len(widths) - 1)]


def draw_reference_weights(
    model_config: ModelConfig, rng: np.random.RandomState
) -> list[np.ndarray]:
    """The reference's initial parameters, drawn from ``rng`` in its order and layout.

    Args:
      model_config: the architecture.
      rng: the legacy stream, e.g. ``np.random.RandomState(numpy_rand_seed)``.

    Returns:
      float32 arrays: each table ``[n, d]``, then per bottom-MLP and top-MLP
      layer its weight ``[out, in]`` and bias ``[out]``.
    """
    cfg = model_config
    arrays = []
    for n in cfg.table_sizes:
        bound = np.sqrt(1 / n)
        arrays.append(rng.uniform(-bound, bound, size=(n, cfg.embedding_dim)).astype(np.float32))
    top = (cfg.interaction_width, *cfg.top_mlp)
    for m, n in _mlp_shapes(cfg.bottom_mlp) + _mlp_shapes(top):
        arrays.append(rng.normal(0.0, np.sqrt(2 / (m + n)), size=(m, n)).astype(np.float32))
        arrays.append(rng.normal(0.0, np.sqrt(1 / m), size=m).astype(np.float32))
    return arrays


def _reference_variables(model) -> list[tuple[object, bool]]:
    """The model's variables in the reference's order, each with "is a kernel" (transposed)."""
    found: list[tuple[object, bool]] = [(table, False) for table in model.embeddings.tables]
    for mlp in (model.bottom_mlp, model.top_mlp):
        for layer in mlp.dense_layers:
            found += [(layer.kernel, True), (layer.bias, False)]
    return found


def assign_reference_weights(model, arrays: Sequence[np.ndarray]) -> None:
    """Sets a built DLRM's weights to ``arrays`` (reference order and layout).

    Raises:
      ValueError: if the number or a shape of the arrays does not fit the model.
    """
    variables = _reference_variables(model)
    if len(arrays) != len(variables):
        raise ValueError(f"{len(arrays)} arrays for the model's {len(variables)} weights")
    for (variable, is_kernel), value in zip(variables, arrays, strict=True):
        if held_elsewhere(variable):  # another worker's table: it assigns these values
            continue
        value = np.asarray(value, dtype=np.float32)
        value = value.T if is_kernel else value
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"{variable.path}: shape {tuple(variable.shape)}, got an array of {value.shape}"
            )
        variable.assign(value)


def reference_parameters(model) -> list[np.ndarray]:
    """The model's weights in the reference's order and layout (weights ``[out, in]``)."""
    return [
        (np.asarray(v.numpy()).T if is_kernel else np.asarray(v.numpy()))
        for v, is_kernel in _reference_variables(model)
    ]


def initial_stream(
    seed: int,
    replayed_batches: Sequence[int] = (),
    *,
    table_sizes: Sequence[int] = (),
    num_dense: int = 0,
    num_indices_per_lookup: int = 1,
    num_indices_per_lookup_fixed: bool = False,
) -> np.random.RandomState:
    """``RandomState(seed)``, advanced past the random-data batches of the given sizes.

    With no ``replayed_batches`` this is the stream of a plain reference run. To
    reproduce the reference's ``--debug_mode`` on random data, pass the sizes of
    the first epoch's batches and the data's shape: the draws of those batches
    (:func:`input_pipeline.random_data.random_batch`) are consumed first.
    """
    rng = np.random.RandomState(seed)
    if replayed_batches:
        from input_pipeline.random_data import random_batch

        for n in replayed_batches:
            random_batch(
                rng,
                table_sizes,
                num_dense,
                n,
                num_indices_per_lookup,
                num_indices_per_lookup_fixed,
            )
    return rng


def initialize_as_reference(model, model_config: ModelConfig, rng: np.random.RandomState) -> None:
    """Draws the reference's initial weights from ``rng`` and assigns them to ``model``."""
    assign_reference_weights(model, draw_reference_weights(model_config, rng))
