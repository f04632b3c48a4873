"""The report's figures: curves of many runs, hyperparameter effects, parallel coordinates,
optimisation history and studies side by side, as base64 PNGs for its self-contained page.
(The figures logged with each run are in mnist_lab/plots.py.) Seaborn is imported where it is used.
"""

from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")  # headless: CI has no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mnist_lab.report.analysis import MIN_TREND_POINTS, label, range_position, ranked, value_text
from mnist_lab.report.runs import Study
from mnist_lab.sweep.space import ChoiceParam


def png(fig) -> str:
    buffer = io.BytesIO()
    # No bbox_inches="tight": it draws every figure twice; each figure lays itself out instead.
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def curves_overlay(study: Study, top: pd.DataFrame) -> str:
    import seaborn as sns

    h = study.history.merge(top[["run_id"]].assign(label=[label(r) for _, r in top.iterrows()]), on="run_id")
    h["label"] = pd.Categorical(h.label, categories=[label(r) for _, r in top.iterrows()])
    h = h.sort_values(["label", "epoch"])
    h["label"] = h.label.astype(str)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        long = h.melt(id_vars=["label", "epoch"], value_vars=[metric, f"val_{metric}"], var_name="split", value_name="value")
        long["split"] = long.split.map({metric: "training", f"val_{metric}": "validation"})
        sns.lineplot(long, x="epoch", y="value", hue="label", style="split", markers=True, ax=ax,
                     hue_order=list(dict.fromkeys(h.label)), dashes={"training": (1, 0), "validation": (4, 2)})
        ax.set_ylabel(metric)
        ax.set_title(f"{metric}: training (solid) vs validation (dashed)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # Beside the plots, not over the curves.
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    axes[0].get_legend().remove()
    fig.tight_layout()
    return png(fig)


def curves_grid(study: Study, runs: pd.DataFrame) -> str:
    labels = {r.run_id: label(r) for _, r in runs.iterrows()}
    groups = dict(list(study.history[study.history.run_id.isin(labels)].groupby("run_id")))
    order = [run_id for run_id in labels if run_id in groups]
    cols = 6
    rows = math.ceil(len(order) / cols)
    # One x and one y scale for all: panels are compared at a glance, not read one by one.
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 1.9 * rows + 0.4), squeeze=False, sharex=True, sharey=True)
    for ax in axes.flat[len(order):]:
        ax.axis("off")
    for ax, run_id in zip(axes.flat, order):
        h = groups[run_id]
        ax.plot(h.epoch, h.accuracy, "o-", ms=3, label="training")
        ax.plot(h.epoch, h.val_accuracy, "o--", ms=3, label="validation")
        ax.set_title(labels[run_id], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # Above the panels, not over a panel's points.
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="upper center", ncol=2, fontsize=8, frameon=False)
    fig.supxlabel("epoch", fontsize=9)
    fig.supylabel("accuracy", fontsize=9)
    # Fixed margins: tight_layout measures every tick label of every panel (2-3 s for 24 panels).
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.45 / height + 0.02, top=1 - 0.55 / height, hspace=0.45, wspace=0.12)
    return png(fig)


def axis_plots(study: Study) -> str | None:
    import seaborn as sns

    col = f"metrics.{study.objective}"
    keys = [k for k in study.searched if f"params.{k}" in study.runs]
    done = study.runs[study.runs.state == "COMPLETE"].dropna(subset=[col]) if col in study.runs else pd.DataFrame()
    if not keys or done.empty:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.1 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    for ax, key in zip(axes.flat, keys):
        x = pd.to_numeric(done[f"params.{key}"], errors="coerce")
        p = study.space.params[key]
        if isinstance(p, ChoiceParam) or x.isna().any():
            # Ordered choices in their order (kernel 3, 5, 7), each one shown even if no complete trial drew it.
            sns.stripplot(x=done[f"params.{key}"].map(value_text), y=done[col], ax=ax, size=6, order=choice_order(p))
        else:
            sns.scatterplot(x=x, y=done[col], ax=ax, s=40)
            if getattr(p, "log", False):
                ax.set_xscale("log")
            ax.axvspan(p.low, p.high, color="0.93", zorder=-1)
        ax.set(xlabel=key, ylabel=study.objective)
    fig.tight_layout()
    return png(fig)


def choice_order(p) -> list[str] | None:
    if not isinstance(p, ChoiceParam):
        return None
    numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in p.choices)
    return [value_text(c) for c in (sorted(p.choices) if numeric else p.choices)]


