"""ONNX export: clear errors without the optional packages; with them, onnxruntime
reproduces the Keras model (one-hot and multi-hot bags, any batch size, external data)."""

import os
import sys

import numpy as np
import pytest

from dlrm_tf.config import ModelConfig
from dlrm_tf.model.dlrm import DENSE_KEY, SPARSE_KEY, build_model
from export import onnx_export
from export.onnx_export import OnnxExportError, save_onnx

CONFIG = ModelConfig(
    embedding_dim=4,
    table_sizes=(50, 7, 3),
    bottom_mlp=(5, 8, 4),
    top_mlp=(8, 1),
    interaction="dot",
)


def make_inputs(batch: int, bag: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if bag is None:
        ids = [rng.integers(0, n, size=batch) for n in CONFIG.table_sizes]
    else:
        ids = [rng.integers(-1, n, size=(batch, bag)) for n in CONFIG.table_sizes]
    return {
        DENSE_KEY: rng.random((batch, CONFIG.num_dense), dtype=np.float32),
        SPARSE_KEY: np.stack(ids, axis=1).astype(np.int64),
    }


@pytest.fixture(scope="module")
def model():
    return build_model(CONFIG)


def test_missing_converter_says_how_to_install_and_what_to_use_instead(
    model, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # makes `import tf2onnx` fail
    with pytest.raises(OnnxExportError) as err:
        save_onnx(model, tmp_path / "m.onnx", make_inputs(4))
    message = str(err.value)
    assert "tf2onnx" in message and "dlrm-tf[onnx]" in message
    assert "python -m export.saved_model" in message
    assert not os.path.exists(tmp_path / "m.onnx")


def test_bad_arguments_are_rejected_before_any_conversion(model, tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.onnx"):
        save_onnx(model, tmp_path / "m.bin", make_inputs(4))
    with pytest.raises(ValueError, match="sparse_features"):
        save_onnx(model, tmp_path / "m.onnx", {DENSE_KEY: np.zeros((2, 5), np.float32)})
    bad = make_inputs(4)
    bad[SPARSE_KEY] = bad[SPARSE_KEY][:3]
    with pytest.raises(ValueError, match="expected"):
        save_onnx(model, tmp_path / "m.onnx", bad)


def test_weight_bytes(model):
    rows = sum(CONFIG.table_sizes) * CONFIG.embedding_dim
    mlp = (5 * 8 + 8) + (8 * 4 + 4) + (CONFIG.interaction_width * 8 + 8) + (8 + 1)
    assert onnx_export.weight_bytes(model) == 4 * (rows + mlp)


# --- with the optional packages -------------------------------------------------------


@pytest.fixture
def ort():
    pytest.importorskip("tf2onnx")
    return pytest.importorskip("onnxruntime")


def run_onnx(ort, path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {DENSE_KEY: inputs[DENSE_KEY], SPARSE_KEY: inputs[SPARSE_KEY]})[0]


def test_one_hot_model_matches_at_any_batch_size(ort, model, tmp_path):
    messages = []
    path = save_onnx(model, tmp_path / "m.onnx", make_inputs(16), log=messages.append)
    assert path == str(tmp_path / "m.onnx")
    assert "max |diff|" in messages[0]
    assert not os.path.exists(path + ".data")  # small weights stay in the .onnx file
    for batch in (1, 100):
        inputs = make_inputs(batch, seed=batch)
        want = model(inputs, training=False).numpy()
        np.testing.assert_allclose(run_onnx(ort, path, inputs), want, rtol=0, atol=1e-5)


def test_multi_hot_bags_with_padding_and_empty_bags(ort, model, tmp_path):
    example = make_inputs(12, bag=4)
    example[SPARSE_KEY][-2:] = -1  # trailing examples with only empty bags
    example[SPARSE_KEY][3, 1] = -1
    path = save_onnx(model, tmp_path / "multi.onnx", example, log=lambda _: None)
    other = make_inputs(7, bag=6, seed=3)  # another batch size and bag length
    other[SPARSE_KEY][-1] = -1
    for inputs in (example, other):
        want = model(inputs, training=False).numpy()
        np.testing.assert_allclose(run_onnx(ort, path, inputs), want, rtol=0, atol=1e-5)


def test_external_data_and_xla_compiled_model(ort, tmp_path):
    compiled = build_model(CONFIG, jit_compile=True)
    inputs = make_inputs(9)
    path = save_onnx(compiled, tmp_path / "ext.onnx", inputs, external_data=True, log=print)
    assert os.path.getsize(path + ".data") >= onnx_export.weight_bytes(compiled)
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(path, load_external_data=False).graph
    external = [t.name for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert sorted(external) == sorted(w.path.replace("/", ".") for w in compiled.weights)
    assert [i.name for i in graph.input] == [DENSE_KEY, SPARSE_KEY]
    want = compiled(inputs, training=False).numpy()
    np.testing.assert_allclose(run_onnx(ort, path, inputs), want, rtol=0, atol=1e-5)


def test_mismatch_removes_the_files(ort, model, tmp_path):
    with pytest.raises(OnnxExportError, match="differ from the Keras model"):
        save_onnx(model, tmp_path / "m.onnx", make_inputs(4), atol=-1.0, external_data=True)
    assert os.listdir(tmp_path) == []


def test_missing_runtime_is_reported_unless_unchecked(model, tmp_path, monkeypatch):
    pytest.importorskip("tf2onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(OnnxExportError, match="verify=False"):
        save_onnx(model, tmp_path / "m.onnx", make_inputs(4))
    messages = []
    save_onnx(model, tmp_path / "m.onnx", make_inputs(4), verify=False, log=messages.append)
    assert os.path.getsize(tmp_path / "m.onnx") > 0
    assert "not checked" in messages[0]
