"""What a study's runs say, as pure functions of the frames `runs.load_study` reads: fit verdicts,
edge warnings, importances, confirmation statistics, rankings, the leaderboard and the summary.
Nothing here reads MLflow or draws; `figures` draws, `report` assembles the page.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mnist_lab.report.runs import Study
from mnist_lab.stats import ALPHA, is_incumbent, mean_ci, welch_greater, welch_two_sided
from mnist_lab.sweep.space import ChoiceParam, distributions

UNJUDGED = ("too short to tell", "no epochs")  # verdicts that judge nothing
MIN_TREND_POINTS = 8  # fewer points get no fitted trend line
MIN_IMPORTANCE_TRIALS = 20  # below this, importances are flagged as rough
OVERFIT_PATIENCE = 2  # epochs of rising val_loss (with falling training loss) that count as overfitting
UNDERFIT_SLOPE = 0.005  # training accuracy still rising this much per epoch at the end: not done learning


def fit_checks(h: pd.DataFrame) -> dict[str, Any]:
    """Generalization gap and over/underfitting verdict of one run's per-epoch history."""
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
        "underfit": False,
    }
    rising = [j for j in range(i + 1, len(h)) if val_losses[j] > val_losses[j - 1] and losses[j] < losses[j - 1]]
    # Overfitting: after its minimum, val_loss rose for >= 2 epochs while training loss kept falling.
    if len(rising) >= OVERFIT_PATIENCE and val_losses[-1] > val_losses[i]:
        out["overfit_from"] = int(epoch[i]) + 1
    if len(h) >= 2 and acc[-1] - acc[-2] > UNDERFIT_SLOPE and out["overfit_from"] is None:
        out["underfit"] = True
    if out["overfit_from"]:
        out["verdict"] = f"overfitting from epoch {out['overfit_from']}"
    elif out["underfit"]:
        out["verdict"] = "underfitting: still improving"
    elif len(h) < 3:
        out["verdict"] = "too short to tell"
    else:
        out["verdict"] = "good fit"
    return out


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


def edge_warnings(study: Study, best: pd.Series) -> list[str]:
    """The playbook's warning: a best value at the edge of its range says the range was too narrow."""
    out = []
    for key, p in (study.space.params.items() if study.space else []):
        value = best.get(f"params.{key}")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if isinstance(p, ChoiceParam):
            numeric = all(isinstance(c, (int, float)) for c in p.choices)
            if numeric and len(p.choices) > 2 and str(value) in (str(min(p.choices)), str(max(p.choices))):
                out.append(f"{key} = {value} is at the edge of the choices {p.choices}")
            continue
        value = float(value)
        span = p.high - p.low
        if span and (value - p.low <= 0.05 * span or p.high - value <= 0.05 * span):
            out.append(f"{key} = {value:g} is at the edge of [{p.low:g}, {p.high:g}]: widen the range")
    return out


def importances(study: Study) -> dict[str, float]:
    """Optuna's parameter importance (PED-ANOVA in Optuna 5) over the complete trials, from MLflow alone."""
    import optuna

    complete = study.runs[study.runs.state == "COMPLETE"].dropna(subset=[f"metrics.{study.objective}"])
    if not study.space or len(complete) < 4:
        return {}
    # MLflow holds params as text: a choice is matched by its text, and the analysis sees the text.
    dists = {key: optuna.distributions.CategoricalDistribution([str(c) for c in d.choices])
             if isinstance(d, optuna.distributions.CategoricalDistribution) else d
             for key, d in distributions(study.space).items()}
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    memory = optuna.create_study(direction="maximize" if study.maximize else "minimize")
    trials = []
    for _, row in complete.iterrows():
        params = {}
        for key, d in dists.items():
            raw = row.get(f"params.{key}")
            if raw is None:
                continue
            params[key] = str(raw) if isinstance(d, optuna.distributions.CategoricalDistribution) else (
                int(float(raw)) if isinstance(d, optuna.distributions.IntDistribution) else float(raw))
        params = {k: v for k, v in params.items() if not isinstance(dists[k], optuna.distributions.CategoricalDistribution) or v in dists[k].choices}
        trials.append(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params},
                                                value=float(row[f"metrics.{study.objective}"])))
    memory.add_trials(trials)
    try:
        return optuna.importance.get_param_importances(memory)
    except Exception:  # too few or too uniform trials for the evaluator
        return {}


