"""Training a DLRM: trainer, callbacks, data sources, backups, evaluation, devices."""
