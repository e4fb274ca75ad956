"""Up-front memory arithmetic: fail before building tables that cannot fit."""

from __future__ import annotations

import psutil

from dlrm_tf.config import OPTIMIZER_SLOTS, ModelConfig

# Room for activations, gradients of the batch, the input pipeline and the runtime.
HEADROOM = 1.25


class ModelTooLargeError(MemoryError):
    """The model would not fit; the message holds the arithmetic."""


def parameter_counts(config: ModelConfig) -> tuple[int, int]:
    """(embedding parameters, MLP parameters) of a model."""
    embedding = sum(config.table_sizes) * config.embedding_dim
    mlp = 0
    widths = list(config.bottom_mlp)
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        mlp += fan_in * fan_out + fan_out
    widths = [config.interaction_width, *config.top_mlp]
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        mlp += fan_in * fan_out + fan_out
    return embedding, mlp


def required_bytes(config: ModelConfig, optimizer: str, replicas_per_host: int = 1) -> int:
    """Bytes of float32 parameters plus optimizer slots, for every replica on this host."""
    embedding, mlp = parameter_counts(config)
    per_copy = (embedding + mlp) * 4 * (1 + OPTIMIZER_SLOTS[optimizer])
    return per_copy * replicas_per_host


def check_memory(
    config: ModelConfig,
    optimizer: str,
    replicas_per_host: int = 1,
    available_bytes: int | None = None,
    device: str = "host memory",
) -> int:
    """Raises ``ModelTooLargeError`` with the arithmetic if the model would not fit.

    Args:
      config: the architecture.
      optimizer: ``sgd``, ``adagrad`` or ``adam`` (their slots count).
      replicas_per_host: model copies in this memory (mirrored replicas on CPU
        devices share host memory).
      available_bytes: free bytes; default: this host's available memory.
      device: what the memory is, for the message.

    Returns:
      The bytes required.
    """
    embedding, mlp = parameter_counts(config)
    need = required_bytes(config, optimizer, replicas_per_host)
    if available_bytes is None:
        available_bytes = psutil.virtual_memory().available
    if need * HEADROOM > available_bytes:
        gib, slots = 2**30, OPTIMIZER_SLOTS[optimizer]
        raise ModelTooLargeError(
            f"the model does not fit in {device}: embedding tables "
            f"{sum(config.table_sizes):,} rows x {config.embedding_dim} = {embedding:,} params, "
            f"MLPs {mlp:,} params; x 4 bytes x (1 weight + {slots} {optimizer} "
            f"slots) x {replicas_per_host} replica(s) = {need / gib:.2f} GiB, "
            f"x {HEADROOM} headroom = {need * HEADROOM / gib:.2f} GiB > "
            f"{available_bytes / gib:.2f} GiB available. Lower `max_ind_range` (convert with a "
            "smaller cap or a `frequency_threshold`), `embedding_dim`, or use sgd."
        )
    return need
