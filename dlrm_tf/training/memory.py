"""The memory plan and disk check: fail before tables or outputs that cannot fit.

Up-front arithmetic: refuse to build tables that cannot fit in memory, or to train
a model whose checkpoint or export cannot be written."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable

import psutil

from dlrm_tf.config import OPTIMIZER_SLOTS, ModelConfig

# Room for activations, gradients of the batch, the input pipeline and the runtime.
HEADROOM = 1.25
GIB = 2**30
BYTES_PER_VALUE = 4  # float32 weights and slots
# Besides the variables (measured: tens of KB): a .keras file's config and HDF5
# headers, a backup's index; a SavedModel's graph and warm-up requests (1-2 MB).
CHECKPOINT_EXTRA_BYTES = 1 << 20
EXPORT_EXTRA_BYTES = 8 << 20


class ModelTooLargeError(MemoryError):
    """The model would not fit; the message holds the arithmetic."""


class DiskSpaceError(OSError):
    """A checkpoint or export directory's file system lacks the space the run needs."""


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


def trained_bytes(params: int, optimizer: str) -> int:
    """Bytes of ``params`` float32 weights plus the slots ``optimizer`` keeps for them."""
    return params * BYTES_PER_VALUE * (1 + OPTIMIZER_SLOTS[optimizer])


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """What one model copy (one replica) holds, float32, and what the run writes to disk."""

    table_rows: int
    embedding_dim: int
    optimizer: str
    table_bytes: int  # the embedding tables of one replica
    mlp_bytes: int  # the MLP weights of one replica
    replicas_per_host: int
    export_assets: int = 0  # vocabulary files the raw serving signature carries

    @property
    def slots(self) -> int:
        return OPTIMIZER_SLOTS[self.optimizer]

    @property
    def checkpoint_bytes(self) -> int:
        """A ``--save_model`` file or one backup: weights and optimizer slots."""
        return self.replica_bytes + CHECKPOINT_EXTRA_BYTES

    @property
    def export_bytes(self) -> int:
        """A SavedModel version: the weights (no slots), its graph and assets."""
        return self.table_bytes + self.mlp_bytes + EXPORT_EXTRA_BYTES + self.export_assets

    @property
    def replica_bytes(self) -> int:
        """Weights and optimizer slots of one replica."""
        return (self.table_bytes + self.mlp_bytes) * (1 + self.slots)

    @property
    def host_bytes(self) -> int:
        """Weights and slots of every replica in this host's memory."""
        return self.replica_bytes * self.replicas_per_host


def memory_plan(
    config: ModelConfig, optimizer: str, replicas_per_host: int = 1, export_assets: int = 0
) -> MemoryPlan:
    """The plan of a model trained with ``optimizer`` (``sgd``, ``adagrad``, ``adam``);
    ``export_assets``: bytes of the vocabulary files an export copies."""
    embedding, mlp = parameter_counts(config)
    return MemoryPlan(
        table_rows=sum(config.table_sizes),
        embedding_dim=config.embedding_dim,
        optimizer=optimizer,
        table_bytes=embedding * BYTES_PER_VALUE,
        mlp_bytes=mlp * BYTES_PER_VALUE,
        replicas_per_host=replicas_per_host,
        export_assets=export_assets,
    )


def vocabulary_bytes(metadata: dict | None) -> int:
    """Bytes of a converted dataset's vocabulary files (0 without any)."""
    if not metadata:
        return 0
    files = metadata.get("vocabulary_files") or []
    return sum(os.path.getsize(os.path.join(metadata["data_dir"], p)) for p in files)


def format_bytes(num_bytes: float) -> str:
    """GiB with 3 decimals; below 0.01 GiB, MiB with 1 (a small plan stays readable)."""
    if num_bytes < GIB / 100:
        return f"{num_bytes / 2**20:.1f} MiB"
    return f"{num_bytes / GIB:.3f} GiB"


def format_plan(plan: MemoryPlan, device: str = "host memory") -> str:
    """The plan as one line: per replica, in ``device``, and on disk."""
    return (
        f"Memory plan: per replica: tables {plan.table_rows:,} rows x "
        f"{plan.embedding_dim} = {format_bytes(plan.table_bytes)}, their {plan.optimizer} "
        f"slots {format_bytes(plan.table_bytes * plan.slots)}; MLPs "
        f"{format_bytes(plan.mlp_bytes)}, their slots "
        f"{format_bytes(plan.mlp_bytes * plan.slots)}; {plan.replicas_per_host} replica(s) in "
        f"{device}: {format_bytes(plan.host_bytes)}. Disk: a checkpoint (--save_model, each "
        f"--backup_dir backup) {format_bytes(plan.checkpoint_bytes)}, an export (--export_dir) "
        f"{format_bytes(plan.export_bytes)}"
    )


