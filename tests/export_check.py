"""Runs an exported DLRM SavedModel the way a server would: TensorFlow only.

Usage: ``python tests/export_check.py EXPORT_DIR CASES_JSON RESULT_JSON``

Loads ``EXPORT_DIR`` with ``tf.saved_model.load`` in a process that never
imports keras or this project: importing them is blocked (``import tensorflow``
itself imports ``keras.src.optimizers`` when keras is installed, and falls back
quietly when it is not, as on a server without keras). Runs each case of
``CASES_JSON``::

    [{"name": str, "signature": str, "inputs": {input_name: path.npy},
      "expected": path.npy | null}, ...]

and replays the warm-up requests of ``assets.extra/tf_serving_warmup_requests``;
then does both again through the session-based loader TF Serving uses
(``tf.compat.v1.saved_model.loader.load`` into a ``Session``, feeding and
fetching the tensors each ``SignatureDef`` names).
Writes to ``RESULT_JSON``: per case the maximum absolute difference to
``expected`` (or the error class and message), per warm-up request its
signature and output shape, the loaded signatures, the names of the
project/keras modules found in ``sys.modules`` (must be none) and the imports of
them attempted while loading and serving (must be none).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys

FORBIDDEN = ("keras", "tf_keras", "dlrm_tf", "export", "input_pipeline")


class _BlockedLoader(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"{spec.name} is blocked in this process", name=spec.name)

    def exec_module(self, module) -> None:  # never reached: create_module raises
        raise ModuleNotFoundError(module.__name__)


class _ImportBlocker(importlib.abc.MetaPathFinder):
    """Makes the forbidden packages unimportable and records every attempt.

    A spec without an origin whose loader raises ``ModuleNotFoundError``: an
    ``import`` fails as if the package were not installed, and
    ``importlib.util.find_spec`` (which TensorFlow's import runs) sees no location.
    """

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in FORBIDDEN:
            self.attempts.append(name)
            return importlib.machinery.ModuleSpec(name, _BlockedLoader())
        return None


def _forbidden_modules() -> list[str]:
    return sorted(name for name in sys.modules if name.split(".")[0] in FORBIDDEN)


def _case_entry(np, out, case) -> dict:
    entry = {"shape": list(out.shape), "dtype": out.dtype.name}
    if case.get("expected"):
        expected = np.load(case["expected"])
        entry["max_abs_diff"] = float(np.max(np.abs(out - expected))) if out.size else 0.0
        entry["expected_shape"] = list(expected.shape)
    return entry


def _run_in_session(tf, np, export_dir: str, cases: list, warmup_path: str):
    """The cases and the warm-up replay through TF Serving's loader: a TF1 session."""
    from tensorflow_serving.apis import prediction_log_pb2

    results, warm = {}, []
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_dir)

        def run(signature, arrays):
            spec = meta.signature_def[signature]
            feed = {spec.inputs[k].name: v for k, v in arrays.items()}
            return sess.run(spec.outputs["probability"].name, feed)

        for case in cases:
            arrays = {k: np.load(p, allow_pickle=False) for k, p in case["inputs"].items()}
            try:
                out = run(case["signature"], arrays)
            except Exception as e:  # noqa: BLE001 - the class and message are the result
                results[case["name"]] = {"error": type(e).__name__, "message": str(e)[:2000]}
                continue
            results[case["name"]] = _case_entry(np, out, case)
        for record in tf.compat.v1.io.tf_record_iterator(warmup_path):
            request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
            arrays = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            out = run(request.model_spec.signature_name, arrays)
            warm.append({"signature": request.model_spec.signature_name,
                         "batch": int(next(iter(arrays.values())).shape[0]),
                         "shape": list(out.shape), "finite": bool(np.all(np.isfinite(out)))})
    return results, warm


def main(export_dir: str, cases_path: str, result_path: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    blocker = _ImportBlocker()
    sys.meta_path.insert(0, blocker)

    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    imports_before_load = len(blocker.attempts)
    loaded = tf.saved_model.load(export_dir)
    with open(cases_path) as f:
        cases = json.load(f)

    results = {}
    for case in cases:
        fn = loaded.signatures[case["signature"]]
        inputs = {
            key: tf.constant(np.load(path, allow_pickle=False))
            for key, path in case["inputs"].items()
        }
        try:
            out = fn(**inputs)["probability"].numpy()
        except Exception as e:  # noqa: BLE001 - the class and message are the result
            results[case["name"]] = {"error": type(e).__name__, "message": str(e)[:2000]}
            continue
        results[case["name"]] = _case_entry(np, out, case)

    warm = []
    warmup_path = os.path.join(export_dir, "assets.extra", "tf_serving_warmup_requests")
    for record in tf.data.TFRecordDataset(warmup_path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        out = loaded.signatures[request.model_spec.signature_name](**inputs)["probability"]
        batch = next(iter(inputs.values())).shape[0]
        warm.append(
            {
                "signature": request.model_spec.signature_name,
                "batch": int(batch),
                "shape": out.shape.as_list(),
                "finite": bool(np.all(np.isfinite(out.numpy()))),
            }
        )

    session_results, session_warm = _run_in_session(tf, np, export_dir, cases, warmup_path)
    report = {
        "signatures": sorted(loaded.signatures.keys()),
        "cases": results,
        "warmup": warm,
        "session_cases": session_results,
        "session_warmup": session_warm,
        "forbidden_modules": _forbidden_modules(),
        "blocked_imports_while_serving": blocker.attempts[imports_before_load:],
    }
    with open(result_path, "w") as f:
        json.dump(report, f, indent=1)
    assert not report["forbidden_modules"], report["forbidden_modules"]
    assert not report["blocked_imports_while_serving"], report["blocked_imports_while_serving"]


if __name__ == "__main__":
    main(*sys.argv[1:4])
