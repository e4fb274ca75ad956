"""ONNX export of a trained DLRM model, checked against the Keras model with onnxruntime.

Optional: needs ``tf2onnx``, ``onnx`` and ``onnxruntime`` (``pip install
'dlrm-tf[onnx]'``); without them :func:`save_onnx` raises
:class:`OnnxExportError` saying so. For serving, the SavedModel export
(``python -m export.saved_model``) remains the supported path.

The conversion traces one inference pass (``training=False``) with a dynamic
batch dimension (and a dynamic bag length for multi-hot ids), the weights
entering as arguments; they are then stored as the graph's initializers
(named like ``dlrm.embedding_bags.embedding_table_0``). The embedding bags
become ONNX ``NonZero`` / ``Compress`` / ``Unique`` / ``Gather`` /
``ScatterND`` / ``ReduceSum`` nodes.

Differences from the Keras model:

- the id range check is not exported: an id ``>=`` its table size makes
  onnxruntime's ``Gather`` fail, but any negative id is treated as padding
  (the Keras model accepts only ``-1`` there);
- weights of more than 1 GiB go to a side file ``<path>.data`` (ONNX external
  data, found by onnxruntime next to the model file): one ``.onnx`` file
  cannot exceed 2 GiB.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping

import numpy as np
import tensorflow as tf

from dlrm_tf.model.dlrm import DENSE_KEY, DLRM, SPARSE_KEY

INSTALL_HINT = "pip install 'dlrm-tf[onnx]' (tf2onnx, onnx and onnxruntime)"
SERVING_HINT = (
    "For serving, export a SavedModel instead: python -m export.saved_model "
    "--load_model=MODEL.keras --export_dir=DIR"
)
DEFAULT_OPSET = 17
# Weights above this many bytes are written as ONNX external data: a single
# protobuf message (the .onnx file) cannot exceed 2 GiB.
EXTERNAL_DATA_BYTES = 1 << 30


class OnnxExportError(RuntimeError):
    """The ONNX export cannot be done or does not match the model; the message says why."""


def _import_converters():
    try:
        import onnx
        import tf2onnx
    except ImportError as err:
        raise OnnxExportError(
            f"ONNX export needs tf2onnx and onnx, which are not installed ({err}): "
            f"{INSTALL_HINT}. {SERVING_HINT}"
        ) from err
    return tf2onnx, onnx


def weight_bytes(model) -> int:
    """Bytes of all of ``model``'s weights."""
    return sum(
        math.prod(int(d) for d in w.shape) * np.dtype(w.dtype).itemsize for w in model.weights
    )


def _as_feeds(example_inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = {DENSE_KEY, SPARSE_KEY} - set(example_inputs)
    if missing:
        raise ValueError(
            f"example_inputs needs the keys {DENSE_KEY!r} and {SPARSE_KEY!r}; missing "
            f"{sorted(missing)}"
        )
    dense = np.asarray(example_inputs[DENSE_KEY], dtype=np.float32)
    sparse = np.asarray(example_inputs[SPARSE_KEY]).astype(np.int64)
    if dense.ndim != 2 or sparse.ndim not in (2, 3) or len(dense) != len(sparse):
        raise ValueError(
            f"example_inputs: expected {DENSE_KEY} [B, n_dense] and {SPARSE_KEY} [B, T] or "
            f"[B, T, H], got shapes {dense.shape} and {sparse.shape}"
        )
    return {DENSE_KEY: dense, SPARSE_KEY: sparse}


def _signature(feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, tf.TensorSpec]]:
    dense, sparse = feeds[DENSE_KEY], feeds[SPARSE_KEY]
    sparse_shape = [None, sparse.shape[1]] + ([None] if sparse.ndim == 3 else [])
    return (
        {
            DENSE_KEY: tf.TensorSpec([None, dense.shape[1]], tf.float32, name=DENSE_KEY),
            SPARSE_KEY: tf.TensorSpec(sparse_shape, tf.int64, name=SPARSE_KEY),
        },
    )


