"""Versioned SavedModel export of a DLRM model for TF Serving.

Command line::

    python -m export.saved_model --load_model=CKPT.keras --export_dir=BASE \\
        [--version=N] [--overwrite] [--processed_data_dir=DIR] [--model_name=dlrm]

writes ``BASE/<N>/`` (by default ``N`` is one more than the highest numeric
version under ``BASE``, or 1), the layout TF Serving's ``--model_base_path``
polls. The SavedModel is written to a hidden directory ``BASE/.tmp-export-*``
(TF Serving only loads children whose names parse as integers) and renamed into
place in one step, so a server never sees a half-written version.

Contents of a version: the signatures of :mod:`export.signatures`,
``assets.extra/tf_serving_warmup_requests`` (see :mod:`export.warmup`) and
``assets.extra/export_info.json`` (model configuration and signature
summary, ignored by TF Serving).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from export import signatures as sig
from export import warmup
from export.session_loader import ServingSession

TMP_PREFIX = ".tmp-export-"
OLD_PREFIX = ".old-version-"
INFO_FILE = "export_info.json"
_VERSION_RE = re.compile(r"[0-9]+")


class ExportError(RuntimeError):
    """The export cannot proceed; the message says why and what to change."""


def version_dirs(export_base: str | os.PathLike) -> dict[int, str]:
    """Version number -> path of the all-digit child directories of ``export_base``."""
    base = os.fspath(export_base)
    if not os.path.isdir(base):
        return {}
    found = {}
    for name in os.listdir(base):
        path = os.path.join(base, name)
        if _VERSION_RE.fullmatch(name) and os.path.isdir(path):
            found[int(name)] = path
    return found


def next_version(export_base: str | os.PathLike) -> int:
    """One more than the highest existing version under ``export_base``; 1 if there is none."""
    versions = version_dirs(export_base)
    return max(versions) + 1 if versions else 1


def export_model(
    model: Any,
    export_base: str | os.PathLike,
    *,
    version: int | None = None,
    overwrite: bool = False,
    raw_preprocessor: sig.RawPreprocessorLike | None = None,
    warmup_batch: Mapping[str, np.ndarray] | None = None,
    model_name: str = "dlrm",
) -> str:
    """Exports a built DLRM model as ``<export_base>/<version>/`` for TF Serving.

    Args:
      model: a built ``dlrm_tf.model.DLRM``.
      export_base: the model's base directory (TF Serving's ``--model_base_path``);
        created if missing.
      version: the version number; by default the next one after the highest
        existing version (1 if none).
      overwrite: replace an existing ``<version>`` directory instead of failing.
      raw_preprocessor: an ``input_pipeline.criteo.RawPreprocessor``; when given,
        the ``predict_raw`` signature is exported with its vocabulary assets.
      warmup_batch: optional real examples for the warm-up requests (see
        :func:`export.warmup.warmup_inputs`); synthetic ones otherwise.
      model_name: the model name written into the warm-up requests' ``model_spec``.

    Returns:
      The path of the version directory.

    Raises:
      ExportError: if the version exists and ``overwrite`` is false, or if the
        version is not a non-negative integer.
      tf.errors.InvalidArgumentError: if a warm-up request fails on the model
        (e.g. ``warmup_batch`` holds out-of-range ids).
    """
    base = os.path.abspath(os.fspath(export_base))
    os.makedirs(base, exist_ok=True)
    if version is None:
        version = next_version(base)
    elif isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ExportError(f"--version={version!r}: must be a non-negative integer")
    target = os.path.join(base, str(version))
    _check_target(target, overwrite)

    module = sig.DLRMServingModule(model, raw_preprocessor)
    signatures = module.signatures()
    requests = [
        warmup.predict_request(name, inputs, model_name=model_name)
        for name, inputs in warmup.warmup_inputs(
            module.num_dense,
            module.table_sizes,
            with_raw=sig.PREDICT_RAW in signatures,
            warmup_batch=warmup_batch,
        )
    ]
    # TF Serving refuses to load a version whose warm-up fails: run them all first.
    for request in requests:
        _run_request(signatures, request)

    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=base)
    try:
        # mkdtemp makes the directory private (0700); a server running as another
        # user must be able to read the published version.
        os.chmod(tmp, 0o777 & ~_umask())
        _write_saved_model(module, tmp, signatures)
        extra = warmup.write_warmup_file(tmp, (warmup.prediction_log(r) for r in requests))
        _replay_in_session(tmp, requests)
        _write_info(os.path.dirname(extra), model, signatures, len(requests))
        _publish(tmp, target, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Loads a ``.keras`` model file written by ``model.save`` (without its optimizer state)."""
    import keras

    import dlrm_tf.model  # noqa: F401  (registers the custom classes for deserialisation)

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ExportError(f"--load_model={path}: no such file")
    return keras.saving.load_model(path, compile=False)


