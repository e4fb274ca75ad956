"""A picture of the model's compute graph, or, without graphviz, a TensorBoard graph.

With ``pydot`` and graphviz's ``dot`` program installed, :func:`plot_compute_graph`
draws the model with ``keras.utils.plot_model``; a DLRM model is drawn as its
blocks (inputs, bottom MLP, embedding bags, interaction, top MLP) with their
shapes. Otherwise it traces one forward pass into a TensorBoard log directory
(``tensorboard --logdir DIR``, "Graphs" tab). Neither package is required.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from dlrm_tf.model.dlrm import DENSE_KEY, DLRM, SPARSE_KEY


def graphviz_available() -> bool:
    """Whether ``keras.utils.plot_model`` can render: pydot importable and ``dot`` on PATH."""
    return importlib.util.find_spec("pydot") is not None and shutil.which("dot") is not None


def dlrm_block_view(model: DLRM) -> keras.Model:
    """A functional model over ``model``'s own layers (shared weights), for drawing.

    A subclassed model draws as one opaque box; this view shows the blocks of
    DLRM and how the data flows between them. (The ``loss_threshold`` clamp
    is not drawn.)
    """
    cfg = model.model_config
    dense = keras.Input((cfg.num_dense,), name=DENSE_KEY)
    sparse = keras.Input((cfg.num_tables,), dtype="int64", name=SPARSE_KEY)
    x = model.bottom_mlp(dense)
    embedded = model.embeddings(sparse)
    probability = model.top_mlp(model.interaction((x, embedded)))
    return keras.Model({DENSE_KEY: dense, SPARSE_KEY: sparse}, probability, name=model.name)


def _default_inputs(model) -> dict[str, np.ndarray]:
    if not isinstance(model, DLRM):
        raise ValueError(
            "plot_compute_graph: pass example_inputs for a model that is not a DLRM "
            "(they are needed to trace its graph)"
        )
    cfg = model.model_config
    return {
        DENSE_KEY: np.zeros((2, cfg.num_dense), np.float32),
        SPARSE_KEY: np.zeros((2, cfg.num_tables), np.int64),
    }


def write_tensorboard_graph(model, log_dir: str, example_inputs: Any = None) -> str:
    """Traces one inference pass of ``model`` and writes its graph as a TensorBoard event."""
    inputs = example_inputs if example_inputs is not None else _default_inputs(model)
    # Converted before tracing starts, so that the only graph recorded is the model's.
    inputs = tf.nest.map_structure(tf.convert_to_tensor, inputs)
    forward = tf.function(lambda features: model(features, training=False))
    os.makedirs(log_dir, exist_ok=True)
    writer = tf.summary.create_file_writer(log_dir)
    tf.summary.trace_on(graph=True, profiler=False)
    try:
        forward(inputs)
        with writer.as_default():
            tf.summary.trace_export(name=f"{model.name}_forward", step=0)
    finally:
        tf.summary.trace_off()
        writer.flush()
        writer.close()
    return log_dir


def plot_compute_graph(
    model,
    path: str | os.PathLike,
    *,
    log_dir: str | os.PathLike | None = None,
    example_inputs: Any = None,
    log: Callable[[str], None] = print,
) -> str:
    """Draws ``model``'s compute graph; returns what it wrote.

    Args:
      model: a built Keras model (a DLRM is drawn block by block).
      path: the picture to write (``.png``, ``.svg``, ``.pdf``, ...) when
        graphviz is available.
      log_dir: the TensorBoard directory of the fallback; default
        ``<dir of path>/tensorboard/graph``.
      example_inputs: inputs to trace the fallback's graph with (whatever the
        model takes); default for a DLRM: two all-zero examples.
      log: where the message saying which of the two was written goes.

    Returns:
      ``path`` if the picture was drawn, else the TensorBoard log directory.
    """
    path = os.fspath(path)
    if log_dir is None:
        log_dir = os.path.join(os.path.dirname(path) or ".", "tensorboard", "graph")
    log_dir = os.fspath(log_dir)

    reason = "pydot and graphviz's 'dot' program are not installed"
    if graphviz_available():
        view = dlrm_block_view(model) if isinstance(model, DLRM) else model
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            keras.utils.plot_model(
                view,
                to_file=path,
                show_shapes=True,
                show_dtype=True,
                show_layer_names=True,
                show_layer_activations=True,
                expand_nested=True,
            )
        except (ImportError, OSError) as err:  # a broken pydot / graphviz install
            reason = f"keras.utils.plot_model failed ({err})"
        else:
            log(f"Compute graph drawn with keras.utils.plot_model: {path}")
            return path

    write_tensorboard_graph(model, log_dir, example_inputs)
    log(
        f"Compute graph written for TensorBoard to {log_dir} ({reason}; view it with "
        f"`tensorboard --logdir {log_dir}`, Graphs tab)"
    )
    return log_dir
