"""Training curves as PNG (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def plot_curves(history: list[dict], path: Path, keys: tuple[str, ...], title: str) -> None:
    """One line per key over epochs (e.g. train/valid accuracy), saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    epochs = [row["epoch"] for row in history]
    for key in keys:
        ax.plot(epochs, [row[key] for row in history], marker="o", markersize=3, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
