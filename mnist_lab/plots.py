"""The figures logged with every run: learning curves, the validation confusion matrix and the
most confident misclassified digits.

Plain matplotlib on purpose: they are drawn for every run and sweep trial, so each costs tens of
milliseconds, not the second that seaborn's import and facet machinery cost. The report's own
figures (many runs at once) are in mnist_lab/report/figures.py.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: CI and workers have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SPLIT_COLOURS = {"training": "#1f77b4", "validation": "#ff7f0e"}


def learning_curves(history: dict[str, list[float]], title: str = "") -> plt.Figure:
    """Training against validation loss and accuracy per epoch (1-based)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for split, key in (("training", metric), ("validation", f"val_{metric}")):
            values = history.get(key, [])
            ax.plot(range(1, len(values) + 1), values, marker="o", color=SPLIT_COLOURS[split], label=split)
        ax.set(title=metric, xlabel="epoch", ylabel=metric)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, title: str = "validation") -> plt.Figure:
    counts = np.zeros((10, 10), dtype=int)
    np.add.at(counts, (y_true, y_pred), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.imshow(counts, cmap="Blues", norm=matplotlib.colors.PowerNorm(0.3))
    threshold = counts.max() / 2
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=8, color="white" if n > threshold else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true",
           title=f"confusion matrix ({title}, {len(y_true):,} images)")
    fig.tight_layout()
    return fig


def misclassified_grid(images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, limit: int = 36) -> plt.Figure:
    """The most confident mistakes first, as one montage image (one Axes, so it draws fast)."""
    wrong_all = np.flatnonzero(y_true != y_pred)
    wrong = wrong_all[np.argsort(-probs[wrong_all, y_pred[wrong_all]])][:limit]
    cols, side, pad = 9, 28, 14  # pad: room for each digit's caption, pixels
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    canvas = np.zeros((rows * (side + pad), cols * side + (cols - 1) * 4), dtype=np.float32)
    fig, ax = plt.subplots(figsize=(cols * 1.2, rows * 1.45 + 0.4))
    for k, i in enumerate(wrong):
        r, c = divmod(k, cols)
        top, left = r * (side + pad) + pad, c * (side + 4)
        canvas[top:top + side, left:left + side] = images[i] / 255.0
        ax.text(left + side / 2, top - 2, f"{y_true[i]}→{y_pred[i]} {probs[i, y_pred[i]]:.0%}",
                ha="center", va="bottom", fontsize=8, color="crimson")
    ax.imshow(canvas, cmap="gray_r", interpolation="nearest")
    ax.axis("off")
    ax.set_title(f"misclassified validation digits ({len(wrong_all)} in all; true→predicted)", fontsize=9)
    fig.tight_layout()
    return fig
