"""SavedModel export: signatures served without keras, warm-up, versioning, bad requests."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent import futures

import numpy as np
import pytest
import tensorflow as tf
from cli_check import REPO, assert_one_error_line, run_module
from graph_ops import graph_op_types

from dlrm_tf.config import ModelConfig
from dlrm_tf.model.dlrm import build_model
from export import grpc_client, warmup
from export import saved_model as esm
from export import signatures as sig
from input_pipeline import safe_files
from input_pipeline.convert import convert
from input_pipeline.criteo import NUM_DENSE, NUM_SPARSE, RawPreprocessor
from input_pipeline.features import DENSE_KEY, SPARSE_KEY

TOL = 1e-6
CHECK_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "export_check.py")
CAPI_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "capi_check.py")
NUM_RAW_LINES = 70
HUGE_FIELD = 1 << 20


def tf_serving_version(name: str) -> bool:
    """Whether TF Serving would take a child of the base path as a version.

    TF Serving parses names with ``safe_strto64``: optional surrounding
    whitespace, an optional sign, then digits.
    """
    return re.fullmatch(r"\s*[+-]?[0-9]+\s*", name) is not None


def snapshot(directory) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``directory``."""
    digests = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def keras_predict(model, dense, ids) -> np.ndarray:
    return model({sig.DENSE_KEY: tf.constant(dense), sig.SPARSE_KEY: tf.constant(ids)}).numpy()


def category_pools(rng: np.random.Generator) -> list[list[str]]:
    """A few 8-hex-digit values per categorical feature, so that each repeats in the data."""
    return [
        [f"{int(v):08x}" for v in rng.choice(2**32, size=1 + t % 5, replace=False)]
        for t in range(NUM_SPARSE)
    ]


def raw_rows(
    rng: np.random.Generator, pools: list[list[str]], batch: int, unseen: float = 0.0
) -> list[list[str]]:
    """Raw fields (no label): counts (some empty or negative), categories from the pools
    (some empty, a fraction ``unseen`` of values never seen in the data)."""
    rows = []
    for _ in range(batch):
        counts = [
            "" if rng.random() < 0.1 else str(int(rng.integers(-3, 5000))) for _ in range(NUM_DENSE)
        ]
        cats = []
        for pool in pools:
            r = rng.random()
            if r < 0.1:
                cats.append("")
            elif r < 0.1 + unseen:
                cats.append(f"{int(rng.integers(0, 2**32)):x}")
            else:
                cats.append(str(rng.choice(pool)))
        rows.append(counts + cats)
    return rows


def converted_dataset(directory) -> tuple[dict, list[list[str]]]:
    """A tiny raw Criteo file converted with vocabularies; returns (metadata, raw rows)."""
    rng = np.random.default_rng(3)
    rows = raw_rows(rng, category_pools(rng), NUM_RAW_LINES)
    raw = os.path.join(directory, "train.txt")
    with open(raw, "w") as f:
        for row in rows:
            f.write("\t".join([str(int(rng.random() < 0.3))] + row) + "\n")
    metadata = convert(
        "kaggle",
        raw,
        os.path.join(directory, "data"),
        frequency_threshold=2,
        data_randomize="none",
        num_shards=1,
    )
    return metadata, rows