def gap_plot(study: Study, fits: pd.DataFrame) -> str | None:
    import seaborn as sns

    keys = [k for k in study.searched if f"params.{k}" in study.runs]
    if fits.empty or not keys or "gap_last" not in fits:
        return None
    merged = fits.merge(study.runs[["run_id", *[f"params.{k}" for k in keys]]], on="run_id")
    keys = [k for k in keys if pd.to_numeric(merged[f"params.{k}"], errors="coerce").notna().all()][:6]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3), squeeze=False)
    pad = max(0.01, 0.1 * float(merged.gap_last.max() - merged.gap_last.min()))
    for ax, key in zip(axes.flat, keys):
        x = pd.to_numeric(merged[f"params.{key}"])
        # A fitted line and its band over a few points say more than the points do (and stretch the axis).
        if len(merged) >= MIN_TREND_POINTS and x.nunique() > 2:
            sns.regplot(x=x, y=merged.gap_last, ax=ax, scatter_kws={"s": 25}, ci=None)
        else:
            sns.scatterplot(x=x, y=merged.gap_last, ax=ax, s=30)
        ax.set_ylim(merged.gap_last.min() - pad, merged.gap_last.max() + pad)
        ax.set(xlabel=key, ylabel="accuracy gap, last epoch")
    fig.tight_layout()
    return png(fig)


