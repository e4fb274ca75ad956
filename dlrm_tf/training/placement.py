"""Embedding-table placement: which device holds which table, and the bytes each device holds.

A plan is pure arithmetic (no TensorFlow): the MLPs are data-parallel, so every
device holds them with their optimizer slots; each table lives on one device or,
replicated, on every device. Policies (``config.PLACEMENTS``):

- ``replicated``: every table on every device (what training does today).
- ``table_wise``: each table whole on one device, memory-balanced greedily:
  tables in decreasing size (ties: lower table index first), each to the device
  holding the fewest bytes so far (ties: the earlier device in the list). The
  reference instead puts table ``k`` on device ``k % ndevices`` (round-robin),
  which ignores sizes: with Criteo's tables, two 10M-row tables can land on one
  device while another gets only small ones.
- ``auto``: tables whose weights and slots are below ``threshold_bytes``
  replicated, the rest table-wise as above.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from dlrm_tf.config import PLACEMENTS, ConfigError, ModelConfig
from dlrm_tf.training.memory import (
    ModelTooLargeError,
    format_bytes,
    parameter_counts,
    trained_bytes,
)

# ``auto`` copies a table to every device below this size (weights + optimizer slots).
# A copy that small costs each device less than the MLPs it already holds (Criteo
# Kaggle's at d=16 are 1.8 MiB of weights) and saves moving that table's lookups
# between devices or workers; Criteo's small tables (3 to a few thousand rows) fall below
# it at d <= 64, its large ones (10^5 to 10^7 rows) far above.
AUTO_THRESHOLD_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class TablePlacement:
    """One table: its rows, its bytes (weights + slots, one copy) and its devices."""

    table: int
    rows: int
    bytes: int
    devices: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class PlacementPlan:
    """Where each table lives and what every device holds (float32).

    Attributes:
      policy: one of ``config.PLACEMENTS``.
      optimizer: whose slots count (``config.OPTIMIZER_SLOTS``).
      devices: the devices, in order (e.g. ``CPU:0`` or ``worker 1 GPU:0``).
      mlp_bytes: the MLPs' weights and slots, held by every device.
      tables: one entry per table, in table order.
    """

    policy: str
    optimizer: str
    devices: tuple[str, ...]
    mlp_bytes: int
    tables: tuple[TablePlacement, ...]

    def tables_on(self, device: str) -> list[TablePlacement]:
        """The tables ``device`` holds, in table order."""
        return [t for t in self.tables if device in t.devices]

    def device_bytes(self) -> dict[str, int]:
        """Bytes on each device: the MLPs plus its tables, weights and slots."""
        return {d: self.mlp_bytes + sum(t.bytes for t in self.tables_on(d)) for d in self.devices}

    @property
    def spread(self) -> bool:
        """Whether some table is not on every device (the plan is not replication)."""
        return any(len(t.devices) < len(self.devices) for t in self.tables)


def _bytes(num_bytes: int) -> str:
    return f"{num_bytes:,} bytes ({format_bytes(num_bytes)})"


def _refuse(table: TablePlacement, device: str, held: int, limit: int, optimizer: str) -> None:
    raise ModelTooLargeError(
        f"embedding table {table.table} ({table.rows:,} rows, {_bytes(table.bytes)} with its "
        f"{optimizer} slots) does not fit on {device}: it already holds {_bytes(held)}, "
        f"+ {table.bytes:,} = {_bytes(held + table.bytes)} > its limit {_bytes(limit)}. "
        "Use more devices, `embedding_placement`=table_wise, or smaller tables"
    )


def _assign(
    tables: list[TablePlacement],
    devices: tuple[str, ...],
    held: dict[str, int],
    limit: int | None,
    optimizer: str,
) -> dict[int, str]:
    """The greedy table-wise assignment: table index -> device (``held`` is updated)."""
    where = {}
    for table in sorted(tables, key=lambda t: (-t.bytes, t.table)):
        device = min(devices, key=held.__getitem__)  # min keeps the first: ties by order
        if limit is not None and held[device] + table.bytes > limit:
            _refuse(table, f"{device} (the least loaded device)", held[device], limit, optimizer)
        held[device] += table.bytes
        where[table.table] = device
    return where


def plan_placement(
    config: ModelConfig,
    optimizer: str,
    devices: Sequence[str],
    policy: str = "replicated",
    limit_bytes: int | None = None,
    threshold_bytes: int = AUTO_THRESHOLD_BYTES,
) -> PlacementPlan:
    """The placement of ``config``'s tables over ``devices`` under ``policy``.

    Args:
      config: the architecture (its ``table_sizes`` and ``embedding_dim``).
      optimizer: ``sgd``, ``adagrad`` or ``adam`` (their slots count).
      devices: device names, in order; several workers' devices all together.
      policy: ``replicated``, ``table_wise`` or ``auto`` (see the module docstring).
      limit_bytes: what one device may hold of weights and slots (None: no limit);
        leave room for activations and the runtime yourself.
      threshold_bytes: ``auto`` replicates tables whose bytes are below it.

    Raises:
      ModelTooLargeError: a device would exceed ``limit_bytes`` (the message names
        the table, its bytes, the device, what it already holds and the limit).
      ConfigError: an unknown policy or no device.
    """
    if policy not in PLACEMENTS:
        raise ConfigError(f"`embedding_placement`={policy!r}: must be one of {PLACEMENTS}")
    if not devices:
        raise ConfigError("`embedding_placement`: no device to place the tables on")
    devices = tuple(devices)
    _, mlp = parameter_counts(config)
    plan = PlacementPlan(policy, optimizer, devices, trained_bytes(mlp, optimizer), ())
    tables = [
        TablePlacement(k, rows, trained_bytes(rows * config.embedding_dim, optimizer), devices)
        for k, rows in enumerate(config.table_sizes)
    ]
    spread = {
        "replicated": [],
        "table_wise": tables,
        "auto": [t for t in tables if t.bytes >= threshold_bytes],
    }[policy]
    held = dict.fromkeys(devices, plan.mlp_bytes)
    if limit_bytes is not None and plan.mlp_bytes > limit_bytes:
        raise ModelTooLargeError(
            f"the MLPs ({_bytes(plan.mlp_bytes)} with their {optimizer} slots) alone exceed "
            f"the limit of {_bytes(limit_bytes)} per device"
        )
    for table in tables:  # the copies every device holds, in table order
        if table not in spread:
            if limit_bytes is not None and held[devices[0]] + table.bytes > limit_bytes:
                _refuse(table, "every device", held[devices[0]], limit_bytes, optimizer)
            held = {d: b + table.bytes for d, b in held.items()}
    where = _assign(spread, devices, held, limit_bytes, optimizer)
    placed = tuple(
        dataclasses.replace(t, devices=(where[t.table],)) if t.table in where else t for t in tables
    )
    return dataclasses.replace(plan, tables=placed)


def _table_list(tables: list[TablePlacement]) -> str:
    names = ", ".join(str(t.table) for t in tables)
    rows = sum(t.rows for t in tables)
    return f"table{'s' if len(tables) > 1 else ''} {names} ({rows:,} rows)"


def format_placement(plan: PlacementPlan) -> list[str]:
    """The plan as a few lines: the MLPs and the replicated tables, then one line per device
    with its own tables and all it holds."""
    shared = [t for t in plan.tables if len(t.devices) == len(plan.devices)]
    copied = f"; on every device: {_table_list(shared)}" if shared else ""
    lines = [
        f"Placement plan ({plan.policy} over {len(plan.devices)} device(s), weights + "
        f"{plan.optimizer} slots): MLPs {_bytes(plan.mlp_bytes)} on every device{copied}"
    ]
    for device, total in plan.device_bytes().items():
        own = [t for t in plan.tables_on(device) if t not in shared]
        tables = f"{_table_list(own)}; " if own else ""
        lines.append(f"  {device}: {tables}holds {_bytes(total)}")
    return lines


def plan_and_print(
    config: ModelConfig,
    optimizer: str,
    devices: Sequence[str],
    policy: str,
    log: Callable[[str], None],
    limit_bytes: int | None = None,
) -> PlacementPlan:
    """Plans (``plan_placement``), prints the plan's lines with ``log``, returns it."""
    plan = plan_placement(config, optimizer, devices, policy, limit_bytes)
    for line in format_placement(plan):
        log(line)
    return plan