def confirmation(study: Study) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Mean ± 95% CI per confirmed configuration, Welch's t-tests between them, plain verdicts.

    A configuration's seeds are its confirmation runs and its trial's own run, as in the
    sweep's verdict (which counts the trial's run as the first seed). Test accuracy is the
    configuration's one test evaluation, on its trial's run, where one was made.
    """
    c = study.confirm
    if c.empty or "tags.source_run_id" not in c:
        return pd.DataFrame(), pd.DataFrame(), []
    c = c[c.status == "FINISHED"].copy()
    c["rank"] = c["tags.config_rank"].astype(int)
    trials = study.runs.set_index("run_id") if len(study.runs) else pd.DataFrame()
    rows, samples, labels, sweep_scores = [], {}, {}, {}
    # One configuration per source run: the sweep's confirmation and `mnist-lab confirm` add
    # seeds to the same configurations (each skips the seeds the other trained).
    for order, (source, g) in enumerate(sorted(c.groupby("tags.source_run_id"), key=lambda kv: kv[1]["rank"].min())):
        named = g.get("tags.source_label", pd.Series(dtype=str)).dropna()
        label = named.iloc[0] if len(named) else f"trial {g['tags.source_trial'].iloc[0]}"
        g = g.drop_duplicates("tags.seed")
        val = {int(seed): v for seed, v in zip(g["tags.seed"], g["metrics.val_accuracy"]) if v == v}
        if source in trials.index and trials.loc[source].get("metrics.val_accuracy") == trials.loc[source].get("metrics.val_accuracy"):
            # The trial's own run is a seed too (its train.seed, 0 unless the space sets it).
            val.setdefault(int(float(trials.loc[source].get("params.train.seed", 0) or 0)), float(trials.loc[source, "metrics.val_accuracy"]))
        test = trials.loc[source].get("metrics.test_accuracy") if source in trials.index else None
        sweep_score = trials.loc[source].get("metrics.val_accuracy") if source in trials.index else None
        row = {"configuration": label, "seeds": len(val),
               "sweep val_accuracy": f"{sweep_score:.4f}" if sweep_score == sweep_score and sweep_score is not None else ""}
        sweep_scores[order] = sweep_score if sweep_score == sweep_score else None
        mean, half = mean_ci(np.asarray(list(val.values()), dtype=float))
        row["val_accuracy"] = f"{mean:.4f} ± {half:.4f}" if len(val) > 1 else f"{mean:.4f}"
        if test is not None and test == test:
            row["test_accuracy"] = f"{test:.4f}"
        samples[order], labels[order] = np.asarray(list(val.values()), dtype=float), label
        rows.append(row)
    tests, verdicts = [], []
    ranks = sorted(samples)
    # The search ranked these by one run each; their seed means may rank them otherwise.
    scored = [k for k in ranks if sweep_scores.get(k) is not None and len(samples[k])]
    for a in scored:
        for b in scored:
            if sweep_scores[a] > sweep_scores[b] and samples[a].mean() < samples[b].mean():
                verdicts.append(f"rank reversal: {labels[a]} beat {labels[b]} in the search ({sweep_scores[a]:.4f} against "
                                f"{sweep_scores[b]:.4f}), but over seeds its mean is lower ({samples[a].mean():.4f} against "
                                f"{samples[b].mean():.4f})")
    for i, a in enumerate(ranks):
        for b in ranks[i + 1:]:
            if len(samples[a]) >= 2 and len(samples[b]) >= 2:
                row, verdict = compare_seeds(labels[a], samples[a], labels[b], samples[b])
                tests.append(row)
                verdicts.append(verdict)
    return pd.DataFrame(rows), pd.DataFrame(tests), verdicts


def compare_seeds(label_a: str, a: np.ndarray, label_b: str, b: np.ndarray) -> tuple[dict, str]:
    """Welch's t-test between two configurations' seed scores: a table row and a plain verdict.

    A trial against the baseline or the champion is judged by the sweep's own gate (one-sided: the
    question asked beforehand is "is the trial better?"), so the report never contradicts the crowning;
    two trials, with no side chosen beforehand, by the two-sided test.
    """
    t, p = welch_two_sided(a, b)
    diff = a.mean() - b.mean()
    row = {"pair": f"{label_a} vs {label_b}", "difference in val_accuracy": f"{diff:+.4f}", "Welch t": f"{t:.2f}",
           "p (two-sided)": f"{p:.3g}", "p (one-sided, the sweep's gate)": ""}
    if is_incumbent(label_a) != is_incumbent(label_b):
        (trial, x), (held, y) = ((label_a, a), (label_b, b)) if is_incumbent(label_b) else ((label_b, b), (label_a, a))
        gate = welch_greater(list(x), list(y))
        row["p (one-sided, the sweep's gate)"] = f"{gate:.3g}"
        if gate < ALPHA:
            return row, f"{trial} beats {held} on validation (one-sided p = {gate:.3g}, the sweep's gate; two-sided p = {p:.2g})"
        return row, f"{trial} does not beat {held} with confidence (one-sided p = {gate:.2f}, {len(x)} and {len(y)} seeds)"
    if p < ALPHA:
        better, worse = (label_a, label_b) if diff > 0 else (label_b, label_a)
        return row, f"{better} beats {worse} on validation (two-sided p = {p:.3g})"
    return row, f"{label_a} and {label_b} are tied within noise (two-sided p = {p:.2f}, {len(a)} and {len(b)} seeds)"


def gap_correlations(study: Study, fits: pd.DataFrame) -> pd.DataFrame:
    from scipy import stats

    if fits.empty or "gap_last" not in fits:
        return pd.DataFrame()
    merged = fits.merge(study.runs, on=["run_id", "trial", "state"])
    rows = []
    for key in study.searched:
        if f"params.{key}" not in merged:
            continue
        x = pd.to_numeric(merged[f"params.{key}"], errors="coerce")
        ok = x.notna() & merged.gap_last.notna()
        if ok.sum() >= 4 and x[ok].nunique() > 1:
            rho, p = stats.spearmanr(x[ok], merged.gap_last[ok])
            rows.append({"hyperparameter": key, "Spearman rho with the gap": round(rho, 2), "p": round(p, 3), "runs": int(ok.sum())})
    return pd.DataFrame(rows).sort_values("p") if rows else pd.DataFrame()


def range_position(value: Any, p) -> float:
    """Where `value` lies in the searched range of `p`, 0 (low end) to 1 (high end); log ranges on a log scale."""
    if isinstance(p, ChoiceParam):
        keys = [str(c) for c in p.choices]
        return keys.index(str(value)) / max(1, len(keys) - 1) if str(value) in keys else float("nan")
    v = float(value)
    if getattr(p, "log", False):
        return (math.log(v) - math.log(p.low)) / ((math.log(p.high) - math.log(p.low)) or 1)
    return (v - p.low) / ((p.high - p.low) or 1)


def value_text(value: Any) -> str:
    """A hyperparameter value as people read it: 3 significant figures (1.12e-04 and 1.21e-04 stay apart)."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if not isinstance(value, (int, float, np.integer, np.floating)):
        try:
            value = float(value) if "." in str(value) or "e" in str(value).lower() else int(value)
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, (int, np.integer)) or float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}" if abs(value) >= 10_000 else str(int(value))
    return f"{value:.3g}"


