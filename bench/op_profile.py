"""Where a training step's time goes, op by op, from a TensorFlow profiler trace.

``ProfileSteps`` (a Keras callback) traces a few steps of ``model.fit``;
``breakdown`` reads the trace's per-op statistics (the profiler's
``framework_op_stats`` tool, as in TensorBoard's Profile tab) and sums the
ops' self-time into the parts of a DLRM step:

* ``lookup``: the embedding layer's forward ops (id checks, partition, gather,
  segment sum);
* ``lookup_grad``: their gradient ops;
* ``update``: the optimizer's ops (the tables' scatters and the MLPs' updates);
* ``mlp``: the MLPs, the interaction and the loss, forward and backward;
* ``exchange``: the collectives that carry the lookups of tables spread over
  workers, and their gradients (``EmbeddingBags``);
* ``xla``: XLA-compiled clusters (the tables' scatter updates; with
  ``--jit_compile`` the MLPs too), read from the trace's XLA executions, which
  the per-op statistics leave out;
* ``other``: everything else (input, Keras's step, metrics).

Times are per step, in ms of op self-time summed over threads: with several
threads an op's time overlaps others', so the parts add up to more than the
wall time of a step when ops run in parallel.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile

import keras
import tensorflow as tf

PARTS = ("lookup", "lookup_grad", "exchange", "update", "xla", "mlp", "other")


class ProfileSteps(keras.callbacks.Callback):
    """Traces the training steps ``first`` .. ``first + count - 1`` (1-based) into ``log_dir``."""

    def __init__(self, first: int, count: int, log_dir: str | None = None) -> None:
        super().__init__()
        self.first, self.count = first, count
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="op_profile_")
        self.traced = 0
        self._on = False

    def on_train_batch_begin(self, batch, logs=None):
        if batch + 1 == self.first and not self._on:
            tf.profiler.experimental.start(self.log_dir)
            self._on = True

    def on_train_batch_end(self, batch, logs=None):
        if self._on:
            self.traced += 1
            if self.traced == self.count:
                tf.profiler.experimental.stop()
                self._on = False


def part_of(op_name: str, op_type: str) -> str:
    """The part of a DLRM step an op belongs to, from its name scope."""
    name = op_name.lower()
    in_embedding = "embedding_bags" in name
    if in_embedding and op_type.startswith("Collective"):
        return "exchange"
    if "gradient_tape" in name or "gradients" in name:
        return "lookup_grad" if in_embedding else "mlp"
    if "sparse_sgd" in name or "sparse_adagrad" in name or "sparse_adam" in name:
        return "update"
    if "scatter" in op_type.lower() or name.startswith("assign") or "/assign" in name:
        return "update"
    if in_embedding:
        return "lookup"
    if any(key in name for key in ("mlp", "interaction", "loss", "dense", "linear")):
        return "mlp"
    return "other"


def trace_path(log_dir: str) -> str:
    """The newest ``.xplane.pb`` trace under ``log_dir``."""
    paths = glob.glob(os.path.join(log_dir, "plugins", "profile", "*", "*.xplane.pb"))
    if not paths:
        raise RuntimeError(f"no profiler trace under {log_dir}")
    return max(paths, key=os.path.getmtime)


def xla_ms(path: str) -> float:
    """Total ms of the XLA executions on the host's threads in the trace at ``path``."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    total_ps = 0
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            total_ps += sum(
                event.duration_ps
                for event in line.events
                if names.get(event.metadata_id) == "CpuExecutable::ExecuteAsyncOnStream"
            )
    return total_ps / 1e9


def op_rows(path: str) -> list[dict]:
    """Per-op rows (type, name, occurrences, self-time in us) of the trace at ``path``."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    data, ok = plugin.xspace_to_tools_data([path], "framework_op_stats", {})
    if not ok:
        raise RuntimeError(f"the profiler could not read {path}: {data!r}")
    table = json.loads(data)[0]
    columns = [c["id"] for c in table["cols"]]
    rows = []
    for row in table["rows"]:
        cells = [cell.get("v") if cell else None for cell in row["c"]]
        values = dict(zip(columns, cells, strict=True))
        if values.get("host_or_device") not in (None, "Host", "Device"):
            continue
        rows.append(
            {
                "type": values["type"],
                "name": values["operation"],
                "occurrences": int(values["occurrences"]),
                "self_us": float(values["total_self_time"]),
            }
        )
    return rows


def breakdown(log_dir: str, steps: int, top: int = 12) -> tuple[dict, list[tuple]]:
    """Per-step ms of each part of ``PARTS``, and the ``top`` op types by self-time.

    Args:
      log_dir: where ``ProfileSteps`` wrote the trace.
      steps: how many steps the trace holds.
      top: how many op types to list.

    Returns:
      ``({part: ms per step}, [(op type, part, ms per step), ...])``.
    """
    path = trace_path(log_dir)
    parts = dict.fromkeys(PARTS, 0.0)
    parts["xla"] = xla_ms(path) / steps
    by_type: dict[tuple[str, str], float] = {("XLA executions", "xla"): parts["xla"]}
    for row in op_rows(path):
        if row["type"] in ("IDLE", "_Recv", "_Send"):
            continue
        part = part_of(row["name"], row["type"])
        ms = row["self_us"] / 1000.0 / steps
        parts[part] += ms
        by_type[(row["type"], part)] = by_type.get((row["type"], part), 0.0) + ms
    ranked = sorted(by_type.items(), key=lambda item: -item[1])[:top]
    return (
        {part: round(ms, 2) for part, ms in parts.items()},
        [(op_type, part, round(ms, 2)) for (op_type, part), ms in ranked],
    )
