"""C++ CPU kernels, built on first use (see ``build``): the embedding tables' hot loops, the dot
interaction, and the converter's parsing of clean Criteo lines (``criteo_lines.cc``)."""
