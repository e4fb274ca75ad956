"""The DLRM model: layers, the model, optimizers, losses, schedules, model files, init."""
