"""A fused dot interaction: the bottom-MLP output, then the features' pairwise dot products.

``dot_interaction(x, embeddings)`` is ``DotInteraction``'s output,
``concat(x, pairs)`` with the pairs in the reference's order, computed example by
example without the ``[B, F, F]`` Gram matrix and the gather of its lower
triangle; its gradient is a kernel of its own. Float32 on the CPU only, and in
training steps only: a SavedModel must not contain it (TF Serving has no such op).
"""

from __future__ import annotations

import tensorflow as tf

from dlrm_tf.kernels import build

_NAME = "interaction"


def _ops():
    return build.load(_NAME)


def usable(x: tf.Tensor) -> bool:
    """Whether the kernel can compute the interaction of ``x``: built and loaded,
    ``x`` float32, and no GPU in this process (its inputs would be there)."""
    return (
        x.dtype == tf.float32 and _ops() is not None and not tf.config.list_logical_devices("GPU")
    )


def dot_interaction(x: tf.Tensor, embeddings: tf.Tensor, self_interaction: bool) -> tf.Tensor:
    """``[B, d + pairs]``: ``x`` (``[B, d]``), then ``<f_i, f_j>`` for ``j < i``
    (``j <= i`` with ``self_interaction``) over ``f = (x, embeddings[:, 0], ...)``."""
    return _ops().dlrm_dot_interaction(x, embeddings, self_interaction=self_interaction)


@tf.RegisterGradient("DlrmDotInteraction")
def _dot_interaction_gradient(op: tf.Operation, grad: tf.Tensor):
    return _ops().dlrm_dot_interaction_grad(
        op.inputs[0], op.inputs[1], grad, self_interaction=op.get_attr("self_interaction")
    )
