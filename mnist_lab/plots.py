"""Figures logged with every run: learning curves, confusion matrix, misclassified digits."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: CI and workers have no display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns


def learning_curves(history: dict[str, list[float]], title: str = "") -> plt.Figure:
    """Training against validation loss and accuracy per epoch (1-based)."""
    rows = []
    for metric in ("loss", "accuracy"):
        for split, key in (("training", metric), ("validation", f"val_{metric}")):
            for epoch, value in enumerate(history.get(key, []), start=1):
                rows.append({"epoch": epoch, "metric": metric, "split": split, "value": value})
    frame = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        sns.lineplot(frame[frame.metric == metric], x="epoch", y="value", hue="split", marker="o", ax=ax)
        ax.set(title=metric, ylabel=metric)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, title: str = "validation") -> plt.Figure:
    counts = pd.crosstab(
        pd.Categorical(y_true, categories=range(10)), pd.Categorical(y_pred, categories=range(10)), dropna=False
    )
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    sns.heatmap(counts, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax, annot_kws={"size": 8})
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix ({title}, {len(y_true):,} images)")
    fig.tight_layout()
    return fig


def misclassified_grid(images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, limit: int = 36) -> plt.Figure:
    wrong = np.flatnonzero(y_true != y_pred)
    # The most confident mistakes first: they are the ones worth looking at.
    wrong = wrong[np.argsort(-probs[wrong, y_pred[wrong]])][:limit]
    cols = 9
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.45), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"{y_true[i]}→{y_pred[i]} {probs[i, y_pred[i]]:.0%}", fontsize=8, color="crimson")
    fig.suptitle(f"misclassified validation digits ({len(np.flatnonzero(y_true != y_pred))} in all; true→predicted)", fontsize=9)
    fig.tight_layout()
    return fig
