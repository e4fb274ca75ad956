"""A PNG of train/test loss, accuracy and AUC against iterations, written at a run's end."""

from __future__ import annotations

import logging

LOSS_NAMES = {
    "bce": "binary cross-entropy",
    "wbce": "weighted binary cross-entropy",
    "mse": "mean squared error",
}


def plot_history(
    history: list[dict],
    path: str,
    title: str = "",
    loss_name: str = "",
    print_freq: int = 0,
) -> str | None:
    """Writes the plot to ``path``; returns it, or None if matplotlib is not installed.

    ``history`` holds the run's records (``history.json``). A training window shorter
    than ``print_freq`` iterations (an epoch's last, partial one) is drawn as a hollow
    marker off the train curve: its mean over a few iterations is noisier than the
    others and would otherwise look like a jump. Without test records the AUC panel is
    left out and the title says so.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.warning("matplotlib is not installed: no training plot (pip install matplotlib)")
        return None
    fig = render_history(history, title, loss_name, print_freq)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render_history(history: list[dict], title: str = "", loss_name: str = "", print_freq: int = 0):
    """The plot's matplotlib figure (``plot_history`` without the file)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    train = [h for h in history if "train_loss" in h]
    test = [h for h in history if "test" in h]
    panels = [("loss", _loss_label(loss_name), 1.0), ("accuracy", "accuracy (%)", 100.0)]
    if test:
        panels.append(("auc", "test ROC AUC", 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.3), squeeze=False)
    for ax, (key, ylabel, scale) in zip(axes[0], panels, strict=True):
        if key != "auc":
            _plot_train(ax, train, key, scale, print_freq)
        if test:
            ax.plot(
                [h["step"] for h in test],
                [h["test"][key] * scale for h in test],
                "o-",
                color="tab:orange",
                label="test (whole test split)",
            )
        ax.set_xlabel("iteration (global step)")
        ax.set_ylabel(ylabel)
        ax.set_title("test AUC" if key == "auc" else key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    heading = title or "training run"
    if not test:
        heading += "\n(no test run: train curves only)"
    fig.suptitle(heading, fontsize=9)
    fig.tight_layout()
    return fig


def _loss_label(loss_name: str) -> str:
    name = LOSS_NAMES.get(loss_name, loss_name)
    return f"loss ({name})" if name else "loss"


def _plot_train(ax, train: list[dict], key: str, scale: float, print_freq: int) -> None:
    """The train curve over full windows; partial windows as hollow markers beside it."""
    full = [h for h in train if not _partial(h, print_freq)]
    partial = [h for h in train if _partial(h, print_freq)]
    if not full:  # every window is short (fewer iterations than --print_freq): no outlier
        full, partial = train, []
    if full:
        sizes = {int(h.get("iterations", 0)) for h in full}
        n = sizes.pop() if len(sizes) == 1 else 0
        label = f"train (mean over {n} its)" if n > 1 else "train"
        ax.plot(
            [h["step"] for h in full],
            [h[f"train_{key}"] * scale for h in full],
            color="tab:blue",
            label=label,
        )
    if partial:
        sizes = sorted({int(h["iterations"]) for h in partial})
        ax.plot(
            [h["step"] for h in partial],
            [h[f"train_{key}"] * scale for h in partial],
            "o",
            markerfacecolor="none",
            color="tab:blue",
            label=f"train, partial window ({'/'.join(map(str, sizes))} its)",
        )


def _partial(record: dict, print_freq: int) -> bool:
    return print_freq > 1 and 0 < int(record.get("iterations", print_freq)) < print_freq
