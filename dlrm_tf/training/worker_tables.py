"""Tables spread over the workers of a ``MultiWorkerMirroredStrategy`` run.

Each spread table (``placed_variables.WorkerTable``) is held whole by one worker;
the others create it empty. What the run writes must still be the ordinary
one-device model: ``SingleDeviceCopy`` gathers every worker's tables (and their
optimizer slots) by collectives into a model outside the strategy, which the
chief saves and exports. ``worker_index`` names which worker of the plan this
process is.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dlrm_tf.model.dlrm import DLRM, build_model
from dlrm_tf.model.placed_variables import is_exchanged

# The rows sent in one collective step: about 16 MiB of float32 at any width.
_CHUNK_FLOATS = 1 << 22


def worker_index(strategy: tf.distribute.Strategy) -> int:
    """This process's position among the workers, as replicas are numbered: a
    ``chief`` task first, then the ``worker`` tasks in order."""
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return 0
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return int(resolver.task_id) + int(has_chief)


def spread_over_workers(model: DLRM) -> bool:
    """Whether some of ``model``'s tables live on one worker of several."""
    return any(is_exchanged(table) for table in model.embeddings.tables)


class _Sharer:
    """Collective steps that hand every worker the holder's values of a spread variable."""

    def __init__(self, strategy: tf.distribute.Strategy) -> None:
        self.strategy = strategy

        def all_reduce(value):
            context = tf.distribute.get_replica_context()
            # The identity puts the value on the replica's device: the all-reduce's
            # destination.
            return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(value))

        @tf.function(reduce_retracing=True)
        def share(value):
            return strategy.run(all_reduce, args=(value,))

        self._share = share

    def _sum(self, value: np.ndarray) -> np.ndarray:
        result = self.strategy.experimental_local_results(self._share(tf.constant(value)))[0]
        return result.numpy()

    def full_value(self, variable) -> np.ndarray:
        """The whole value of ``variable``, a spread table or slot (all workers call this,
        with their variables in the same order)."""
        local = np.asarray(variable.numpy())
        rows = int(self._sum(np.array([local.shape[0]], np.int64))[0])  # the holder's
        tail = local.shape[1:]
        width = int(np.prod(tail))
        held = local.shape[0] == rows
        chunk = max(1, _CHUNK_FLOATS // max(width, 1))
        parts = []
        for start in range(0, rows, chunk):
            stop = min(start + chunk, rows)
            mine = local[start:stop] if held else np.zeros_like(local, shape=(stop - start, *tail))
            parts.append(self._sum(mine))  # x + 0 = x: the holder's values exactly
        if not parts:
            return np.zeros_like(local, shape=(0, *tail))
        return np.concatenate(parts)


class SingleDeviceCopy:
    """The model of a spread run as one device holds it, refreshed on demand.

    ``refresh`` is a collective step (every worker calls it at the same point);
    the copy is built once, outside the strategy, and compiled like the run's.
    """

    def __init__(self, model: DLRM, strategy: tf.distribute.Strategy, compile_model) -> None:
        self.model = model
        self._sharer = _Sharer(strategy)
        self._compile = compile_model
        self._copy: DLRM | None = None

    def _built(self) -> DLRM:
        if self._copy is None:
            copy = build_model(self.model.model_config)
            self._compile(copy)
            copy.optimizer.build(copy.trainable_variables)
            self._copy = copy
        return self._copy

    def _value(self, variable) -> np.ndarray:
        if is_exchanged(variable):
            return self._sharer.full_value(variable)
        return np.asarray(variable.numpy())

    def refresh(self) -> DLRM:
        """The copy, with the run's current weights, optimizer state and step."""
        copy = self._built()
        for target, source in zip(copy.weights, self.model.weights, strict=True):
            target.assign(self._value(source))
        pairs = zip(copy.optimizer.variables, self.model.optimizer.variables, strict=True)
        for target, source in pairs:
            target.assign(self._value(source))
        return copy
