"""Versioned SavedModel export of a DLRM model for TF Serving.

Command line::

    python -m export.saved_model --load_model=CKPT.keras --export_dir=BASE \\
        [--version=N] [--overwrite] [--processed_data_dir=DIR] [--model_name=dlrm]

writes ``BASE/<N>/`` (by default ``N`` is one more than the highest numeric
version under ``BASE``, or 1), the layout TF Serving's ``--model_base_path``
polls. The SavedModel is written to a hidden directory ``BASE/.tmp-export-*``
(TF Serving only loads children whose names parse as integers), fsynced, and
renamed into place in one step, so a server never sees a half-written version.
One export at a time writes into a base (a lock file ``.BASE.lock`` next to it,
naming its pid); an export removes the hidden directories killed exports left
there (and says so), never a version directory. ``--overwrite`` replaces only a
version this exporter wrote. ``--verbose`` adds the traceback to an error.

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

from input_pipeline.tf_startup import start_tensorflow

if __name__ == "__main__":  # the command: oneDNN, start-up lines only on request
    start_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from export import signatures as sig  # noqa: E402
from export import warmup  # noqa: E402
from export.session_loader import ServingSession  # noqa: E402
from input_pipeline import errors, safe_files  # noqa: E402

TMP_PREFIX = ".tmp-export-"
OLD_PREFIX = ".old-version-"
INFO_FILE = "export_info.json"
_VERSION_RE = re.compile(r"[0-9]+")
# What tf.saved_model.save and this exporter put in a version directory.
_VERSION_ENTRIES = {"saved_model.pb", "fingerprint.pb", "variables", "assets", "assets.extra"}


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
      model: a built ``dlrm_tf.model.dlrm.DLRM``.
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
    if os.path.lexists(base) and not os.path.isdir(base):
        raise ExportError(f"`export_dir`={base} exists and is not a directory: choose another")
    os.makedirs(base, exist_ok=True)
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version < 0
    ):
        raise ExportError(f"`version`={version!r}: must be a non-negative integer")
    if version is not None:
        _check_target(os.path.join(base, str(version)), overwrite)  # fail before the work

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

    # One export at a time per base: the version number is chosen under the lock,
    # and what a killed export left (no live exporter can own it now) is removed.
    with safe_files.exclusive(base, f"`export_dir`={base}", logging.warning):
        safe_files.remove_leftovers(base, [f"{TMP_PREFIX}*", f"{OLD_PREFIX}*"], logging.warning)
        if version is None:
            version = next_version(base)
            while os.path.lexists(os.path.join(base, str(version))):  # a file named "4"
                version += 1
        target = os.path.join(base, str(version))
        _check_target(target, overwrite)
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


def _check_target(target: str, overwrite: bool) -> None:
    """A version may replace only a SavedModel this exporter wrote, and only with
    ``overwrite``."""
    if not os.path.lexists(target):
        return
    if not overwrite:
        raise ExportError(
            f"version directory {target} already exists; pass `overwrite` "
            "(overwrite=True) to replace it, or choose another `version`"
        )
    if os.path.islink(target) or not os.path.isdir(target):
        raise ExportError(
            f"{target} exists and is not a version directory; refusing to replace it "
            "(with or without `overwrite`): remove it yourself or choose another `version`"
        )
    ours = os.path.isfile(os.path.join(target, "saved_model.pb")) and os.path.isfile(
        os.path.join(target, "assets.extra", INFO_FILE)
    )
    foreign = sorted(set(os.listdir(target)) - _VERSION_ENTRIES)
    if not ours or foreign:
        held = safe_files.describe(foreign or sorted(os.listdir(target)))
        raise ExportError(
            f"{target} is not a SavedModel written by this exporter (it holds {held}); "
            "refusing to replace it (with or without `overwrite`): choose another `version`"
        )


def _write_saved_model(module: sig.DLRMServingModule, path: str, signatures: dict) -> None:
    tf.saved_model.save(module, path, signatures=signatures)


def _publish(tmp: str, target: str, overwrite: bool) -> None:
    """Moves the finished export into place with renames (atomic within one file system)."""
    _check_target(target, overwrite)
    safe_files.fsync_tree(tmp)
    if not os.path.exists(target):
        os.rename(tmp, target)
        safe_files.fsync_path(os.path.dirname(target))
        return
    # A non-empty directory cannot be replaced in one rename: move the old one
    # aside under a name TF Serving ignores, then move the new one in.
    old = os.path.join(
        os.path.dirname(target), f"{OLD_PREFIX}{os.path.basename(target)}-{uuid.uuid4().hex[:8]}"
    )
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    safe_files.fsync_path(os.path.dirname(target))
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
    parser = errors.ArgumentParser(
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
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse_args(argv)
    try:
        from dlrm_tf.model.saving import load_model

        model = load_model(args.load_model)
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
    except Exception as error:  # noqa: BLE001  (every failure: one line, exit 2)
        return errors.report(error, argv)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