def required_bytes(config: ModelConfig, optimizer: str, replicas_per_host: int = 1) -> int:
    """Bytes of float32 parameters plus optimizer slots, for every replica on this host."""
    return memory_plan(config, optimizer, replicas_per_host).host_bytes


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
            f"{available_bytes / gib:.2f} GiB available. Shrink the tables (convert without "
            "`categorical`=hash, with a smaller `max_ind_range` or a `frequency_threshold`), "
            "lower `embedding_dim`, or use sgd."
        )
    return need


@dataclasses.dataclass(frozen=True)
class DiskNeed:
    """Bytes a run will write under ``path`` (given as ``flag``)."""

    flag: str
    path: str
    bytes: int
    what: str


def held_bytes(path: str) -> int:
    """Bytes of the files under ``path`` (0 if it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                total += os.path.getsize(full)
    return total


def disk_needs(
    plan: MemoryPlan,
    save_model: str = "",
    backup_dir: str = "",
    export_dir: str = "",
    backup_copies: int = 3,
    held: Callable[[str], int] = held_bytes,
) -> list[DiskNeed]:
    """What each output directory must have free.

    ``--save_model``: one checkpoint (a new file is written beside the old one,
    then renamed over it). ``--backup_dir``: ``backup_copies`` backups at once
    (those kept plus the one being written), less what its backups already hold,
    but at least one. ``--export_dir``: one new version.
    """
    needs = []
    if save_model:
        needs.append(DiskNeed("--save_model", save_model, plan.checkpoint_bytes, "a checkpoint"))
    if backup_dir:
        need = max(plan.checkpoint_bytes, backup_copies * plan.checkpoint_bytes - held(backup_dir))
        needs.append(DiskNeed("--backup_dir", backup_dir, need, f"up to {backup_copies} backups"))
    if export_dir:
        needs.append(DiskNeed("--export_dir", export_dir, plan.export_bytes, "an export"))
    return needs


def nearest_existing(path: str) -> str:
    """``path`` itself if it exists, else its nearest existing parent directory."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def free_bytes(path: str) -> int:
    """Free bytes of the file system ``path`` will be written to."""
    return shutil.disk_usage(nearest_existing(path)).free


def _file_system(path: str) -> int:
    return os.stat(nearest_existing(path)).st_dev


def check_disk(
    needs: list[DiskNeed],
    free: Callable[[str], int] | None = None,
    file_system: Callable[[str], int] = _file_system,
) -> None:
    """Raises ``DiskSpaceError`` naming the path and the numbers when the needs of
    the paths on one file system exceed its free space (``free``: ``free_bytes``)."""
    free = free or free_bytes
    groups: dict[int, list[DiskNeed]] = {}
    for need in needs:
        groups.setdefault(file_system(need.path), []).append(need)
    for group in groups.values():
        total = sum(n.bytes for n in group)
        available = free(group[0].path)
        if total > available:
            parts = ", ".join(f"{n.what} for {n.flag} {format_bytes(n.bytes)}" for n in group)
            first = group[0]
            raise DiskSpaceError(
                f"{first.flag}={first.path}: its file system (at "
                f"{nearest_existing(first.path)}) has {format_bytes(available)} free, the run "
                f"will write {format_bytes(total)} there ({parts}): free space, choose a path on "
                "another disk, or shrink the tables (see the memory plan)"
            )


def check_placed_memory(held_bytes: int, available_bytes: int | None = None) -> int:
    """Raises ``ModelTooLargeError`` with the arithmetic if what this host holds under an
    ``embedding_placement`` plan (``held_bytes``, weights and slots) would not fit."""
    if available_bytes is None:
        available_bytes = psutil.virtual_memory().available
    if held_bytes * HEADROOM > available_bytes:
        raise ModelTooLargeError(
            f"the model does not fit in host memory: this host's devices hold "
            f"{held_bytes:,} bytes of weights and slots under the placement plan, x {HEADROOM} "
            f"headroom = {held_bytes * HEADROOM / GIB:.2f} GiB > {available_bytes / GIB:.2f} GiB "
            "available. Spread the tables over more workers, or shrink them"
        )
    return held_bytes


def plan_and_check(
    config: ModelConfig,
    optimizer: str,
    replicas_per_host: int,
    log: Callable[[str], None],
    export_assets: int = 0,
    held_bytes: int | None = None,
    **outputs: str | int,
) -> MemoryPlan:
    """Prints the memory plan, then checks memory and, for ``outputs`` (the
    arguments of ``disk_needs``), disk space; raises when either lacks room.
    ``held_bytes``: what this host holds when the tables are spread (then checked
    instead of whole copies)."""
    plan = memory_plan(config, optimizer, replicas_per_host, export_assets)
    log(format_plan(plan))
    if held_bytes is None:
        check_memory(config, optimizer, replicas_per_host)
    else:
        check_placed_memory(held_bytes)
    check_disk(disk_needs(plan, **outputs))
    return plan