def _without_xla(model):
    """The model itself, or for a ``jit_compile`` DLRM an uncompiled twin (weights of the
    same names and shapes, whose values are not used).

    tf2onnx does not inline the XLA-compiled functions of such a model (they stay
    ``StatefulPartitionedCall`` ops, which ONNX lacks).
    """
    if not (isinstance(model, DLRM) and model.jit_compile_dense):
        return model
    twin = DLRM(model.model_config, jit_compile=False, name=model.name)
    twin.build()
    return twin


def _weight_name(variable) -> str:
    return variable.path.replace("/", ".")


def _convert(tf2onnx, model, feeds: Mapping[str, np.ndarray], opset: int):
    """The ONNX graph of one inference pass, with every weight as a graph input.

    The weights enter the traced function as arguments (``stateless_call``)
    rather than being frozen into constants: tf2onnx's graph optimizers copy
    every constant at each pass, which takes tens of times the weights' size
    in memory for embedding tables.
    """
    traced = _without_xla(model)
    trainable = list(traced.trainable_variables)
    non_trainable = list(traced.non_trainable_variables)
    weight_specs = [
        tf.TensorSpec(v.shape, v.dtype, name=_weight_name(v)) for v in trainable + non_trainable
    ]

    def forward(inputs, *weights):
        outputs, _ = traced.stateless_call(
            list(weights[: len(trainable)]), list(weights[len(trainable) :]), inputs, training=False
        )
        return outputs

    function = tf.function(forward, autograph=False)
    model_proto, _ = tf2onnx.convert.from_function(
        function, input_signature=(*_signature(feeds), *weight_specs), opset=opset
    )
    return model_proto


def _unsupported_nodes(onnx, model_proto) -> list[str]:
    """Nodes tf2onnx left as TensorFlow ops (it keeps going past ops it cannot convert)."""
    return [
        f"{node.op_type} ({node.name})"
        for node in model_proto.graph.node
        if node.domain not in ("", "ai.onnx") or not onnx.defs.has(node.op_type)
    ]


def _attach_weights(onnx, model_proto, model, data_path: str | None) -> None:
    """Turns the weight inputs of ``model_proto`` into initializers holding ``model``'s values.

    With ``data_path`` the values go to that file (ONNX external data, 4 KiB
    aligned so that onnxruntime can map them), one variable at a time.
    """
    from onnx import numpy_helper

    variables = {_weight_name(v): v for v in model.weights}
    graph = model_proto.graph
    kept = [i for i in graph.input if i.name not in variables]
    used = [i.name for i in graph.input if i.name in variables]
    unknown = sorted({i.name for i in kept} - {DENSE_KEY, SPARSE_KEY})
    if unknown:
        raise OnnxExportError(
            f"the ONNX graph has inputs that are no weights of the model: {unknown}"
        )
    data = open(data_path, "wb") if data_path else None
    try:
        for name in used:
            value = np.ascontiguousarray(variables[name].numpy())
            if data is None:
                graph.initializer.append(numpy_helper.from_array(value, name))
                continue
            data.write(b"\0" * (-data.tell() % 4096))
            offset = data.tell()
            data.write(value.tobytes())
            tensor = onnx.TensorProto(name=name, dims=value.shape)
            tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            entries = (
                ("location", os.path.basename(data_path)),
                ("offset", offset),
                ("length", value.nbytes),
            )
            for key, entry_value in entries:
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(entry_value)
            graph.initializer.append(tensor)
    finally:
        if data is not None:
            data.close()
    del graph.input[:]
    graph.input.extend(kept)


def _import_runtime():
    try:
        import onnxruntime
    except ImportError as err:
        raise OnnxExportError(
            f"onnxruntime is not installed, so the exported model cannot be checked: "
            f"{INSTALL_HINT} (or pass verify=False)"
        ) from err
    return onnxruntime


