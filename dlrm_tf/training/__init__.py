"""Training a DLRM: trainer, callbacks, data sources, checkpoints, evaluation, devices."""