def parallel_coordinates(study: Study) -> str | None:
    col = f"metrics.{study.objective}"
    keys = [k for k in study.searched if f"params.{k}" in study.runs]
    done = study.runs[study.runs.state == "COMPLETE"].dropna(subset=[col]) if col in study.runs else pd.DataFrame()
    if len(keys) < 2 or len(done) < 2:
        return None
    params = study.space.params
    frame = pd.DataFrame({k: done[f"params.{k}"].map(lambda v, p=params[k]: range_position(v, p)) for k in keys})
    keys = [k for k in keys if frame[k].notna().all()]
    frame = frame[keys]
    frame[study.objective] = done[col].to_numpy()
    fig, ax = plt.subplots(figsize=(12, 4.2))
    cmap = plt.get_cmap("viridis")
    lo, hi = frame[study.objective].min(), frame[study.objective].max()
    from matplotlib.collections import LineCollection

    ordered = frame.sort_values(study.objective, ascending=study.maximize)
    xs = np.arange(len(keys))
    lines = [np.column_stack([xs, y]) for y in ordered[keys].to_numpy()]
    shade = (ordered[study.objective].to_numpy() - lo) / ((hi - lo) or 1)
    ax.add_collection(LineCollection(lines, colors=cmap(shade if study.maximize else 1 - shade), alpha=0.8))
    # Each axis is the searched range itself: its real values are written on it.
    for x, key in zip(xs, keys):
        p = params[key]
        ax.axvline(x, color="0.75", lw=0.8, zorder=0)
        if isinstance(p, ChoiceParam):
            marks = [(i / max(1, len(p.choices) - 1), c) for i, c in enumerate(p.choices)]
        else:
            marks = [(0.0, p.low), (1.0, p.high)]
            if getattr(p, "log", False):
                marks.insert(1, (0.5, math.sqrt(p.low * p.high)))
            else:
                marks.insert(1, (0.5, (p.low + p.high) / 2))
        for y, value in marks:
            ax.text(x + 0.03, y, value_text(value), fontsize=7, va="center", color="0.3")
    ax.set_xlim(-0.2, len(xs) - 0.5)
    ax.set_ylim(-0.05, 1.05)
    ax.set_yticks([])
    # Right-aligned at the tick, so long neighbouring names (kernel_size, dense.0) run parallel, not across each other.
    ax.set_xticks(xs, [k.split(".", 1)[-1] for k in keys], rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_ylabel("searched range (low end at the bottom)")
    fig.colorbar(plt.cm.ScalarMappable(norm=plt.Normalize(lo, hi), cmap=cmap), ax=ax, label=study.objective)
    fig.tight_layout()
    return png(fig)


def pareto_plot(study: Study) -> str | None:
    if not study.space or not study.space.multi_objective:
        return None
    a, b = (o.metric for o in study.space.objective[:2])
    done = study.runs[study.runs.state == "COMPLETE"].dropna(subset=[f"metrics.{a}", f"metrics.{b}"]) if f"metrics.{b}" in study.runs else None
    if done is None or done.empty:
        return None
    ways = [o.way for o in study.space.objective[:2]]
    pts = done[[f"metrics.{a}", f"metrics.{b}"]].to_numpy()
    sign = np.array([1 if w == "maximize" else -1 for w in ways])
    front = [i for i, p in enumerate(pts) if not any(((q * sign >= p * sign).all() and (q * sign > p * sign).any()) for q in pts)]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(pts[:, 1], pts[:, 0], color="0.6", label="trials")
    f = pts[sorted(front, key=lambda i: pts[i, 1])]
    ax.plot(f[:, 1], f[:, 0], "o-", color="crimson", label="Pareto front")
    ax.set(xlabel=b, ylabel=a, title="Pareto front")
    ax.legend()
    return png(fig)


def history_plot(study: Study) -> str | None:
    """Optimisation history: each trial's score and the best so far, against trials and against compute."""
    col = f"metrics.{study.objective}"
    if col not in study.runs or study.runs[col].isna().all():
        return None
    r = study.runs.sort_values("start_time") if "start_time" in study.runs else study.runs
    epochs = study.history.groupby("run_id").epoch.max() if len(study.history) else pd.Series(dtype=float)
    compute = r.run_id.map(epochs).fillna(0).cumsum().to_numpy()
    values = r[col].to_numpy(dtype=float)
    complete = (r.state == "COMPLETE").to_numpy()
    best = pd.Series(np.where(complete, values, np.nan))
    best = (best.cummax() if study.maximize else best.cummin()).ffill().to_numpy()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), sharey=True)
    for ax, x, xlabel in ((axes[0], np.arange(1, len(r) + 1), "trials started"), (axes[1], compute, "compute spent (training epochs)")):
        ax.scatter(x[complete], values[complete], s=22, color="#3056d3", label="complete trial", zorder=3)
        pruned = (r.state == "PRUNED").to_numpy()
        ax.scatter(x[pruned], values[pruned], s=22, marker="x", color="0.55", label="pruned (its last score)", zorder=3)
        ax.step(x, best, where="post", color="crimson", label="best so far")
        ax.set(xlabel=xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel(study.objective)
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.tight_layout()
    return png(fig)


def images_seen(study: Study) -> pd.Series:
    """run id -> training images per epoch: epochs of different studies are not the same amount of training."""
    return pd.to_numeric(study.runs.set_index("run_id").get("params.train_images", pd.Series(dtype=float)), errors="coerce")


def compare_plot(studies: list[Study]) -> str | None:
    """Best so far against compute, every study on the same axes: training images seen and seconds."""
    import seaborn as sns

    if len(studies) < 2:
        return None
    rows = []
    for s in studies:
        r = s.runs.sort_values("start_time") if "start_time" in s.runs else s.runs
        col = f"metrics.{s.objective}"
        images = r.run_id.map(s.history.groupby("run_id").epoch.max()).fillna(0) * r.run_id.map(images_seen(s)).fillna(0)
        seconds = r.get("metrics.train_seconds", pd.Series(0.0, index=r.index)).fillna(0)
        values = r[col] if col in r else pd.Series(np.nan, index=r.index)
        best = values.where(r.state == "COMPLETE").cummax() if s.maximize else values.where(r.state == "COMPLETE").cummin()
        rows.append(pd.DataFrame({"study": s.name, "images": images.cumsum().to_numpy(),
                                  "seconds": seconds.cumsum().to_numpy(), "best so far": best.ffill().to_numpy()}))
    frame = pd.concat(rows)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
    for ax, x in zip(axes, ("images", "seconds")):
        sns.lineplot(frame, x=x, y="best so far", hue="study", drawstyle="steps-post", marker="o", ax=ax)
        ax.set(xlabel=f"compute spent ({'training images seen' if x == 'images' else 'training seconds'})",
               ylabel=f"best {studies[0].objective} so far")
    fig.tight_layout()
    return png(fig)


def compare_curves(studies: list[Study], top: int = 3) -> str | None:
    """The top complete trials of every study, validation accuracy and loss against training images
    seen, on shared axes: one colour per study."""
    import seaborn as sns

    rows = []
    for s in studies:
        best = top_complete(s, top)
        per_epoch = images_seen(s)
        h = s.history[s.history.run_id.isin(best)].copy()
        if h.empty:
            continue
        h["images"] = h.epoch * h.run_id.map(per_epoch)
        h["study"], h["trial"] = s.name, h.run_id.map(best)
        rows.append(h)
    if len(rows) < 2:
        return None
    frame = pd.concat(rows, ignore_index=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for ax, metric in zip(axes, ("val_accuracy", "val_loss")):
        sns.lineplot(frame, x="images", y=metric, hue="study", units="trial", estimator=None, marker="o", ax=ax, alpha=0.8)
        ax.set(xlabel="training images seen")
    axes[0].set_title(f"top {top} complete trials of each study")
    fig.tight_layout()
    return png(fig)


def top_complete(study: Study, top: int) -> dict[str, str]:
    """run id -> label of the study's `top` best complete trials."""
    best = ranked(study)
    best = best[best.state == "COMPLETE"].head(top)
    return {r.run_id: f"{study.name} {label(r)}" for _, r in best.iterrows()}
