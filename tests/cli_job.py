"""Runs the CLI's job in a subprocess of a test, then saves the trained weights.

Usage: python tests/cli_job.py OUT.npz --flag=value ...

Beside ``OUT.npz`` it writes ``OUT.npz.devices.json``: for each trained weight and
each optimizer slot of the model as trained, its path, its bytes and the devices
holding a copy of it (``OUT.npz`` holds the one-device model the run wrote).
"""

import json
import sys

import numpy as np
import tensorflow as tf
from absl import flags

from dlrm_tf import main as main_module


def devices_of(variable) -> list[str]:
    tf_variable = getattr(variable, "value", variable)
    if isinstance(tf_variable, tf.distribute.DistributedValues):
        components = tf_variable._values  # noqa: SLF001  (one per device)
        return [c.device.split("/device:")[-1] for c in components]
    return [tf_variable.device.split("/device:")[-1]]


def run() -> None:
    out = sys.argv[1]
    flags.FLAGS([sys.argv[0], *sys.argv[2:]])
    result = main_module.execute()
    np.savez(out, *[w.numpy() for w in result.model.weights], steps=result.steps)
    trained = result.training_model or result.model  # where the run kept its variables
    optimizer = trained.optimizer
    slots = [v for v in optimizer.variables if len(v.shape) >= 1 and v.dtype == "float32"]
    placed = [
        {"path": v.path, "bytes": 4 * int(np.prod(v.shape)), "devices": devices_of(v)}
        for v in [*trained.trainable_weights, *slots]
    ]
    with open(out + ".devices.json", "w") as f:
        json.dump(placed, f)


if __name__ == "__main__":
    run()
