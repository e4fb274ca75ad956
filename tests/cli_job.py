"""Runs the CLI's job in a subprocess of a test, then saves the trained weights.

Usage: python tests/cli_job.py OUT.npz --flag=value ...
"""

import sys

import numpy as np
from absl import flags

from dlrm_tf import main as main_module


def run() -> None:
    out = sys.argv[1]
    flags.FLAGS([sys.argv[0], *sys.argv[2:]])
    result = main_module.execute()
    np.savez(out, *[w.numpy() for w in result.model.weights], steps=result.steps)


if __name__ == "__main__":
    run()