def converted_train_rows(metadata: dict, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` (dense, ids) rows of the converted training split, in file order."""
    id_dtype = np.dtype(metadata["record_format"]["id_dtype"]).newbyteorder("<")
    path = os.path.join(metadata["data_dir"], "train-00000-of-00001.tfrecord")
    record = next(iter(tf.data.TFRecordDataset(path))).numpy()
    example = tf.train.Example.FromString(record).features.feature
    dense = np.frombuffer(example["dense"].bytes_list.value[0], "<f4").reshape(-1, NUM_DENSE)
    ids = np.frombuffer(example["ids"].bytes_list.value[0], id_dtype).reshape(-1, NUM_SPARSE)
    return dense[:count], ids[:count].astype(np.int64)


def small_config(table_sizes) -> ModelConfig:
    return ModelConfig(
        embedding_dim=4,
        table_sizes=tuple(table_sizes),
        bottom_mlp=(NUM_DENSE, 16, 4),
        top_mlp=(8, 1),
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A model with its raw preprocessor, exported once, and checked in a fresh process."""
    tmp = tmp_path_factory.mktemp("export")
    metadata, raw = converted_dataset(tmp)
    pre = RawPreprocessor.from_metadata(metadata["data_dir"])
    keras_utils_seed()
    model = build_model(small_config(pre.table_sizes))
    train_one_step(model, pre.table_sizes)
    base = tmp / "models"
    version_dir = esm.export_model(model, base, raw_preprocessor=pre)

    sizes = np.array(pre.table_sizes, dtype=np.int64)
    rng = np.random.default_rng(0)
    inputs_dir = tmp / "inputs"
    inputs_dir.mkdir()
    cases = []

    def add(name, signature, inputs, expected=None):
        files = {}
        for key, value in inputs.items():
            files[key] = str(inputs_dir / f"{name}.{key}.npy")
            np.save(files[key], value)
        case = {"name": name, "signature": signature, "inputs": files, "expected": None}
        if expected is not None:
            case["expected"] = str(inputs_dir / f"{name}.expected.npy")
            np.save(case["expected"], expected)
        cases.append(case)

    def dense(batch):
        return rng.uniform(0, 6, size=(batch, NUM_DENSE)).astype(np.float32)

    def onehot(batch):
        ids = np.minimum((rng.random((batch, NUM_SPARSE)) * sizes).astype(np.int64), sizes - 1)
        ids[rng.random(ids.shape) < 0.1] = -1
        return ids

    def multihot(batch, bag):
        ids = np.minimum(
            (rng.random((batch, NUM_SPARSE, bag)) * sizes[:, None]).astype(np.int64),
            sizes[:, None] - 1,
        )
        lengths = rng.integers(0, bag + 1, size=(batch, NUM_SPARSE))
        ids[np.arange(bag) >= lengths[..., None]] = -1
        return ids

    for name, batch in (("onehot_b1", 1), ("onehot_b9", 9)):
        d, s = dense(batch), onehot(batch)
        add(
            name,
            sig.SERVING_DEFAULT,
            {sig.DENSE_KEY: d, sig.SPARSE_KEY: s},
            keras_predict(model, d, s),
        )

    d, s = dense(7), multihot(7, 4)
    s[-1] = -1  # every bag of the last example is empty
    s[2, 5] = -1
    add(
        "multihot_empty_last_row",
        sig.PREDICT_MULTIHOT,
        {sig.DENSE_KEY: d, sig.SPARSE_KEY: s},
        keras_predict(model, d, s),
    )
    d, s = dense(5), multihot(5, 3)
    s[-1, -1] = -1  # only the last example's last bag is empty
    add(
        "multihot_last_bag_empty",
        sig.PREDICT_MULTIHOT,
        {sig.DENSE_KEY: d, sig.SPARSE_KEY: s},
        keras_predict(model, d, s),
    )
    d = dense(3)
    add(
        "multihot_all_empty",
        sig.PREDICT_MULTIHOT,
        {sig.DENSE_KEY: d, sig.SPARSE_KEY: np.full((3, NUM_SPARSE, 2), -1, np.int64)},
        keras_predict(model, d, np.full((3, NUM_SPARSE), -1, np.int64)),
    )

    # Training lines: the served model sees exactly the converter's features.
    dense_rows, id_rows = converted_train_rows(metadata, 8)
    add(
        "raw_training_lines",
        sig.PREDICT_RAW,
        {sig.FIELDS_KEY: np.array(raw[:8], dtype="S")},
        keras_predict(model, dense_rows, id_rows),
    )
    # Lines with values never seen (out-of-vocabulary ids) and empty fields.
    fields = np.array(raw_rows(rng, category_pools(rng), 6, unseen=0.5), dtype="S")
    raw_dense, raw_ids = pre(tf.constant(fields))
    add(
        "raw_unseen_values",
        sig.PREDICT_RAW,
        {sig.FIELDS_KEY: fields},
        keras_predict(model, raw_dense.numpy(), raw_ids.numpy()),
    )

    # Requests that must fail.
    d, s = dense(4), onehot(4)
    too_big, negative = s.copy(), s.copy()
    too_big[1, 3] = sizes[3]
    negative[2, 0] = -2
    bag_too_big = multihot(4, 2)
    bag_too_big[3, 25, 1] = sizes[25] + 100
    bad_fields = np.array(raw[:2], dtype="S")
    bad_fields[1, 2] = b"12x"
    add(
        "bad_id_equal_to_table_size",
        sig.SERVING_DEFAULT,
        {sig.DENSE_KEY: d, sig.SPARSE_KEY: too_big},
    )
    add("bad_id_below_minus_one", sig.SERVING_DEFAULT, {sig.DENSE_KEY: d, sig.SPARSE_KEY: negative})
    add("bad_multihot_id", sig.PREDICT_MULTIHOT, {sig.DENSE_KEY: d, sig.SPARSE_KEY: bag_too_big})
    add("bad_dense_width", sig.SERVING_DEFAULT, {sig.DENSE_KEY: d[:, :-1], sig.SPARSE_KEY: s})
    add("bad_num_features", sig.SERVING_DEFAULT, {sig.DENSE_KEY: d, sig.SPARSE_KEY: s[:, :-1]})
    add("bad_batch_mismatch", sig.SERVING_DEFAULT, {sig.DENSE_KEY: d[:3], sig.SPARSE_KEY: s})
    add(
        "bad_id_dtype_int32",
        sig.SERVING_DEFAULT,
        {sig.DENSE_KEY: d, sig.SPARSE_KEY: s.astype(np.int32)},
    )
    add(
        "bad_dense_dtype_float64",
        sig.SERVING_DEFAULT,
        {sig.DENSE_KEY: d.astype(np.float64), sig.SPARSE_KEY: s},
    )
    add(
        "bad_rank_onehot_signature",
        sig.SERVING_DEFAULT,
        {sig.DENSE_KEY: d, sig.SPARSE_KEY: s[:, :, None]},
    )
    add("bad_raw_num_fields", sig.PREDICT_RAW, {sig.FIELDS_KEY: bad_fields[:, :-1]})
    add("bad_raw_value", sig.PREDICT_RAW, {sig.FIELDS_KEY: bad_fields})
    for value, label in ((np.nan, "nan"), (np.inf, "inf"), (-np.inf, "minus_inf")):
        bad_dense = d.copy()
        bad_dense[2, 7] = value
        add(
            f"bad_dense_{label}", sig.SERVING_DEFAULT, {sig.DENSE_KEY: bad_dense, sig.SPARSE_KEY: s}
        )
        add(
            f"bad_multihot_dense_{label}",
            sig.PREDICT_MULTIHOT,
            {sig.DENSE_KEY: bad_dense, sig.SPARSE_KEY: multihot(4, 2)},
        )
    not_utf8, huge = np.array(raw[:2], dtype=object), np.array(raw[:2], dtype=object)
    not_utf8[0, 4] = b"\xff\xfe1"
    huge[1, 20] = b"a" * HUGE_FIELD + b"z"
    add("bad_raw_not_utf8", sig.PREDICT_RAW, {sig.FIELDS_KEY: not_utf8.astype("S")})
    add("bad_raw_huge_field", sig.PREDICT_RAW, {sig.FIELDS_KEY: huge.astype("S")})

    cases_path = tmp / "cases.json"
    cases_path.write_text(json.dumps(cases))
    result_path = tmp / "result.json"
    # The converted data (and its vocabularies) is out of reach: the SavedModel must
    # use its own copies of the vocabulary files.
    data_dir = metadata["data_dir"]
    hidden = tmp / "data_hidden"
    os.rename(data_dir, hidden)
    try:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run(
            [sys.executable, CHECK_SCRIPT, version_dir, str(cases_path), str(result_path)],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        capi = run_capi_check(version_dir, cases, tmp)
    finally:
        os.rename(hidden, data_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(result_path.read_text())
    return {
        "model": model,
        "pre": pre,
        "metadata": metadata,
        "base": base,
        "version_dir": version_dir,
        "result": result,
        "tmp": tmp,
        "capi": capi,
        "cases": {case["name"]: case for case in cases},
    }


def run_capi_check(version_dir: str, cases: list[dict], tmp) -> dict:
    """Runs the cases through TensorFlow's C API (``tests/capi_check.py``) in a fresh process."""
    from tensorflow.python.tools import saved_model_utils

    meta = saved_model_utils.get_meta_graph_def(version_dir, "serve")
    capi_cases = []
    for case in cases:
        spec = meta.signature_def[case["signature"]]
        capi_cases.append(
            {
                "name": case["name"],
                "feeds": [[spec.inputs[k].name, path] for k, path in case["inputs"].items()],
                "fetch": spec.outputs[sig.OUTPUT_KEY].name,
            }
        )
    cases_path, result_path = tmp / "capi_cases.json", tmp / "capi_result.json"
    cases_path.write_text(json.dumps(capi_cases))
    proc = subprocess.run(
        [sys.executable, CAPI_SCRIPT, version_dir, str(cases_path), str(result_path)],
        cwd=tmp,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(result_path.read_text())


def train_one_step(model, table_sizes) -> None:
    """One ``model.fit`` step, as a user trains before exporting: the model object
    then holds the traced training step (with the fused kernels where built)."""
    from dlrm_tf.model.optimizers import make_optimizer

    rng = np.random.default_rng(5)
    features = {
        DENSE_KEY: rng.uniform(0, 6, (32, NUM_DENSE)).astype(np.float32),
        SPARSE_KEY: (rng.random((32, NUM_SPARSE)) * np.array(table_sizes)).astype(np.int64),
    }
    labels = rng.integers(0, 2, (32, 1)).astype(np.float32)
    model.compile(optimizer=make_optimizer("sgd", 0.1), loss="binary_crossentropy")
    model.fit(features, labels, batch_size=32, epochs=1, verbose=0)


def keras_utils_seed() -> None:
    import keras

    keras.utils.set_random_seed(1234)


PARITY_CASES = [
    "onehot_b1",
    "onehot_b9",
    "multihot_empty_last_row",
    "multihot_last_bag_empty",
    "multihot_all_empty",
    "raw_training_lines",
    "raw_unseen_values",
]


def test_fresh_process_loads_all_signatures_without_keras(setup):
    result = setup["result"]
    assert result["forbidden_modules"] == []
    assert result["blocked_imports_while_serving"] == []
    assert result["signatures"] == sorted(
        [sig.SERVING_DEFAULT, sig.PREDICT_MULTIHOT, sig.PREDICT_RAW]
    )
    assert os.path.basename(setup["version_dir"]) == "1"


# TF2's object loader, and the session loader TF Serving uses.
LOADERS = ["cases", "session_cases"]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name", PARITY_CASES)
def test_exported_signature_matches_keras(setup, loader, name):
    entry = setup["result"][loader][name]
    assert "error" not in entry, entry
    assert entry["dtype"] == "float32"
    assert entry["shape"] == entry["expected_shape"]
    assert entry["shape"][1] == 1
    assert entry["max_abs_diff"] <= TOL


@pytest.mark.parametrize("name", PARITY_CASES)
def test_c_api_session_matches_keras(setup, name):
    """TF_LoadSessionFromSavedModel + TF_SessionRun: the C++ loader TF Serving links."""
    capi = setup["capi"]
    assert capi["load"] == {"code": 0, "message": ""}
    assert capi["tensorflow_imported"] is False
    entry = capi["cases"][name]
    assert "output" in entry, entry
    expected = np.load(setup["cases"][name]["expected"])
    np.testing.assert_allclose(np.load(entry["output"]), expected, atol=TOL)


def test_export_of_a_model_trained_with_the_fused_kernels_holds_only_tensorflow_ops(setup):
    """The fixture's model trained through DlrmBagSums and DlrmDotInteraction (where
    the kernels are built); its SavedModel, which TF Serving loads without them,
    holds no op of theirs."""
    from tensorflow.python.tools import saved_model_utils

    from dlrm_tf.kernels import embedding_rows

    if embedding_rows.available():
        model = setup["model"]
        specs = {
            DENSE_KEY: tf.TensorSpec([None, NUM_DENSE], tf.float32),
            SPARSE_KEY: tf.TensorSpec([None, NUM_SPARSE], tf.int64),
        }
        trained_ops = graph_op_types(lambda f: model(f, training=True), specs)
        assert {"DlrmBagSums", "DlrmDotInteraction"} <= trained_ops
    meta = saved_model_utils.get_meta_graph_def(setup["version_dir"], "serve")
    nodes = list(meta.graph_def.node)
    nodes += [n for f in meta.graph_def.library.function for n in f.node_def]
    assert not [n.op for n in nodes if n.op.startswith("Dlrm")]


def test_saved_model_holds_each_weight_once(setup):
    """One variable per model weight, restored by the checkpoint the signatures read."""
    from tensorflow.python.tools import saved_model_utils

    model, version_dir = setup["model"], setup["version_dir"]
    meta = saved_model_utils.get_meta_graph_def(version_dir, "serve")
    # String scalars hold the asset paths of the vocabularies; the rest are weights.
    handles = [
        n
        for n in meta.graph_def.node
        if n.op == "VarHandleOp" and n.attr["dtype"].type != tf.string.as_datatype_enum
    ]
    assert len(handles) == len(model.weights)
    saved = tf.train.load_checkpoint(os.path.join(version_dir, "variables", "variables"))
    shapes = sorted(
        tuple(shape)
        for key, dtype in saved.get_variable_to_dtype_map().items()
        if dtype == tf.float32
        for shape in [saved.get_variable_to_shape_map()[key]]
    )
    assert shapes == sorted(tuple(w.shape) for w in model.weights)
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
    path_bytes = sum(
        len(saved.get_tensor(key))
        for key, dtype in saved.get_variable_to_dtype_map().items()
        if dtype == tf.string
    )
    data = [f for f in os.listdir(os.path.join(version_dir, "variables")) if ".data-" in f]
    on_disk = sum(os.path.getsize(os.path.join(version_dir, "variables", f)) for f in data)
    assert weight_bytes <= on_disk - path_bytes <= weight_bytes + 1024


BAD_REQUESTS = {
    "bad_id_equal_to_table_size": "sparse id out of range",
    "bad_id_below_minus_one": "sparse id out of range",
    "bad_multihot_id": "sparse id out of range",
    "bad_dense_width": ("dense_features", " [4,12] is not compatible with expected shape [?,13]"),
    "bad_num_features": ("sparse_features", "[4,25] is not compatible with expected shape [?,26]"),
    "bad_batch_mismatch": "must have the same number of rows",
    "bad_id_dtype_int32": "expected to be a int64 tensor but is a int32 tensor",
    "bad_dense_dtype_float64": "expected to be a float tensor but is a double tensor",
    "bad_rank_onehot_signature": "[4,26,1] is not compatible with expected shape [?,26]",
    "bad_raw_num_fields": ("fields", " [2,38] is not compatible with expected shape [?,39]"),
    "bad_raw_value": "Malformed raw Criteo input",
    "bad_raw_not_utf8": "field I5: value [\ufffd\ufffd1] is not an integer count",
    "bad_raw_huge_field": f"value [{'a' * 200}... ({HUGE_FIELD + 1} bytes)] is not a hex",
    **{
        f"bad{kind}_dense_{label}": "dense_features must be finite (NaN or Inf found)"
        for kind in ("", "_multihot")
        for label in ("nan", "inf", "minus_inf")
    },
}


# The C++ session (TF Serving's) checks a fed tensor's dtype itself.
CAPI_MESSAGES = {
    "bad_id_dtype_int32": "Expects arg[1] to be int64 but int32 is provided",
    "bad_dense_dtype_float64": "Expects arg[0] to be float but double is provided",
}
# Python's Session.run casts a fed array to its placeholder's dtype and checks its
# shape before the graph sees it: those requests never reach the served graph.
CLIENT_SIDE = {
    "bad_id_dtype_int32",
    "bad_dense_dtype_float64",
    "bad_dense_width",
    "bad_num_features",
    "bad_rank_onehot_signature",
    "bad_raw_num_fields",
}


def assert_message(expected: str | tuple[str, ...], message: str) -> None:
    """Each expected part is in ``message`` (loaders name an input differently)."""
    for part in (expected,) if isinstance(expected, str) else expected:
        assert part in message, (part, message)
    assert len(message) < 2000  # a client's value is never echoed whole


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_request_fails_with_invalid_argument(setup, loader, name):
    if loader == "session_cases" and name in CLIENT_SIDE:
        pytest.skip("checked by the Python client before the graph runs; see the C API test")
    entry = setup["result"][loader][name]
    assert entry.get("error") == "InvalidArgumentError", entry
    assert_message(BAD_REQUESTS[name], entry["message"])


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_c_api_session_rejects_bad_requests(setup, name):
    entry = setup["capi"]["cases"][name]
    assert entry.get("code") == 3, entry  # TF_INVALID_ARGUMENT
    assert_message(CAPI_MESSAGES.get(name, BAD_REQUESTS[name]), entry["message"])


def test_out_of_range_message_names_the_position(setup):
    message = setup["result"]["cases"]["bad_id_equal_to_table_size"]["message"]
    size = setup["pre"].table_sizes[3]
    assert "(feature, example, slot) = [[3 1 0]]" in message
    assert f"id = [{size}]" in message


def test_saved_model_cli_lists_the_signatures(setup):
    cli = shutil.which("saved_model_cli")
    if cli is None:
        pytest.skip("saved_model_cli is not installed")
    out = subprocess.run(
        [cli, "show", "--all", "--dir", setup["version_dir"]],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    blocks = {}
    for match in re.finditer(r"signature_def\['(\w+)'\]:(.*?)(?=signature_def\[|\Z)", text, re.S):
        blocks[match.group(1)] = match.group(2)
    assert {sig.SERVING_DEFAULT, sig.PREDICT_MULTIHOT, sig.PREDICT_RAW} <= set(blocks)
    compact = {k: re.sub(r"\s+", " ", v) for k, v in blocks.items()}
    assert (
        "inputs['sparse_features'] tensor_info: dtype: DT_INT64 shape: (-1, 26)"
        in (compact[sig.SERVING_DEFAULT])
    )
    assert (
        "inputs['dense_features'] tensor_info: dtype: DT_FLOAT shape: (-1, 13)"
        in (compact[sig.SERVING_DEFAULT])
    )
    assert "shape: (-1, 26, -1)" in compact[sig.PREDICT_MULTIHOT]
    assert (
        "inputs['fields'] tensor_info: dtype: DT_STRING shape: (-1, 39)"
        in (compact[sig.PREDICT_RAW])
    )
    for name in (sig.SERVING_DEFAULT, sig.PREDICT_MULTIHOT, sig.PREDICT_RAW):
        assert "outputs['probability'] tensor_info: dtype: DT_FLOAT shape: (-1, 1)" in compact[name]


@pytest.mark.parametrize("name", ["onehot_b9", "multihot_empty_last_row", "raw_training_lines"])
def test_saved_model_cli_run_matches_keras(setup, name, tmp_path):
    """``saved_model_cli run`` loads through the session loader, as TF Serving does."""
    cli = shutil.which("saved_model_cli")
    if cli is None:
        pytest.skip("saved_model_cli is not installed")
    case = setup["cases"][name]
    inputs = ";".join(f"{k}={path}" for k, path in case["inputs"].items())
    out = subprocess.run(
        [
            cli,
            "run",
            "--dir",
            setup["version_dir"],
            "--tag_set",
            "serve",
            "--signature_def",
            case["signature"],
            "--inputs",
            inputs,
            "--outdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    served = np.load(tmp_path / f"{sig.OUTPUT_KEY}.npy")
    np.testing.assert_allclose(served, np.load(case["expected"]), atol=TOL)


def test_warmup_file_holds_requests_for_every_signature(setup):
    logs = warmup.read_warmup_file(setup["version_dir"])
    names = [log.predict_log.request.model_spec.signature_name for log in logs]
    assert set(names) == {sig.SERVING_DEFAULT, sig.PREDICT_MULTIHOT, sig.PREDICT_RAW}
    assert all(log.predict_log.request.model_spec.name == "dlrm" for log in logs)
    # Replayed in the fresh process: every request ran and gave [batch, 1] finite outputs.
    for loader in ("warmup", "session_warmup"):
        replayed = setup["result"][loader]
        assert [w["signature"] for w in replayed] == names
        for w in replayed:
            assert w["shape"] == [w["batch"], 1] and w["finite"]


def test_vocabularies_travel_as_assets(setup):
    assets = os.path.join(setup["version_dir"], "assets")
    assert len(setup["pre"].asset_paths) == NUM_SPARSE
    for path in setup["pre"].asset_paths:
        copied = os.path.join(assets, os.path.basename(path))
        with open(copied, "rb") as a, open(path, "rb") as b:
            assert a.read() == b.read()


def test_next_version_ignores_names_tf_serving_ignores(tmp_path):
    for name in ("3", "10", ".tmp-export-5", "tmp-20", "7a", "model"):
        (tmp_path / name).mkdir()
    (tmp_path / "99").write_text("a file, not a version")
    assert esm.next_version(tmp_path) == 11
    assert esm.next_version(tmp_path / "missing") == 1
    assert not tf_serving_version(".tmp-export-abc123")
    assert not tf_serving_version(esm.OLD_PREFIX + "3-abcd")


def small_model(seed: int = 0, table_sizes=(5, 3, 8)):
    """A model with few tables: versioning does not depend on the model's shape."""
    import keras

    keras.utils.set_random_seed(seed)
    return build_model(small_config(table_sizes))


def test_reexport_adds_a_version_and_leaves_the_old_one(tmp_path):
    base = tmp_path / "models"
    first = esm.export_model(small_model(0), base)
    before = snapshot(first)
    second = esm.export_model(small_model(1), base)
    assert [os.path.basename(first), os.path.basename(second)] == ["1", "2"]
    assert snapshot(first) == before
    assert snapshot(second) != before
    assert sorted(os.listdir(base)) == ["1", "2"]


def test_existing_version_needs_overwrite(tmp_path):
    base = tmp_path / "models"
    path = esm.export_model(small_model(0), base, version=5)
    before = snapshot(path)
    with pytest.raises(esm.ExportError, match="already exists.*`overwrite`"):
        esm.export_model(small_model(1), base, version=5)
    assert snapshot(path) == before
    assert sorted(os.listdir(base)) == ["5"]

    model = small_model(1)
    assert esm.export_model(model, base, version=5, overwrite=True) == path
    assert snapshot(path) != before
    assert sorted(os.listdir(base)) == ["5"]
    loaded = tf.saved_model.load(path)
    d = np.ones((2, NUM_DENSE), np.float32)
    s = np.array([[4, 2, 7], [0, -1, 3]], np.int64)
    out = loaded.signatures[sig.SERVING_DEFAULT](
        dense_features=tf.constant(d), sparse_features=tf.constant(s)
    )["probability"]
    np.testing.assert_allclose(out.numpy(), keras_predict(model, d, s), atol=TOL)


def test_interrupted_export_leaves_no_version(tmp_path, monkeypatch):
    base = tmp_path / "models"
    base.mkdir()
    (base / "notes").mkdir()
    real_save = tf.saved_model.save
    written_to = []

    def save_then_fail(obj, export_dir, **kwargs):
        written_to.append(export_dir)
        real_save(obj, export_dir, **kwargs)  # a complete-looking SavedModel is on disk...
        raise OSError("disk full")  # ...but the export did not finish

    monkeypatch.setattr(tf.saved_model, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        esm.export_model(small_model(0), base, version=1)
    # It was written where a polling server does not look, and is gone.
    (where,) = written_to
    assert os.path.dirname(where) == str(base)
    assert not tf_serving_version(os.path.basename(where))
    assert sorted(os.listdir(base)) == ["notes"]


def test_failed_overwrite_keeps_the_old_version(tmp_path, monkeypatch):
    base = tmp_path / "models"
    path = esm.export_model(small_model(0), base)
    before = snapshot(path)
    real_rename = os.rename

    def rename(src, dst):
        if os.path.basename(src).startswith(esm.TMP_PREFIX):
            raise OSError("interrupted while moving the new version in")
        real_rename(src, dst)

    monkeypatch.setattr(esm.os, "rename", rename)
    with pytest.raises(OSError, match="interrupted"):
        esm.export_model(small_model(1), base, version=1, overwrite=True)
    assert sorted(os.listdir(base)) == ["1"]
    assert snapshot(path) == before


def test_bad_warmup_batch_fails_before_writing(tmp_path):
    base = tmp_path / "models"
    model = small_model(0)
    ids = np.zeros((2, 3), np.int64)
    ids[0, 0] = model.model_config.table_sizes[0]
    with pytest.raises(tf.errors.InvalidArgumentError, match="sparse id out of range"):
        esm.export_model(
            model,
            base,
            warmup_batch={sig.DENSE_KEY: np.zeros((2, NUM_DENSE), np.float32), sig.SPARSE_KEY: ids},
        )
    assert os.listdir(base) == []


def test_warmup_batch_replaces_synthetic_requests(tmp_path):
    model = small_model(0)
    dense = np.full((3, NUM_DENSE), 0.5, np.float32)
    ids = np.ones((3, 3), np.int64)
    path = esm.export_model(
        model, tmp_path, warmup_batch={sig.DENSE_KEY: dense, sig.SPARSE_KEY: ids}
    )
    logs = warmup.read_warmup_file(path)
    by_name = {}
    for log in logs:
        request = log.predict_log.request
        by_name.setdefault(request.model_spec.signature_name, []).append(
            warmup.request_arrays(request)
        )
    assert set(by_name) == {sig.SERVING_DEFAULT, sig.PREDICT_MULTIHOT}
    (onehot,) = by_name[sig.SERVING_DEFAULT]
    np.testing.assert_array_equal(onehot[sig.SPARSE_KEY], ids)
    (multihot,) = by_name[sig.PREDICT_MULTIHOT]
    np.testing.assert_array_equal(multihot[sig.SPARSE_KEY], ids[:, :, None])
    np.testing.assert_array_equal(multihot[sig.DENSE_KEY], dense)


def test_preprocessor_with_other_vocabulary_is_refused(setup, tmp_path):
    model = small_model(0)  # its table sizes are not the vocabulary's
    with pytest.raises(ValueError, match="another vocabulary"):
        esm.export_model(model, tmp_path, raw_preprocessor=setup["pre"])
    assert os.listdir(tmp_path) == []


def test_cli_exports_a_compiled_keras_checkpoint(tmp_path, capsys):
    import keras

    model = small_model(3)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
    checkpoint = tmp_path / "model.keras"
    model.save(checkpoint)
    base = tmp_path / "serving"
    assert esm.main([f"--load_model={checkpoint}", f"--export_dir={base}"]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path == str(base / "1")
    rng = np.random.default_rng(1)
    d = rng.uniform(size=(4, NUM_DENSE)).astype(np.float32)
    s = rng.integers(0, 3, size=(4, 3)).astype(np.int64)
    out = tf.saved_model.load(path).signatures[sig.SERVING_DEFAULT](
        dense_features=tf.constant(d), sparse_features=tf.constant(s)
    )["probability"]
    np.testing.assert_allclose(out.numpy(), keras_predict(model, d, s), atol=TOL)

    assert esm.main([f"--load_model={checkpoint}", f"--export_dir={base}", "--version=1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert esm.main([f"--load_model={tmp_path / 'nope.keras'}", f"--export_dir={base}"]) == 2


def test_rest_body_and_raw_lines(setup):
    lines = [
        "1\t" + "\t".join(["5"] * NUM_DENSE + ["abc"] * NUM_SPARSE) + "\n",
        "\t".join([""] * (NUM_DENSE + NUM_SPARSE)),
    ]
    fields = grpc_client.raw_fields(lines)
    assert fields.shape == (2, NUM_DENSE + NUM_SPARSE)
    assert fields[0, 0] == b"5" and fields[1, 0] == b""
    with pytest.raises(ValueError, match="line 1: 3 tab-separated fields"):
        grpc_client.raw_fields(["a\tb\tc"])

    body = grpc_client.rest_body(sig.PREDICT_RAW, {sig.FIELDS_KEY: fields})
    decoded = json.loads(json.dumps(body))
    assert decoded["signature_name"] == sig.PREDICT_RAW
    assert decoded["instances"][0][sig.FIELDS_KEY][NUM_DENSE] == "abc"

    rng = np.random.default_rng(5)
    dense = rng.uniform(size=(2, NUM_DENSE)).astype(np.float32)
    ids = np.zeros((2, NUM_SPARSE, 2), np.int64) - 1
    body = json.loads(
        json.dumps(
            grpc_client.rest_body(
                grpc_client.choose_signature({sig.DENSE_KEY: dense, sig.SPARSE_KEY: ids}),
                {sig.DENSE_KEY: dense, sig.SPARSE_KEY: ids},
            )
        )
    )
    assert body["signature_name"] == sig.PREDICT_MULTIHOT
    # The server stacks the instances back into the tensors the signature takes.
    stacked = {k: np.array([inst[k] for inst in body["instances"]]) for k in body["instances"][0]}
    np.testing.assert_array_equal(stacked[sig.SPARSE_KEY], ids)
    np.testing.assert_allclose(stacked[sig.DENSE_KEY], dense)


@pytest.fixture
def grpc_server(setup):
    """A minimal in-process PredictionService that runs the exported SavedModel."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    loaded = tf.saved_model.load(setup["version_dir"])

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 - the gRPC method's name
            fn = loaded.signatures[request.model_spec.signature_name or sig.SERVING_DEFAULT]
            inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
            try:
                out = fn(**inputs)[sig.OUTPUT_KEY]
            except tf.errors.InvalidArgumentError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.message[:500])
            response = predict_pb2.PredictResponse()
            response.outputs[sig.OUTPUT_KEY].CopyFrom(tf.make_tensor_proto(out.numpy()))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_grpc_client_predicts_through_a_prediction_service(setup, grpc_server):
    import grpc
    from tensorflow_serving.apis import predict_pb2

    model, pre = setup["model"], setup["pre"]
    rng = np.random.default_rng(11)
    fields = np.array(raw_rows(rng, category_pools(rng), 3, unseen=0.3), dtype="S")
    request = grpc_client.predict_request(sig.PREDICT_RAW, {sig.FIELDS_KEY: fields}, version=1)
    # A valid, serialisable PredictRequest.
    parsed = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    assert parsed.model_spec.name == "dlrm" and parsed.model_spec.version.value == 1
    assert parsed.inputs[sig.FIELDS_KEY].dtype == tf.string.as_datatype_enum
    assert [d.size for d in parsed.inputs[sig.FIELDS_KEY].tensor_shape.dim] == [3, 39]

    out = grpc_client.predict(grpc_server, request, timeout_s=30)
    dense, ids = pre(tf.constant(fields))
    np.testing.assert_allclose(out, keras_predict(model, dense.numpy(), ids.numpy()), atol=TOL)

    ids = np.zeros((1, NUM_SPARSE), np.int64)
    ids[0, 7] = -5
    bad = grpc_client.predict_request(
        sig.SERVING_DEFAULT,
        {sig.DENSE_KEY: np.zeros((1, NUM_DENSE), np.float32), sig.SPARSE_KEY: ids},
    )
    with pytest.raises(grpc.RpcError) as info:
        grpc_client.predict(grpc_server, bad, timeout_s=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cli_with_processed_data_dir_adds_the_raw_signature(setup, tmp_path, capsys):
    checkpoint = tmp_path / "model.keras"
    setup["model"].save(checkpoint)
    base = tmp_path / "serving"
    data_dir = setup["metadata"]["data_dir"]
    assert (
        esm.main(
            [
                f"--load_model={checkpoint}",
                f"--export_dir={base}",
                "--version=7",
                f"--processed_data_dir={data_dir}",
            ]
        )
        == 0
    )
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path == str(base / "7")
    loaded = tf.saved_model.load(path)
    assert sig.PREDICT_RAW in loaded.signatures
    with open(os.path.join(os.path.dirname(data_dir), "train.txt")) as f:
        fields = grpc_client.raw_fields(f.readlines()[:4])
    dense, ids = converted_train_rows(setup["metadata"], 4)
    out = loaded.signatures[sig.PREDICT_RAW](fields=tf.constant(fields.astype("S")))
    np.testing.assert_allclose(
        out["probability"].numpy(), keras_predict(setup["model"], dense, ids), atol=TOL
    )


def test_grpc_client_command_line(setup, grpc_server, capsys):
    raw_file = os.path.join(os.path.dirname(setup["metadata"]["data_dir"]), "train.txt")
    args = [f"--raw_file={raw_file}", f"--server={grpc_server}", "--max_examples=3"]
    assert grpc_client.main(args) == 0
    printed = np.array([float(v) for v in capsys.readouterr().out.split()])
    dense, ids = converted_train_rows(setup["metadata"], 3)
    expected = keras_predict(setup["model"], dense, ids).reshape(-1)
    np.testing.assert_allclose(printed, expected, atol=1e-6)

    bad_file = setup["tmp"] / "bad_line.txt"
    bad_file.write_text("\t".join(["7x"] + [""] * (NUM_DENSE + NUM_SPARSE - 1)) + "\n")
    assert grpc_client.main([f"--raw_file={bad_file}", f"--server={grpc_server}"]) == 1
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "row 0 field I1" in err


# ---------------------------------------------------------------------------
# Output safety and command-line errors.

HOLD_LOCK = (
    "import sys; from input_pipeline import safe_files\n"
    "with safe_files.exclusive(sys.argv[1]):\n"
    "    print('locked', flush=True); sys.stdin.read()\n"
)


def lock_holder(base):
    """A real process holding the export lock of ``base`` until its stdin closes."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(base)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert process.stdout.readline() == "locked\n"
    return process


def test_overwrite_refuses_a_version_it_did_not_write(tmp_path):
    base = tmp_path / "models"
    (base / "3").mkdir(parents=True)
    (base / "3" / "saved_model.pb").write_text("someone else's")
    (base / "4").write_text("a file")
    for version, message in [
        (3, "is not a SavedModel written by this exporter (it holds saved_model.pb)"),
        (4, "exists and is not a version directory"),
    ]:
        with pytest.raises(esm.ExportError, match=re.escape(message)):
            esm.export_model(small_model(0), base, version=version, overwrite=True)
    assert (base / "3" / "saved_model.pb").read_text() == "someone else's"
    assert sorted(os.listdir(base)) == ["3", "4"]


def test_second_export_into_a_base_is_refused_while_one_runs(tmp_path):
    base = tmp_path / "models"
    holder = lock_holder(base)
    try:
        with pytest.raises(
            safe_files.OutputLockedError,
            match=(
                rf"`export_dir`={re.escape(str(base))} is being written by another process "
                rf"\(pid {holder.pid} on "
            ),
        ):
            esm.export_model(small_model(0), base)
    finally:
        holder.communicate("")
    assert not os.path.exists(base) or os.listdir(base) == []


def test_export_after_a_killed_one_removes_only_its_leftovers(tmp_path, caplog):
    import logging

    base = tmp_path / "models"
    first = esm.export_model(small_model(0), base)
    before = snapshot(first)
    (base / "notes").mkdir()
    leftover = base / (esm.TMP_PREFIX + "x1y2z3")  # what a killed export leaves
    (leftover / "variables").mkdir(parents=True)
    (leftover / "saved_model.pb").write_bytes(b"\0" * 1000)
    holder = lock_holder(base)
    holder.kill()  # killed while exporting: its lock file stays behind
    holder.wait()
    with caplog.at_level(logging.INFO):
        second = esm.export_model(small_model(1), base)
    assert sorted(os.listdir(base)) == ["1", "2", "notes"]
    assert snapshot(first) == before and os.path.basename(second) == "2"
    assert f"removed {leftover} (1,000 bytes), left over by an interrupted earlier run" in (
        caplog.text
    )
    assert f"lock left by {holder.pid} on " in caplog.text


def test_cli_errors_are_one_line_exit_2(setup, tmp_path, capsys):
    text_file = tmp_path / "notes.keras"
    text_file.write_text("not a model")
    zip_file = tmp_path / "other.keras"
    shutil.make_archive(str(tmp_path / "other"), "zip", setup["tmp"] / "inputs")
    os.rename(tmp_path / "other.zip", zip_file)
    small = tmp_path / "small.keras"
    small_model(0).save(small)  # its table sizes are not those of the data
    data_dir = setup["metadata"]["data_dir"]
    out = f"--export_dir={tmp_path / 'out'}"
    # As a user runs it: one error line and status 2 from the process itself.
    result = run_module("export.saved_model", f"--load_model={text_file}", out)
    assert_one_error_line(
        result.returncode, result.stderr, "not a .keras model file (not a zip archive)"
    )
    cases = [
        ([f"--load_model={zip_file}"], "a zip archive without config.json"),
        (
            [f"--load_model={small}", f"--processed_data_dir={data_dir}"],
            "the model was trained on another vocabulary",
        ),
        ([f"--load_model={tmp_path / 'nope.keras'}"], "nope.keras: no such file"),
    ]
    for args, message in cases:  # the same main(), in this process (faster)
        code = esm.main([*args, out])
        assert_one_error_line(code, capsys.readouterr().err, message)
    with pytest.raises(SystemExit) as exit_status:
        esm.main([out])
    err = capsys.readouterr().err
    assert_one_error_line(exit_status.value.code, err, "the following arguments are required")
    assert not os.path.exists(tmp_path / "out") or os.listdir(tmp_path / "out") == []


def test_grpc_client_missing_inputs_file(tmp_path):
    result = run_module("export.grpc_client", f"--inputs={tmp_path / 'missing.npz'}")
    line = assert_one_error_line(result.returncode, result.stderr, "--inputs=")
    assert "missing.npz" in line and "No such file" in line


@pytest.mark.parametrize("categorical", ["vocabulary", "hash"])
def test_raw_signature_follows_the_categorical_mode(tmp_path, capsys, categorical):
    """Data converted with --max_ind_range alone (vocabularies of the reduced values)
    or with --categorical=hash: the exported raw signature serves a raw line as the
    converter converted it."""
    rng = np.random.default_rng(4)
    rows = raw_rows(rng, category_pools(rng), NUM_RAW_LINES)
    raw = tmp_path / "train.txt"
    raw.write_text("".join("\t".join(["0", *row]) + "\n" for row in rows))
    metadata = convert(
        "kaggle", raw, tmp_path / "data", max_ind_range=1000, categorical=categorical,
        data_randomize="none", num_shards=1,
    )  # fmt: skip
    if categorical == "hash":
        assert metadata["table_sizes"] == [1000] * NUM_SPARSE
    else:  # at most 5 values per feature, plus the out-of-vocabulary and missing ids
        assert max(metadata["table_sizes"]) <= 7
    model = build_model(small_config(metadata["table_sizes"]))
    checkpoint = tmp_path / "model.keras"
    model.save(checkpoint)
    assert (
        esm.main(
            [
                f"--load_model={checkpoint}",
                f"--export_dir={tmp_path / 'serving'}",
                f"--processed_data_dir={metadata['data_dir']}",
            ]
        )
        == 0
    )
    loaded = tf.saved_model.load(capsys.readouterr().out.strip().splitlines()[-1])
    fields = np.array(rows[:8], dtype="S")
    out = loaded.signatures[sig.PREDICT_RAW](fields=tf.constant(fields))["probability"]
    dense, ids = converted_train_rows(metadata, 8)
    np.testing.assert_allclose(out.numpy(), keras_predict(model, dense, ids), atol=TOL)
