"""Overfitting checks, as pure functions of per-epoch curves: each run's generalization gap and a
verdict that agrees with its curves, and which hyperparameters go with the gap (over judged runs only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mnist_lab.report.runs import Study

MIN_JUDGED_EPOCHS = 3  # fewer epochs show no trend to judge (a pruned trial, a 2-epoch run)
UNJUDGED = ("too short to tell", "no epochs")  # verdicts that judge nothing
OVERFIT_PATIENCE = 2  # epochs of getting worse on validation while training gets better that count as overfitting
IMPROVING_SLOPE = 0.005  # training accuracy still rising this much per epoch at the end: not done learning


def fit_checks(h: pd.DataFrame) -> dict[str, Any]:
    """Generalization gap and over/underfitting verdict of one run's per-epoch history.

    Overfitting: after its best epoch, validation got worse for at least OVERFIT_PATIENCE epochs
    (validation loss rising, or validation accuracy below its best) while training kept getting
    better, and validation loss ended above its minimum. Still improving: validation accuracy is at its best in the last epoch and training
    accuracy still rises fast; more epochs may help. Runs under MIN_JUDGED_EPOCHS are not judged.
    """
    if not h.epoch.is_monotonic_increasing:
        h = h.sort_values("epoch")
    if h.val_accuracy.isna().any():
        h = h[h.val_accuracy.notna()]
    if h.empty:
        return {"verdict": "no epochs"}
    epoch, acc, val_acc = h.epoch.to_numpy(), h.accuracy.to_numpy(), h.val_accuracy.to_numpy()
    losses, val_losses = h.loss.to_numpy(), h.val_loss.to_numpy()
    b = int(np.argmax(val_acc))
    i = int(np.argmin(val_losses))
    out = {
        "best_epoch": int(epoch[b]),
        "gap_best": acc[b] - val_acc[b],  # training minus validation accuracy
        "gap_last": acc[-1] - val_acc[-1],
        "loss_gap_best": val_losses[b] - losses[b],  # validation minus training loss
        "loss_gap_last": val_losses[-1] - losses[-1],
        "min_val_loss_epoch": int(epoch[i]),
        "overfit_from": None,
    }
    if len(h) < MIN_JUDGED_EPOCHS:
        return out | {"verdict": "too short to tell"}
    loss_rising = [j for j in range(i + 1, len(h)) if val_losses[j] > val_losses[j - 1] and losses[j] < losses[j - 1]]
    if len(loss_rising) >= OVERFIT_PATIENCE and val_losses[-1] > val_losses[i]:
        out["overfit_from"] = int(epoch[i]) + 1
    # Every epoch after the best one scored below it, training accuracy rose all the while, and
    # validation loss ended above its minimum (both validation measures agree).
    after_best = len(h) - 1 - b
    if (out["overfit_from"] is None and after_best >= OVERFIT_PATIENCE and (np.diff(acc[b:]) > 0).all()
            and val_losses[-1] > val_losses[i]):
        out["overfit_from"] = int(epoch[b]) + 1
    if out["overfit_from"]:
        verdict = f"overfitting from epoch {out['overfit_from']}"
    elif b == len(h) - 1 and acc[-1] - acc[-2] > IMPROVING_SLOPE:
        verdict = "still improving: more epochs may help"
    else:
        verdict = "good fit"
    return out | {"verdict": verdict}


def fit_table(study: Study) -> pd.DataFrame:
    rows = []
    for run_id, h in study.history.groupby("run_id"):
        rows.append({"run_id": run_id, **fit_checks(h)})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = study.runs[["run_id", "trial", "state"]].merge(table, on="run_id", how="right").sort_values("trial")
    first = ["run_id", "trial", "state", "verdict"]  # the verdict before the numbers behind it
    return table[first + [c for c in table.columns if c not in first]]


def judged(fits: pd.DataFrame) -> pd.DataFrame:
    """The runs long enough to have a verdict."""
    return fits[~fits.verdict.isin(UNJUDGED)] if "verdict" in fits else fits.iloc[:0]


def gap_correlations(study: Study, fits: pd.DataFrame) -> pd.DataFrame:
    """Spearman's rho between each searched hyperparameter and the last epoch's accuracy gap, over the
    judged runs only: a run stopped after an eighth of an epoch has a gap that says how fast it
    learns, not whether it overfits."""
    from scipy import stats

    fits = judged(fits)
    if fits.empty or "gap_last" not in fits:
        return pd.DataFrame()
    merged = fits.merge(study.runs, on=["run_id", "trial", "state"])
    rows = []
    for key in study.searched:
        if f"params.{key}" not in merged:
            continue
        # MLflow logs a boolean as "True"/"False": ranked as 1/0, so batch norm gets its correlation too.
        x = pd.to_numeric(merged[f"params.{key}"].replace({"True": 1, "False": 0}), errors="coerce")
        ok = x.notna() & merged.gap_last.notna()
        if ok.sum() >= 4 and x[ok].nunique() > 1:
            rho, p = stats.spearmanr(x[ok], merged.gap_last[ok])
            rows.append({"hyperparameter": key, "Spearman rho with the gap": round(rho, 2), "p": round(p, 3), "runs": int(ok.sum())})
    return pd.DataFrame(rows).sort_values("p") if rows else pd.DataFrame()