def _check_target(target: str, overwrite: bool) -> None:
    if os.path.exists(target) and not overwrite:
        raise ExportError(
            f"version directory {target} already exists; pass --overwrite "
            "(overwrite=True) to replace it, or choose another --version"
        )


def _write_saved_model(module: sig.DLRMServingModule, path: str, signatures: dict) -> None:
    tf.saved_model.save(module, path, signatures=signatures)


def _publish(tmp: str, target: str, overwrite: bool) -> None:
    """Moves the finished export into place with renames (atomic within one file system)."""
    _check_target(target, overwrite)
    if not os.path.exists(target):
        os.rename(tmp, target)
        return
    # A non-empty directory cannot be replaced in one rename: move the old one
    # aside under a name TF Serving ignores, then move the new one in.
    old = os.path.join(os.path.dirname(target), f"{OLD_PREFIX}{os.path.basename(target)}-"
                       f"{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _run_request(signatures: dict, request) -> None:
    inputs = warmup.request_arrays(request)
    name = request.model_spec.signature_name
    outputs = signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
    _check_probability(name, outputs[sig.OUTPUT_KEY].numpy(), inputs)


def _replay_in_session(path: str, requests: Sequence) -> None:
    """Loads the written SavedModel as TF Serving does and replays the warm-up requests."""
    with ServingSession(path) as served:
        for request in requests:
            inputs = warmup.request_arrays(request)
            name = request.model_spec.signature_name
            _check_probability(name, served.run(name, inputs)[sig.OUTPUT_KEY], inputs)


def _check_probability(name: str, probability: np.ndarray, inputs: Mapping) -> None:
    batch = next(iter(inputs.values())).shape[0]
    if probability.shape != (batch, 1) or not np.all(np.isfinite(probability)):
        raise ExportError(
            f"warm-up request on {name!r} gave {probability.shape} "
            f"(finite: {np.all(np.isfinite(probability))}); expected finite [{batch}, 1]"
        )


def _write_info(directory: str, model: Any, signatures: dict, num_warmup: int) -> None:
    described = {}
    for name, fn in signatures.items():
        described[name] = {
            "inputs": {
                spec.name: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
                for spec in tf.nest.flatten(fn.structured_input_signature)
            },
            "outputs": {
                key: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
                for key, spec in fn.structured_outputs.items()
            },
        }
    config = getattr(model, "model_config", None)
    info = {
        "model_config": config.to_dict() if config is not None else None,
        "signatures": described,
        "warmup_requests": num_warmup,
        "absent_id": -1,
    }
    with open(os.path.join(directory, INFO_FILE), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export.saved_model",
        description="Export a trained DLRM (.keras file) as a versioned SavedModel for TF Serving.",
    )
    parser.add_argument("--load_model", required=True, help="the .keras file written by model.save")
    parser.add_argument(
        "--export_dir", required=True, help="base directory; writes <export_dir>/<version>"
    )
    parser.add_argument("--version", type=int, default=None, help="version number (default: next)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing version directory"
    )
    parser.add_argument(
        "--processed_data_dir",
        default=None,
        help="converted data directory (metadata.json, vocabularies); adds predict_raw",
    )
    parser.add_argument("--model_name", default="dlrm", help="model name in the warm-up requests")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    try:
        model = load_checkpoint(args.load_model)
        raw = None
        if args.processed_data_dir:
            from input_pipeline.criteo import RawPreprocessor

            raw = RawPreprocessor.from_metadata(args.processed_data_dir)
        path = export_model(
            model,
            args.export_dir,
            version=args.version,
            overwrite=args.overwrite,
            raw_preprocessor=raw,
            model_name=args.model_name,
        )
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
