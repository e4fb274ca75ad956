"""TF Serving warm-up requests: ``assets.extra/tf_serving_warmup_requests``.

TF Serving replays the ``PredictionLog`` records of this TFRecord file when it
loads a version, before the version takes traffic, so the first real requests
do not pay for graph initialisation. A warm-up request that fails makes the
whole version fail to load, so the exporter runs every request against the
model before writing the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from export import signatures as sig

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
DEFAULT_BATCH_SIZES = (1, 32)
# Width of the synthetic multi-hot bags (padded with -1).
WARMUP_BAG_SIZE = 3


def predict_request(
    signature_name: str,
    inputs: Mapping[str, np.ndarray],
    model_name: str = "dlrm",
    version: int | None = None,
) -> predict_pb2.PredictRequest:
    """A ``PredictRequest`` for one signature, each input as a ``TensorProto``.

    Args:
      signature_name: e.g. ``"serving_default"``.
      inputs: input name -> array (float32 dense, int64 ids, bytes/str fields).
      model_name: the model's name on the server (``--model_name`` of TF Serving).
      version: a specific version to ask for; the latest if ``None``.
    """
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name)
    )
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(_as_array(value)))
    return request


def request_arrays(request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
    """The inputs of a ``PredictRequest`` back as numpy arrays."""
    return {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}


def prediction_log(request: predict_pb2.PredictRequest) -> prediction_log_pb2.PredictionLog:
    """Wraps a request in the ``PredictionLog`` record that TF Serving's warm-up reads."""
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )


