"""C++ CPU kernels for the embedding tables' hot loops, built on first use (see ``build``)."""
