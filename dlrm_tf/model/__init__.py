"""The DLRM model: layers, the model, its optimizers, losses and learning-rate schedules."""
