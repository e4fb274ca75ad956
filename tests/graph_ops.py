"""What ops a traced function's graph holds: the tests of which kernels a step uses."""

import tensorflow as tf


def graph_op_types(function, *specs) -> set[str]:
    """The op types of ``function`` traced with ``specs`` (tensors or ``TensorSpec``\\ s)."""
    graph = tf.function(function).get_concrete_function(*specs).graph
    return {op.type for op in graph.get_operations()}