def write_warmup_file(
    export_dir: str | os.PathLike, logs: Iterable[prediction_log_pb2.PredictionLog]
) -> str:
    """Writes ``<export_dir>/assets.extra/tf_serving_warmup_requests``; returns its path."""
    directory = os.path.join(os.fspath(export_dir), WARMUP_DIR)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup_file(path: str | os.PathLike) -> list[prediction_log_pb2.PredictionLog]:
    """Parses a warm-up file (or a SavedModel directory holding one) into ``PredictionLog``s."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, WARMUP_DIR, WARMUP_FILE)
    logs = []
    for record in tf.data.TFRecordDataset(path):
        logs.append(prediction_log_pb2.PredictionLog.FromString(record.numpy()))
    return logs


def synthetic_onehot(
    rng: np.random.Generator, batch_size: int, num_dense: int, table_sizes: Sequence[int]
) -> dict[str, np.ndarray]:
    """Valid one-hot inputs: dense in ``[0, 5)``, one in-range id per table (some ``-1``)."""
    dense = rng.uniform(0.0, 5.0, size=(batch_size, num_dense)).astype(np.float32)
    sizes = np.asarray(table_sizes, dtype=np.int64)
    ids = (rng.random((batch_size, len(sizes))) * sizes).astype(np.int64)
    ids = np.minimum(ids, sizes - 1)
    ids[rng.random(ids.shape) < 0.05] = -1
    return {sig.DENSE_KEY: dense, sig.SPARSE_KEY: ids}


def synthetic_multihot(
    rng: np.random.Generator,
    batch_size: int,
    num_dense: int,
    table_sizes: Sequence[int],
    bag_size: int = WARMUP_BAG_SIZE,
) -> dict[str, np.ndarray]:
    """Valid multi-hot inputs ``[B, T, bag_size]``: bags of 0..bag_size ids, padded with -1.

    The last example's first bag is empty, the case where a sum over bags is
    easiest to get wrong.
    """
    dense = rng.uniform(0.0, 5.0, size=(batch_size, num_dense)).astype(np.float32)
    sizes = np.asarray(table_sizes, dtype=np.int64)
    ids = (rng.random((batch_size, len(sizes), bag_size)) * sizes[:, None]).astype(np.int64)
    ids = np.minimum(ids, sizes[:, None] - 1)
    lengths = rng.integers(0, bag_size + 1, size=(batch_size, len(sizes)))
    ids[np.arange(bag_size)[None, None, :] >= lengths[..., None]] = -1
    ids[-1, 0, :] = -1
    return {sig.DENSE_KEY: dense, sig.SPARSE_KEY: ids}


def synthetic_raw_fields(
    rng: np.random.Generator, batch_size: int, num_dense: int, num_sparse: int
) -> np.ndarray:
    """Raw Criteo fields as a bytes array ``[B, num_dense + num_sparse]``.

    Integers as decimal strings (some negative, some empty), categories as
    8-hex-digit strings (some empty), as in a raw line without its label.
    """
    rows = []
    for _ in range(batch_size):
        ints = [
            b"" if rng.random() < 0.1 else str(int(rng.integers(-2, 1000))).encode()
            for _ in range(num_dense)
        ]
        cats = [
            b"" if rng.random() < 0.1 else f"{int(rng.integers(0, 2**32)):08x}".encode()
            for _ in range(num_sparse)
        ]
        rows.append(ints + cats)
    return np.array(rows, dtype=object).reshape(batch_size, num_dense + num_sparse)


def warmup_inputs(
    num_dense: int,
    table_sizes: Sequence[int],
    *,
    with_raw: bool,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    warmup_batch: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The (signature name, inputs) pairs to warm up with: each signature at each batch size.

    Args:
      num_dense: the model's dense width.
      table_sizes: the model's table sizes.
      with_raw: include ``predict_raw`` requests.
      batch_sizes: batch sizes of the synthetic requests.
      warmup_batch: optional real examples: ``dense_features`` ``[B, D]`` and
        ``sparse_features`` ``[B, T]`` (one-hot) or ``[B, T, H]`` (multi-hot),
        and optionally ``fields`` ``[B, D + T]`` for the raw signature. Each
        given input replaces the synthetic requests of its signature.
      seed: seed of the synthetic inputs.
    """
    rng = np.random.default_rng(seed)
    pairs: list[tuple[str, dict[str, np.ndarray]]] = []
    real = dict(warmup_batch or {})
    if sig.DENSE_KEY in real and sig.SPARSE_KEY in real:
        dense = np.asarray(real[sig.DENSE_KEY], dtype=np.float32)
        ids = np.asarray(real[sig.SPARSE_KEY], dtype=np.int64)
        if ids.ndim == 2:
            pairs.append((sig.SERVING_DEFAULT, {sig.DENSE_KEY: dense, sig.SPARSE_KEY: ids}))
            ids = ids[:, :, None]
        else:
            ids = ids.copy()
        pairs.append((sig.PREDICT_MULTIHOT, {sig.DENSE_KEY: dense, sig.SPARSE_KEY: ids}))
    elif real.keys() & {sig.DENSE_KEY, sig.SPARSE_KEY}:
        raise ValueError(
            f"warmup_batch needs both {sig.DENSE_KEY!r} and {sig.SPARSE_KEY!r}, got {sorted(real)}"
        )
    given = {name for name, _ in pairs}
    for batch in batch_sizes:
        if sig.SERVING_DEFAULT not in given:
            pairs.append(
                (sig.SERVING_DEFAULT, synthetic_onehot(rng, batch, num_dense, table_sizes))
            )
        if sig.PREDICT_MULTIHOT not in given:
            pairs.append(
                (sig.PREDICT_MULTIHOT, synthetic_multihot(rng, batch, num_dense, table_sizes))
            )
    if with_raw:
        if sig.FIELDS_KEY in real:
            fields = np.asarray(real[sig.FIELDS_KEY], dtype=object)
            pairs.append((sig.PREDICT_RAW, {sig.FIELDS_KEY: fields}))
        else:
            for batch in batch_sizes:
                fields = synthetic_raw_fields(rng, batch, num_dense, len(table_sizes))
                pairs.append((sig.PREDICT_RAW, {sig.FIELDS_KEY: fields}))
    return pairs


def _as_array(value) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind == "U":
        array = np.char.encode(array, "utf-8").astype(object)
    return array
