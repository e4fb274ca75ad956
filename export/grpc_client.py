"""A small TF Serving client for the exported DLRM: gRPC ``Predict``, or the REST body.

Examples::

    # raw Criteo lines (39 fields, or 40 with the label first) -> predict_raw
    python -m export.grpc_client --server=localhost:8500 --model_name=dlrm \\
        --raw_file=day_23_head.txt

    # arrays from an .npz holding dense_features [B, 13] and sparse_features [B, 26]
    python -m export.grpc_client --server=localhost:8500 --inputs=batch.npz

    # the JSON body for POST http://HOST:8501/v1/models/dlrm:predict instead
    python -m export.grpc_client --inputs=batch.npz --print_rest

The signature is chosen from the inputs (``predict_raw`` for raw lines,
``predict_multihot`` for ``[B, T, H]`` ids, ``serving_default`` otherwise)
unless ``--signature`` names one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence

from input_pipeline.tf_startup import quiet_tensorflow

if __name__ == "__main__":  # the command: TensorFlow's start-up lines only on request
    quiet_tensorflow()

import numpy as np  # noqa: E402

from export import signatures as sig  # noqa: E402
from export.warmup import predict_request  # noqa: E402
from input_pipeline import errors  # noqa: E402

DEFAULT_TIMEOUT_S = 10.0


def raw_fields(lines: Iterable[str | bytes], num_fields: int = 39) -> np.ndarray:
    """Raw tab-separated Criteo lines -> bytes array ``[B, num_fields]`` for ``predict_raw``.

    A line with ``num_fields + 1`` fields is taken to start with its label,
    which is dropped.

    Raises:
      ValueError: if a line has another number of fields.
    """
    rows = []
    for i, line in enumerate(lines):
        if isinstance(line, str):
            line = line.encode("utf-8")
        parts = line.rstrip(b"\r\n").split(b"\t")
        if len(parts) == num_fields + 1:
            parts = parts[1:]
        if len(parts) != num_fields:
            raise ValueError(
                f"line {i + 1}: {len(parts)} tab-separated fields, expected {num_fields} "
                f"(or {num_fields + 1} with the label first)"
            )
        rows.append(parts)
    return np.array(rows, dtype=object).reshape(len(rows), num_fields)


def choose_signature(inputs: Mapping[str, np.ndarray]) -> str:
    """The signature that takes these inputs."""
    if sig.FIELDS_KEY in inputs:
        return sig.PREDICT_RAW
    if np.ndim(inputs[sig.SPARSE_KEY]) == 3:
        return sig.PREDICT_MULTIHOT
    return sig.SERVING_DEFAULT


def typed_inputs(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Casts inputs to the dtypes the signatures declare (float32 dense, int64 ids)."""
    out = {}
    for key, value in inputs.items():
        if key == sig.DENSE_KEY:
            out[key] = np.asarray(value, dtype=np.float32)
        elif key == sig.SPARSE_KEY:
            out[key] = np.asarray(value, dtype=np.int64)
        else:
            out[key] = np.asarray(value, dtype=object)
    return out


def rest_body(signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict:
    """The JSON body of a TF Serving REST ``:predict`` call, in the row ("instances") format."""
    inputs = typed_inputs(inputs)
    batch = len(next(iter(inputs.values())))
    instances = []
    for i in range(batch):
        instance = {}
        for key, value in inputs.items():
            row = value[i]
            if row.dtype == object:
                instance[key] = [_text(v) for v in row.reshape(-1)]
            elif row.dtype == np.float32:
                # The shortest decimal that reads back as the same float32.
                instance[key] = [float(str(v)) for v in row.reshape(-1)]
            else:
                instance[key] = row.tolist()
        instances.append(instance)
    return {"signature_name": signature_name, "instances": instances}


def predict(
    server: str,
    request,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> np.ndarray:
    """Sends a ``PredictRequest`` over gRPC; returns the ``probability`` output ``[B, 1]``.

    Raises:
      grpc.RpcError: e.g. ``INVALID_ARGUMENT`` for an out-of-range id,
        ``UNAVAILABLE`` if no server listens at ``server``.
    """
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=timeout_s)
    return tf.make_ndarray(response.outputs[sig.OUTPUT_KEY])


class _InputError(ValueError):
    """The inputs named on the command line cannot be read."""


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = errors.ArgumentParser(prog="python -m export.grpc_client", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--raw_file", help="raw Criteo lines, tab-separated")
    source.add_argument("--inputs", help=".npz with dense_features and sparse_features")
    parser.add_argument("--server", default="localhost:8500", help="TF Serving gRPC address")
    parser.add_argument("--model_name", default="dlrm")
    parser.add_argument("--version", type=int, default=None, help="default: the latest")
    parser.add_argument("--signature", default=None, help="default: chosen from the inputs")
    parser.add_argument("--max_examples", type=int, default=64)
    parser.add_argument("--timeout_s", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--print_rest", action="store_true",
                        help="print the REST request body instead of calling the server")
    return parser.parse_args(argv)


def load_inputs(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """The request inputs named by the command line (at most ``--max_examples`` rows)."""
    if args.raw_file:
        with open(args.raw_file, "rb") as f:
            lines = [line for _, line in zip(range(args.max_examples), f, strict=False)]
        return {sig.FIELDS_KEY: raw_fields(lines)}
    with np.load(args.inputs, allow_pickle=False) as data:
        return typed_inputs(
            {key: data[key][: args.max_examples] for key in (sig.DENSE_KEY, sig.SPARSE_KEY)}
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: prints one probability per example (or the REST body)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse_args(argv)
    try:
        inputs = load_inputs(args)
        signature = args.signature or choose_signature(inputs)
    except Exception as error:  # noqa: BLE001  (a bad input file: one line, exit 2)
        flag = f"--raw_file={args.raw_file}" if args.raw_file else f"--inputs={args.inputs}"
        wrapped = _InputError(f"{flag}: {errors.one_line(error)}")
        wrapped.__cause__ = error
        return errors.report(wrapped, argv)
    if args.print_rest:
        print(json.dumps(rest_body(signature, inputs)))
        return 0
    request = predict_request(signature, inputs, model_name=args.model_name, version=args.version)
    import grpc

    try:
        probabilities = predict(args.server, request, args.timeout_s)
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    for p in probabilities.reshape(-1):
        print(f"{p:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
