"""The reference's ``--debug_mode`` dump: architecture, first batches, parameters.

Printed as the reference prints them: the initial parameters before training,
the updated ones after it."""

from __future__ import annotations

import numpy as np

from dlrm_tf.model.reference_init import reference_parameters
from input_pipeline.features import DENSE_KEY, SPARSE_KEY


def print_debug(model, model_config, source, global_batch: int, log=print) -> None:
    """The reference's --debug_mode dump: architecture, the first batches, parameters."""
    cfg = model_config
    top = [cfg.interaction_width, *cfg.top_mlp]
    log("model arch:")
    log(f"mlp top arch {len(cfg.top_mlp)} layers, with input to output dimensions:")
    log(str(np.array(top)))
    log("# of interactions")
    log(str(cfg.interaction_width))
    log(f"mlp bot arch {len(cfg.bottom_mlp) - 1} layers, with input to output dimensions:")
    log(str(np.array(cfg.bottom_mlp)))
    log("# of features (sparse and dense)")
    log(str(cfg.num_tables + 1))
    log("dense feature size")
    log(str(cfg.num_dense))
    log("sparse feature size")
    log(str(cfg.embedding_dim))
    log(
        f"# of embeddings (= # of sparse features) {cfg.num_tables}, "
        f"with dimensions {cfg.embedding_dim}x:"
    )
    log(str(np.array(cfg.table_sizes)))
    log("data (inputs and targets):")
    for j, (features, labels) in enumerate(source.sample_batches(global_batch, 3)):
        log(f"mini-batch: {j}")
        log(str(features[DENSE_KEY]))
        ids = features[SPARSE_KEY]
        if ids.ndim == 3:
            bags = [
                [[int(i) for i in bag if i >= 0] for bag in ids[:, t]] for t in range(ids.shape[1])
            ]
        else:
            bags = [[[int(i)] for i in ids[:, t]] for t in range(ids.shape[1])]
        log(str(bags))
        log(str(labels))
    print_parameters(model, "initial parameters (weights and bias):", log)


def print_parameters(model, title: str, log=print) -> None:
    """Prints ``title``, then the weights as the reference's --debug_mode does: tables,
    then each bottom- and top-MLP layer's weight ``[out, in]`` and bias."""
    log(title)
    for array in reference_parameters(model):
        log(str(array))