def _verify(onnxruntime, path: str, model, feeds: Mapping[str, np.ndarray], atol: float) -> float:
    """Max |ONNX - Keras| over the example inputs; raises if above ``atol``."""
    try:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
    except Exception as err:  # onnxruntime's own exception types (Fail, InvalidGraph, ...)
        raise OnnxExportError(
            f"onnxruntime {onnxruntime.__version__} cannot run the exported model: {err}. "
            f"{SERVING_HINT}"
        ) from err
    want = np.asarray(model(dict(feeds), training=False))
    if got.shape != want.shape:
        raise OnnxExportError(
            f"the ONNX model's output has shape {got.shape}, the Keras model's {want.shape}"
        )
    diff = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
    if not diff <= atol:
        raise OnnxExportError(
            f"the ONNX model's outputs differ from the Keras model's by up to {diff:.3g} "
            f"(> {atol:g}) on the example inputs; nothing was kept. {SERVING_HINT}"
        )
    return diff


def save_onnx(
    model,
    path: str | os.PathLike,
    example_inputs: Mapping[str, np.ndarray],
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-5,
    external_data: bool | None = None,
    verify: bool = True,
    log: Callable[[str], None] = print,
) -> str:
    """Exports ``model`` to the ONNX file ``path`` and checks it with onnxruntime.

    Args:
      model: a built DLRM (any Keras model taking the dict of ``dlrm_tf.model.dlrm``).
      path: the ``.onnx`` file to write (its directory is created).
      example_inputs: ``{"dense_features": [B, n_dense], "sparse_features": [B, T]
        or [B, T, H]}``: give the input widths (batch and bag length stay
        dynamic) and are the inputs of the check.
      opset: ONNX opset.
      atol: largest accepted |ONNX - Keras| difference of the probabilities.
      external_data: weights in ``<path>.data``; default: when they exceed 1 GiB.
      verify: compare with the Keras model through onnxruntime.
      log: where the one-line report goes.

    Returns:
      The path of the ONNX file.

    Raises:
      OnnxExportError: the converters are not installed, the graph holds ops
        ONNX lacks, or the outputs differ by more than ``atol`` (the files
        are then removed).
      ValueError: ``path`` or ``example_inputs`` are malformed.
    """
    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ValueError(f"save_onnx: the file name must end in .onnx, got {path!r}")
    feeds = _as_feeds(example_inputs)
    tf2onnx, onnx = _import_converters()
    onnxruntime = _import_runtime() if verify else None
    size = weight_bytes(model)
    if external_data is None:
        external_data = size > EXTERNAL_DATA_BYTES

    model_proto = _convert(tf2onnx, model, feeds, opset)
    unsupported = _unsupported_nodes(onnx, model_proto)
    if unsupported:
        raise OnnxExportError(
            f"tf2onnx {tf2onnx.__version__} could not convert these TensorFlow ops to ONNX "
            f"opset {opset}: {', '.join(unsupported)}. {SERVING_HINT}"
        )

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data_path = path + ".data"
    written = [path, data_path] if external_data else [path]
    if not external_data and os.path.exists(data_path):
        os.remove(data_path)  # the side file of an earlier export
    _attach_weights(onnx, model_proto, model, data_path if external_data else None)
    with open(path, "wb") as f:
        f.write(model_proto.SerializeToString())

    where = f"{path} (+ {data_path})" if external_data else path
    if verify:
        try:
            diff = _verify(onnxruntime, path, model, feeds, atol)
        except OnnxExportError:
            for name in written:
                if os.path.exists(name):
                    os.remove(name)
            raise
        log(
            f"ONNX model written to {where}: onnxruntime matches the Keras model on "
            f"{len(feeds[DENSE_KEY])} examples, max |diff| {diff:.2g}"
        )
    else:
        log(f"ONNX model written to {where} (not checked)")
    return path
