"""Runs a SavedModel the way TF Serving does: the session-based loader.

TF Serving's C++ ``LoadSavedModel`` imports the MetaGraph tagged ``serve`` into a
graph, restores the variables from ``variables/`` with the graph's saver, runs
the init op (lookup tables, assets), then feeds and fetches the tensors a
``SignatureDef`` names in a ``Session``. ``tf.compat.v1.saved_model.loader.load``
does the same from Python. An export can pass ``tf.saved_model.load`` (which
rebuilds Python objects) and still fail here, so the exporter checks every
version through this path before publishing it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from tensorflow.python.util import deprecation

SERVE_TAG = "serve"


class ServingSession:
    """A SavedModel loaded into a TF1 ``Session`` by its ``serve`` MetaGraph.

    Use as a context manager (the session is closed on exit)::

        with ServingSession(path) as served:
            probability = served.run("serving_default", inputs)["probability"]
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        try:
            # The TF1 loader is deprecated for users, but it is TF Serving's path.
            with deprecation.silence():
                self.meta_graph = tf.compat.v1.saved_model.loader.load(
                    self._session, [SERVE_TAG], os.fspath(path)
                )
        except BaseException:
            self._session.close()
            raise

    def __enter__(self) -> ServingSession:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Releases the session and its variables."""
        self._session.close()

    @property
    def signature_names(self) -> list[str]:
        """The servable signatures (without the internal init-op entry)."""
        return sorted(k for k in self.meta_graph.signature_def if not k.startswith("__"))

    def run(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feeds ``inputs`` (by the signature's input names) and fetches every output.

        Raises:
          KeyError: the signature, or one of its inputs, is not in ``inputs``.
          tf.errors.OpError: the graph rejects the request (e.g. ``InvalidArgumentError``).
        """
        spec = self.meta_graph.signature_def[signature]
        missing = sorted(set(spec.inputs) - set(inputs))
        if missing:
            raise KeyError(f"signature {signature!r} needs inputs {missing}")
        feed = {spec.inputs[k].name: np.asarray(v) for k, v in inputs.items()}
        names = sorted(spec.outputs)
        values = self._session.run([spec.outputs[k].name for k in names], feed)
        return dict(zip(names, values, strict=True))