def label(row) -> str:
    trial = row.get("trial")
    name = f"trial {int(trial)}" if trial is not None and not (isinstance(trial, float) and math.isnan(trial)) else str(row.run_id)[:8]
    if row.get("state") == "PRUNED":
        name += f" (pruned@{row.get('tags.pruned_at_epoch', '?')})"
    return name


def ranked(study: Study) -> pd.DataFrame:
    col = f"metrics.{study.objective}"
    runs = study.runs.copy()
    if col not in runs:
        runs[col] = np.nan
    order = runs[runs.state.isin(["COMPLETE", "PRUNED", "FINISHED"])].sort_values(col, ascending=not study.maximize, na_position="last")
    return order


def summarize(study: Study) -> dict[str, Any]:
    runs, tags = study.runs, (study.parent.data.tags if study.parent else {})
    states = runs.state.value_counts().to_dict()
    top = ranked(study)
    best = top.iloc[0] if len(top) and not pd.isna(top.iloc[0].get(f"metrics.{study.objective}", np.nan)) else None
    epochs = int(study.history.groupby("run_id").epoch.max().sum()) if len(study.history) else 0
    commits = sorted(runs.get("tags.git_commit", pd.Series(dtype=str)).dropna().unique())
    digests = sorted(runs.get("tags.data_digest", pd.Series(dtype=str)).dropna().unique())
    warnings = []
    if len(commits) > 1:
        warnings.append(f"the compared runs come from {len(commits)} code commits: {', '.join(c[:10] for c in commits)}")
    dirty = runs.get("tags.git_dirty", pd.Series(dtype=str)).eq("true").sum()
    if dirty:
        warnings.append(f"{dirty} runs were made from a checkout with uncommitted changes")
    if len(digests) > 1:
        warnings.append(f"the compared runs were trained on {len(digests)} different data sets: {', '.join(digests)}")
    reproduce = None
    if best is not None and study.space is not None:
        values = {**study.space.fixed, **{k: best.get(f"params.{k}") for k in study.searched}}
        base = Path(tags.get("space_file", "experiments/x.yaml")).parent / (study.space.base or "")
        reproduce = f"mnist-lab train {base if study.space.base else ''} " + " ".join(f"{k}={_yaml_value(v)}" for k, v in values.items())
    return {
        "study": study.name, "space_file": tags.get("space_file", "-"), "engine": tags.get("engine", "-"),
        "sampler": tags.get("sampler", "-"), "pruner": tags.get("pruner", "-"), "objective": tags.get("objective", study.objective),
        "states": states, "runs": len(runs), "epochs": epochs,
        "train_seconds": float(runs.get("metrics.train_seconds", pd.Series(dtype=float)).sum()),
        "best": best, "best_value": None if best is None else best[f"metrics.{study.objective}"],
        "study_command": tags.get("command", "-"), "reproduce": reproduce,
        "commits": [c[:12] for c in commits], "digests": digests, "warnings": warnings,
        "parent_run_id": study.parent.info.run_id if study.parent else None,
        # The sweep's own verdict (its confirmation over seeds) and why its search stopped.
        "confirmation": tags.get("confirmation"), "stopped": tags.get("stopped"),
        "failures": failure_reasons(runs),
    }


