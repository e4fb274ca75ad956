"""Shared pytest setup: quiet TensorFlow logs, two logical CPU devices for mirrored tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
