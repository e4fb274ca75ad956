"""The compute-graph picture: keras.utils.plot_model when graphviz is there, else a
TensorBoard graph event."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from dlrm_tf.config import ModelConfig
from dlrm_tf.model.dlrm import DENSE_KEY, SPARSE_KEY, build_model
from dlrm_tf.reports import graph_plot

CONFIG = ModelConfig(embedding_dim=4, table_sizes=(10, 7, 5), bottom_mlp=(6, 8, 4), top_mlp=(8, 1))
BLOCKS = ["bottom_mlp", "embedding_bags", "interaction", "top_mlp"]


@pytest.fixture(scope="module")
def model():
    return build_model(CONFIG)


def traced_graph(log_dir: str):
    """The function graphs that the TensorBoard events in ``log_dir`` hold."""
    graphs = []
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "graph_run_metadata_graph":
                    metadata = config_pb2.RunMetadata.FromString(value.tensor.string_val[0])
                    graphs.extend(g.pre_optimization_graph for g in metadata.function_graphs)
    return graphs


def node_names(log_dir: str) -> str:
    return " ".join(node.name for graph in traced_graph(log_dir) for node in graph.node)


def test_without_graphviz_writes_a_tensorboard_graph(model, tmp_path, monkeypatch):
    monkeypatch.setattr(graph_plot, "graphviz_available", lambda: False)
    messages = []
    out = graph_plot.plot_compute_graph(model, tmp_path / "graph.png", log=messages.append)
    assert out == str(tmp_path / "tensorboard" / "graph")
    assert not os.path.exists(tmp_path / "graph.png")
    assert "TensorBoard" in messages[0] and out in messages[0]
    names = node_names(out)
    for block in BLOCKS:
        assert block in names


def test_tensorboard_graph_of_a_model_that_is_not_a_dlrm(tmp_path, monkeypatch):
    monkeypatch.setattr(graph_plot, "graphviz_available", lambda: False)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="head")])
    with pytest.raises(ValueError, match="example_inputs"):
        graph_plot.plot_compute_graph(other, tmp_path / "g.png")
    out = graph_plot.plot_compute_graph(
        other, tmp_path / "g.png", log_dir=tmp_path / "tb", example_inputs=np.ones((1, 3))
    )
    assert out == str(tmp_path / "tb")
    assert "head" in node_names(out)


def test_with_graphviz_draws_the_blocks_of_the_model(model, tmp_path, monkeypatch):
    monkeypatch.setattr(graph_plot, "graphviz_available", lambda: True)
    drawn = {}

    def fake_plot_model(view, to_file, **options):
        drawn.update(view=view, options=options)
        with open(to_file, "wb") as f:
            f.write(b"picture")

    monkeypatch.setattr(keras.utils, "plot_model", fake_plot_model)
    messages = []
    path = tmp_path / "pictures" / "graph.png"
    out = graph_plot.plot_compute_graph(model, path, log=messages.append)
    assert out == str(path) and path.read_bytes() == b"picture"
    assert "plot_model" in messages[0]
    assert not os.path.exists(tmp_path / "pictures" / "tensorboard")
    view = drawn["view"]
    assert [layer.name for layer in view.layers] == [DENSE_KEY, SPARSE_KEY, *BLOCKS]
    assert drawn["options"]["show_shapes"] is True
    # The drawn view is the model itself: same layers, same weights, same outputs.
    inputs = {
        DENSE_KEY: np.random.default_rng(0).random((3, 6), dtype=np.float32),
        SPARSE_KEY: np.array([[1, 2, 3], [0, 0, 0], [9, 6, 4]]),
    }
    np.testing.assert_array_equal(view(inputs).numpy(), model(inputs).numpy())


def test_a_broken_graphviz_install_falls_back_to_tensorboard(model, tmp_path, monkeypatch):
    monkeypatch.setattr(graph_plot, "graphviz_available", lambda: True)

    def failing_plot_model(*args, **kwargs):
        raise OSError("dot not found")

    monkeypatch.setattr(keras.utils, "plot_model", failing_plot_model)
    messages = []
    out = graph_plot.plot_compute_graph(model, tmp_path / "graph.png", log=messages.append)
    assert out == str(tmp_path / "tensorboard" / "graph")
    assert "dot not found" in messages[0]
    assert "top_mlp" in node_names(out)


def test_graphviz_available_needs_the_dot_program(monkeypatch):
    monkeypatch.setattr(graph_plot.shutil, "which", lambda name: None)
    assert graph_plot.graphviz_available() is False


def test_block_view_builds_a_pydot_graph(model):
    pytest.importorskip("pydot")
    from keras.src.utils.model_visualization import model_to_dot

    dot = model_to_dot(graph_plot.dlrm_block_view(model), show_shapes=True)
    text = dot.to_string()
    for block in BLOCKS:
        assert block in text