def failure_reasons(runs: pd.DataFrame) -> list[tuple[str, int]]:
    """Failed runs grouped by why (first line of the reason), most frequent first."""
    if "tags.failure_reason" not in runs:
        return []
    reasons = runs[runs.state == "FAIL"]["tags.failure_reason"].fillna("no reason recorded")
    return [(reason, int(n)) for reason, n in reasons.map(lambda r: r.splitlines()[0][:200]).value_counts().items()]


def _yaml_value(v: Any) -> str:
    text = str(v)
    return text.replace(" ", "") if text.startswith("[") else text


def leaderboard(study: Study, k: int = 10) -> pd.DataFrame:
    top = ranked(study).head(k)
    if top.empty:
        return pd.DataFrame()
    best_epoch_acc = study.history.groupby("run_id").val_accuracy.max()
    last_acc = study.history.sort_values("epoch").groupby("run_id").val_accuracy.last()
    table = pd.DataFrame({
        "trial": [label(r) for _, r in top.iterrows()],
        "run_id": top.run_id.to_numpy(),
        **{k.split(".", 1)[-1]: top.get(f"params.{k}", pd.Series("", index=top.index)).map(
            lambda v: "" if v is None or v != v else value_text(v)).to_numpy() for k in study.searched},
        "val_accuracy (best epoch)": top.run_id.map(best_epoch_acc).to_numpy(),
        "val_accuracy (last epoch)": top.run_id.map(last_acc).to_numpy(),
        "parameters": pd.to_numeric(top.get("params.param_count"), errors="coerce").to_numpy() if "params.param_count" in top else np.nan,
        "train s": top.get("metrics.train_seconds"),
        "test_accuracy": top.get("metrics.test_accuracy", pd.Series(np.nan, index=top.index)),
    })
    if study.objective not in ("val_accuracy",):
        table.insert(1, study.objective, top[f"metrics.{study.objective}"].to_numpy())
    return table.reset_index(drop=True)
