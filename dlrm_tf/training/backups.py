"""Crash-safe backups of a training run, resumed by a rerun of the same command.

``Backup`` keeps ``tf.train.Checkpoint`` backups (model, optimizer, step, best
test metrics); ``CheckpointManager`` writes the checkpoint files before it
updates its index, so a kill mid-write leaves the last complete backup in force.
``backup_lock`` keeps a second run from writing into the same backups.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Sequence

import tensorflow as tf
from absl import logging

from dlrm_tf.model.dlrm import DLRM
from input_pipeline import safe_files

BACKUPS_KEPT = 2  # the newest backups a Backup keeps


class Backup:
    """Crash-safe backups in ``directory``, resumed by a rerun of the same command."""

    def __init__(
        self,
        directory: str,
        model: DLRM,
        max_to_keep: int = BACKUPS_KEPT,
        task: str | None = None,
        shards_of: Sequence[str | None] = (),
    ) -> None:
        """Backups of ``model`` (and its optimizer) in ``directory``.

        Under multi-worker training every worker saves (the write is a
        collective step), but only the chief (``task`` None) writes into
        ``directory``; another task writes into ``directory/.<task>``, and every
        worker restores from the chief's backups (``directory`` must be on a
        file system all workers share).

        With tables spread over the workers, each worker's backups hold its own
        tables: ``shards_of`` names every worker's task (None: the chief), and
        each worker restores its own backup of the newest step that all of them
        completed.
        """
        self.model = model
        self.directory = directory
        # The best test metrics so far travel with the backup (JSON; "" = none yet).
        self._best = tf.Variable("", dtype=tf.string, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=model.optimizer, best_metrics=self._best
        )
        self.own = _task_directory(directory, task)
        self.shards = [_task_directory(directory, peer) for peer in shards_of]
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.own, max_to_keep=max_to_keep, step_counter=None
        )
        self._last_saved_step = -1

    @property
    def latest(self) -> str | None:
        """The backup to resume from, if any: the chief's newest one or, with shards,
        this worker's at the newest step every worker completed."""
        if not self.shards:
            return tf.train.latest_checkpoint(self.directory)
        return newest_common_backup(self.own, self.shards)

    def restore(self) -> bool:
        """Restores the newest backup, if any; returns whether one was found."""
        latest = self.latest
        if latest is None:
            return False
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        self._last_saved_step = int(self.model.optimizer.iterations.numpy())
        return True

    @property
    def best_metrics(self) -> dict | None:
        """The best test metrics recorded with the restored backup, if any."""
        text = self._best.numpy().decode()
        return json.loads(text) if text else None

    def save(self, force: bool = False, best: dict | None = None) -> str | None:
        """Writes a backup at the current step (once per step), with ``best`` metrics."""
        step = int(self.model.optimizer.iterations.numpy())
        if step == self._last_saved_step and not force:
            return None
        if best is not None:
            self._best.assign(json.dumps({k: float(best[k]) for k in ("auc", "accuracy")}))
        self._last_saved_step = step
        return self.manager.save(checkpoint_number=step)


def _task_directory(directory: str, task: str | None) -> str:
    return directory if task is None else os.path.join(directory, f".{task}")


def _saved_steps(directory: str) -> set[int]:
    """The steps of the complete backups in ``directory`` (a checkpoint's index file is
    written after its data)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return set()
    return {int(m[1]) for m in map(re.compile(r"ckpt-(\d+)\.index").fullmatch, names) if m}


def newest_common_backup(own: str, shards: Sequence[str]) -> str | None:
    """The backup in ``own`` of the newest step that every directory of ``shards``
    holds complete (a kill can fall between two workers' saves of one step)."""
    common = set.intersection(*(_saved_steps(d) for d in shards))
    return os.path.join(own, f"ckpt-{max(common)}") if common else None


@contextlib.contextmanager
def backup_lock(directory: str, task: str | None = None) -> Iterator[None]:
    """Holds the lock of the backups this process writes (the chief's ``directory``,
    another task's ``directory/.<task>``) for the block: two runs sharing a
    ``--backup_dir`` would overwrite each other's backups. Removes the temporary
    checkpoint directories (``*_temp``) a killed save left there."""
    own = directory if task is None else os.path.join(directory, f".{task}")
    os.makedirs(own, exist_ok=True)
    with safe_files.exclusive(own, f"`backup_dir`={own}", logging.warning):
        safe_files.remove_leftovers(own, ["*_temp"], logging.warning)
        yield
