"""A PNG of train/test loss, accuracy and AUC against iterations, written at a run's end."""

from __future__ import annotations

import logging


def plot_history(history: list[dict], path: str) -> str | None:
    """Writes the plot to ``path``; returns it, or None if matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.warning("matplotlib is not installed: no training plot (pip install matplotlib)")
        return None
    train = [h for h in history if "train_loss" in h]
    test = [h for h in history if "test" in h]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (key, title) in zip(
        axes, [("loss", "loss"), ("accuracy", "accuracy"), ("auc", "AUC")], strict=True
    ):
        if train and key != "auc":
            ax.plot([h["step"] for h in train], [h[f"train_{key}"] for h in train], label="train")
        if test:
            ax.plot([h["step"] for h in test], [h["test"][key] for h in test], "o-", label="test")
        ax.set_xlabel("iteration")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
