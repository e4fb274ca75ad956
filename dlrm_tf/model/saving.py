"""Model files: a DLRM saved as ``.keras`` (with its test metrics), loaded and restored.

``save_model`` writes a ``.keras`` file (architecture, weights, optimizer state
and step) plus a ``.json`` sidecar with the test metrics, each to a temporary
name in the same directory and then renamed over the target, so a reader never
sees a half-written file and a crash keeps the previous one.
"""

from __future__ import annotations

import json
import os
import tempfile

import keras
import numpy as np
from absl import logging

from dlrm_tf.model.dlrm import DLRM
from dlrm_tf.model.placed_variables import held_elsewhere
from input_pipeline import errors, safe_files


def _atomic_target(path: str, suffix: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=directory)
    os.close(fd)
    return tmp


def save_model(model: DLRM, path: str, metrics: dict | None = None) -> str:
    """Atomically writes ``path`` (a ``.keras`` file) and ``path + '.json'``.

    One writer at a time (a lock file next to ``path``); temporary files a killed
    save left are removed first; an existing ``path`` is replaced only if it is a
    ``.keras`` model file. Both files are fsynced before they are renamed into
    place and get the usual permissions under the umask.
    """
    if not path.endswith(".keras"):
        raise ValueError(f"`save_model`={path}: the file name must end in .keras")
    path = os.path.abspath(path)
    if os.path.lexists(path):
        problem = safe_files.keras_archive_problem(path)
        if problem or os.path.islink(path):
            raise safe_files.NotOursError(
                f"`save_model`={path} exists and is {problem or 'a symlink'}; refusing to "
                "replace it: choose another `save_model`"
            )
    directory, name = os.path.split(path)
    with safe_files.exclusive(path, f"`save_model`={path}", logging.warning):
        safe_files.remove_leftovers(
            directory, [f".{name}.*.keras", f".{name}.json.*.json"], logging.warning
        )
        tmp = _atomic_target(path, ".keras")
        try:
            model.save(tmp, overwrite=True)
            safe_files.private_to_umask(tmp)
            safe_files.publish(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        info = {
            "step": int(model.optimizer.iterations.numpy()) if model.optimizer is not None else 0,
            "model_config": model.model_config.to_dict(),
            "test": metrics,
        }
        tmp = _atomic_target(path + ".json", ".json")
        try:
            with open(tmp, "w") as f:
                json.dump(info, f, indent=1)
            safe_files.private_to_umask(tmp)
            safe_files.publish(tmp, path + ".json")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return path


def saved_best_metrics(path: str) -> dict | None:
    """The test metrics ``save_model`` recorded beside ``path`` (None if there are none)."""
    try:
        with open(path + ".json") as f:
            test = json.load(f).get("test")
    except (OSError, ValueError):
        return None
    if not test or "auc" not in test:
        return None
    return {"auc": float(test["auc"]), "accuracy": float(test.get("accuracy", 0.0))}


def load_model(path: str, compile: bool = False) -> DLRM:
    """Loads a model written by ``save_model`` (the custom classes registered)."""
    import dlrm_tf.model.losses  # noqa: F401  (registers the loss and metric)
    import dlrm_tf.model.optimizers  # noqa: F401  (registers the optimizers)
    import dlrm_tf.model.schedules  # noqa: F401  (registers the schedule)

    problem = safe_files.keras_archive_problem(path)
    if problem == "no such file":
        raise FileNotFoundError(f"`load_model`={path}: no such file")
    if problem:
        raise ValueError(f"`load_model`={path}: {problem}")
    try:
        model = keras.saving.load_model(path, compile=compile)
    except Exception as error:  # noqa: BLE001  (Keras raises many kinds for a bad file)
        raise ValueError(
            f"`load_model`={path}: cannot be loaded as a DLRM model ({errors.one_line(error)})"
        ) from error
    if not isinstance(model, DLRM):
        raise ValueError(f"`load_model`={path}: not a DLRM model ({type(model).__name__})")
    return model


def restore_model_state(model: DLRM, path: str, with_optimizer: bool = True) -> None:
    """Copies weights (and optimizer state and step) from a saved model into ``model``.

    ``model`` is built and compiled under the run's strategy, so its variables
    live where training needs them; the saved model is loaded on the host and
    its values assigned.
    """
    saved = load_model(path, compile=with_optimizer)
    if saved.model_config != model.model_config:
        theirs, ours = saved.model_config.to_dict(), model.model_config.to_dict()
        differing = "; ".join(
            f"{key}: saved {theirs.get(key)!r}, flags {ours.get(key)!r}"
            for key in sorted(set(theirs) | set(ours))
            if theirs.get(key) != ours.get(key)
        )
        raise ValueError(
            f"`load_model`={path}: its architecture differs from the flags' ({differing}); "
            "give the flags it was trained with"
        )
    for target, source in zip(model.weights, saved.weights, strict=True):
        if not held_elsewhere(target):  # a table another worker holds: its to load
            target.assign(source.numpy())
    if not with_optimizer:
        return
    if saved.optimizer is None:
        raise ValueError(f"`load_model`={path}: the file holds no optimizer state")
    saved.optimizer.build(saved.trainable_variables)
    targets, sources = model.optimizer.variables, saved.optimizer.variables
    if len(targets) != len(sources):
        raise ValueError(
            f"`load_model`={path}: optimizer state has {len(sources)} variables, the "
            f"`optimizer` chosen has {len(targets)}; use the optimizer it was trained with"
        )
    for target, source in zip(targets, sources, strict=True):
        if held_elsewhere(target):
            continue
        value = np.asarray(source.numpy())
        if tuple(target.shape) != value.shape:
            raise ValueError(
                f"`load_model`={path}: optimizer variable {target.path} has shape "
                f"{tuple(target.shape)}, saved {value.shape}"
            )
        target.assign(value)
