"""DLRM (Deep Learning Recommendation Model) in TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
