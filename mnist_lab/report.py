"""The comparison report: what a team reads after a study.

    mnist-lab report                          # the latest study
    mnist-lab report --study sweep --study sweep-kt --out reports/
    mnist-lab report --runs RUN_ID RUN_ID ...

Reads runs and per-epoch histories from MLflow into pandas and writes
reports/<study>/index.html (self-contained: images embedded), report.md and runs.csv, then
logs them on the study's parent run. Sections: summary, leaderboard, learning curves,
overfitting checks, hyperparameter effects, studies side by side, confirmation over seeds.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator
import pandas as pd
import seaborn as sns
import yaml

from mnist_lab import plots, tracking
from mnist_lab.config import MnistLabError
from mnist_lab.space import ChoiceParam, Space

plt = plots.plt
CURVE_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
TOP_CURVES = 5  # trials overlaid in the learning-curve plot
GRID_CURVES = 24  # trials in the small-multiples grid
BULK_RUNS = 500  # runs per bulk metric query (SQLite allows 32,766 bound parameters)


@dataclass
class Study:
    name: str
    parent: Any  # mlflow Run, or None for an ad-hoc set of runs
    space: Space | None
    objective: str  # metric name
    maximize: bool
    runs: pd.DataFrame  # one row per trial run: run_id, state, params..., metrics...
    history: pd.DataFrame  # run_id, epoch, loss, accuracy, val_loss, val_accuracy, epoch_seconds
    confirm: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def searched(self) -> list[str]:
        return list(self.space.params) if self.space else []


# --- reading MLflow ---------------------------------------------------------------------------


def latest_study(client, experiment_ids: list[str]) -> str:
    parents = client.search_runs(experiment_ids, "tags.`mnist_lab.kind` = 'study'", order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise MnistLabError("no study in the MLflow store yet: run `make sweep` first (or pass --runs RUN_ID ...)")
    return parents[0].data.tags["study"]


def load_study(client, experiment_ids: list[str], name: str) -> Study:
    parents = client.search_runs(
        experiment_ids, f"tags.`mnist_lab.kind` = 'study' and tags.study = '{name}'", order_by=["attributes.start_time DESC"]
    )
    if not parents:
        known = sorted({r.data.tags["study"] for r in client.search_runs(experiment_ids, "tags.`mnist_lab.kind` = 'study'")})
        raise MnistLabError(f"--study {name}: no such study in the MLflow store (known: {', '.join(known) or 'none'})")
    parent = parents[0]
    space = Space.model_validate(yaml.safe_load(parent.data.tags["space"])) if parent.data.tags.get("space") else None
    objective = space.objective[0] if space else None
    trials = _search(f"tags.study = '{name}' and tags.`mnist_lab.kind` = 'trial' and tags.`mlflow.parentRunId` = '{parent.info.run_id}'", experiment_ids)
    confirm = _search(f"tags.study = '{name}' and tags.`mnist_lab.kind` = 'confirm'", experiment_ids)
    _expand_list_params(trials, space)
    return Study(
        name=name, parent=parent, space=space,
        objective=objective.metric if objective else "val_accuracy",
        maximize=(objective.way == "maximize") if objective else True,
        runs=trials, history=histories(client, list(trials.run_id)) if len(trials) else _empty_history(), confirm=confirm,
    )


def load_runs(client, run_ids: list[str]) -> Study:
    import mlflow

    rows = []
    for run_id in run_ids:
        try:
            client.get_run(run_id)
        except Exception:
            raise MnistLabError(f"--runs {run_id}: no such run in the MLflow store") from None
        rows.append(mlflow.search_runs(filter_string=f"attributes.run_id = '{run_id}'", search_all_experiments=True))
    runs = _tidy(pd.concat(rows, ignore_index=True))
    return Study(name=f"runs-{len(run_ids)}", parent=None, space=None, objective="val_accuracy", maximize=True,
                 runs=runs, history=histories(client, run_ids))


def _expand_list_params(runs: pd.DataFrame, space: Space | None) -> None:
    """A searched list entry (model.dense.0) is logged inside its list param (model.dense = [256])."""
    for key in (space.params if space else []):
        head, _, index = key.rpartition(".")
        if f"params.{key}" in runs or not index.isdigit() or f"params.{head}" not in runs:
            continue
        def pick(text, i=int(index)):
            try:
                return yaml.safe_load(text)[i]
            except (TypeError, IndexError, yaml.YAMLError):
                return None
        runs[f"params.{key}"] = runs[f"params.{head}"].map(pick)


def _search(filter_string: str, experiment_ids: list[str]) -> pd.DataFrame:
    import mlflow

    return _tidy(mlflow.search_runs(experiment_ids, filter_string=filter_string, max_results=100_000))


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return pd.DataFrame(columns=["run_id", "state", "status", "trial"])
    frame = frame.copy()
    frame["state"] = frame.get("tags.state", pd.Series("COMPLETE", index=frame.index)).fillna(frame["status"])
    frame["trial"] = pd.to_numeric(frame.get("tags.trial_number", pd.Series(np.nan, index=frame.index)), errors="coerce")
    return frame


def _empty_history() -> pd.DataFrame:
    return pd.DataFrame(columns=["run_id", "epoch", *CURVE_METRICS])


def histories(client, run_ids: list[str]) -> pd.DataFrame:
    """Per-epoch curves of many runs: run_id, epoch, and one column per metric of CURVE_METRICS."""
    frame = _histories_from_database(client, run_ids)
    if frame is None:
        frame = _histories_run_by_run(client, run_ids)
    if frame.empty:
        return _empty_history()
    # The last value logged for a step wins (a resumed run may log a step twice).
    wide = frame.sort_values("timestamp").pivot_table(index=["run_id", "epoch"], columns="key", values="value", aggfunc="last")
    wide = wide.reindex(columns=list(CURVE_METRICS)).reset_index()
    wide.columns.name = None
    return wide.sort_values(["run_id", "epoch"], ignore_index=True)


def _histories_from_database(client, run_ids: list[str]) -> pd.DataFrame | None:
    """One query for every run's curves, from a database store (sqlite, PostgreSQL, MySQL).

    MLflow's client reads one metric of one run per call: 4,000 calls, 13 s, for 1,000 runs; its
    store's bulk read builds an ORM object per value (3 s). Selecting the columns through MLflow's
    own table model takes 0.6 s. None where the store is not a database (a tracking server)."""
    try:
        from mlflow.store.tracking.dbmodels.models import SqlMetric
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:  # a later MLflow moved its internals: the run-by-run path still works
        return None
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if not isinstance(store, SqlAlchemyStore):
        return None
    columns = (SqlMetric.run_uuid, SqlMetric.key, SqlMetric.step, SqlMetric.value, SqlMetric.timestamp)
    rows = []
    with store.ManagedSessionMaker() as session:
        for i in range(0, len(run_ids), BULK_RUNS):
            rows += session.query(*columns).filter(SqlMetric.key.in_(CURVE_METRICS), SqlMetric.run_uuid.in_(run_ids[i:i + BULK_RUNS])).all()
    return pd.DataFrame(rows, columns=["run_id", "key", "epoch", "value", "timestamp"])


def _histories_run_by_run(client, run_ids: list[str]) -> pd.DataFrame:
    def one(run_id: str) -> list[tuple]:
        return [(run_id, key, m.step, m.value, m.timestamp) for key in CURVE_METRICS for m in client.get_metric_history(run_id, key)]

    # Threads pay off against a tracking server: its latency, not its work, is the cost.
    with ThreadPoolExecutor(max_workers=4) as pool:
        rows = [row for chunk in pool.map(one, run_ids) for row in chunk]
    return pd.DataFrame(rows, columns=["run_id", "key", "epoch", "value", "timestamp"])


# --- analysis -----------------------------------------------------------------------------------

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
    from mnist_lab.space import FloatParam, IntParam

    dists = {}
    for key, p in study.space.params.items():
        if isinstance(p, ChoiceParam):
            dists[key] = optuna.distributions.CategoricalDistribution([str(c) for c in p.choices])
        elif isinstance(p, IntParam):
            dists[key] = optuna.distributions.IntDistribution(p.low, p.high, step=p.step, log=p.log)
        elif isinstance(p, FloatParam):
            dists[key] = optuna.distributions.FloatDistribution(p.low, p.high, step=p.step, log=p.log)
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
    sweep's verdict (which counts the trial's run as the first seed).
    """
    from scipy import stats

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
        test = g.get("metrics.test_accuracy", pd.Series(dtype=float)).dropna().to_numpy()
        sweep_score = trials.loc[source].get("metrics.val_accuracy") if source in trials.index else None
        row = {"configuration": label, "seeds": len(val),
               "sweep val_accuracy": f"{sweep_score:.4f}" if sweep_score == sweep_score and sweep_score is not None else ""}
        sweep_scores[order] = sweep_score if sweep_score == sweep_score else None
        for metric, x in (("val_accuracy", np.asarray(list(val.values()), dtype=float)), ("test_accuracy", test)):
            if metric == "test_accuracy" and not len(x):
                continue  # the sweep's confirmation runs are scored on validation only
            mean = x.mean() if len(x) else float("nan")
            half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else float("nan")
            row[metric] = f"{mean:.4f} ± {half:.4f}" if len(x) > 1 else f"{mean:.4f}"
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
            if len(samples[a]) < 2 or len(samples[b]) < 2:
                continue
            with warnings.catch_warnings():  # identical seed scores: scipy warns, the p-value is still right
                warnings.simplefilter("ignore", RuntimeWarning)
                t, p = stats.ttest_ind(samples[a], samples[b], equal_var=False)
            diff = samples[a].mean() - samples[b].mean()
            tests.append({"pair": f"{labels[a]} vs {labels[b]}", "difference in val_accuracy": f"{diff:+.4f}",
                          "Welch t": f"{t:.2f}", "p (two-sided)": f"{p:.3g}"})
            if p < 0.05:
                better, worse = (a, b) if diff > 0 else (b, a)
                verdicts.append(f"{labels[better]} beats {labels[worse]} on validation (p = {p:.3g})")
            else:
                verdicts.append(f"{labels[a]} and {labels[b]} are tied within noise (p = {p:.2f}, "
                                f"{len(samples[a])} and {len(samples[b])} seeds)")
    return pd.DataFrame(rows), pd.DataFrame(tests), verdicts


# --- figures ------------------------------------------------------------------------------------


def _png(fig) -> str:
    buffer = io.BytesIO()
    # No bbox_inches="tight": it draws every figure twice; each figure lays itself out instead.
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _label(row) -> str:
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


def curves_overlay(study: Study, top: pd.DataFrame) -> str:
    h = study.history.merge(top[["run_id"]].assign(label=[_label(r) for _, r in top.iterrows()]), on="run_id")
    h["label"] = pd.Categorical(h.label, categories=[_label(r) for _, r in top.iterrows()])
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
    return _png(fig)


def curves_grid(study: Study, runs: pd.DataFrame) -> str:
    labels = {r.run_id: _label(r) for _, r in runs.iterrows()}
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
    return _png(fig)


def axis_plots(study: Study) -> str | None:
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
            sns.stripplot(x=done[f"params.{key}"].astype(str), y=done[col], ax=ax, size=6)
        else:
            sns.scatterplot(x=x, y=done[col], ax=ax, s=40)
            if getattr(p, "log", False):
                ax.set_xscale("log")
            ax.axvspan(p.low, p.high, color="0.93", zorder=-1)
        ax.set(xlabel=key, ylabel=study.objective)
    fig.tight_layout()
    return _png(fig)


def gap_plot(study: Study, fits: pd.DataFrame) -> str | None:
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
    return _png(fig)


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
            ax.text(x + 0.03, y, value_text(value, p), fontsize=7, va="center", color="0.3")
    ax.set_xlim(-0.2, len(xs) - 0.5)
    ax.set_ylim(-0.05, 1.05)
    ax.set_yticks([])
    ax.set_xticks(xs, [k.split(".", 1)[-1] for k in keys], rotation=20, fontsize=8)
    ax.set_ylabel("searched range (low end at the bottom)")
    fig.colorbar(plt.cm.ScalarMappable(norm=plt.Normalize(lo, hi), cmap=cmap), ax=ax, label=study.objective)
    fig.tight_layout()
    return _png(fig)


def value_text(value: Any, p=None) -> str:
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
    return _png(fig)


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
    for ax, x, label in ((axes[0], np.arange(1, len(r) + 1), "trials started"), (axes[1], compute, "compute spent (training epochs)")):
        ax.scatter(x[complete], values[complete], s=22, color="#3056d3", label="complete trial", zorder=3)
        pruned = (r.state == "PRUNED").to_numpy()
        ax.scatter(x[pruned], values[pruned], s=22, marker="x", color="0.55", label="pruned (its last score)", zorder=3)
        ax.step(x, best, where="post", color="crimson", label="best so far")
        ax.set(xlabel=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel(study.objective)
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.tight_layout()
    return _png(fig)


def compare_plot(studies: list[Study]) -> str | None:
    if len(studies) < 2:
        return None
    rows = []
    for s in studies:
        r = s.runs.sort_values("start_time") if "start_time" in s.runs else s.runs
        col = f"metrics.{s.objective}"
        epochs = s.history.groupby("run_id").epoch.max()
        seconds = r.get("metrics.train_seconds", pd.Series(0.0, index=r.index)).fillna(0)
        values = r[col] if col in r else pd.Series(np.nan, index=r.index)
        best = values.where(r.state == "COMPLETE").cummax() if s.maximize else values.where(r.state == "COMPLETE").cummin()
        rows.append(pd.DataFrame({"study": s.name, "epochs": r.run_id.map(epochs).fillna(0).cumsum().to_numpy(),
                                  "seconds": seconds.cumsum().to_numpy(), "best so far": best.ffill().to_numpy()}))
    frame = pd.concat(rows)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for ax, x in zip(axes, ("epochs", "seconds")):
        sns.lineplot(frame, x=x, y="best so far", hue="study", drawstyle="steps-post", marker="o", ax=ax)
        ax.set(xlabel=f"compute spent ({'training epochs' if x == 'epochs' else 'training seconds'})", ylabel=f"best {studies[0].objective} so far")
    fig.tight_layout()
    return _png(fig)


# --- assembling ---------------------------------------------------------------------------------


def _fmt(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].map(lambda v: "" if pd.isna(v) else f"{v:.4f}" if abs(v) < 10 else f"{v:,.0f}")
    return out.fillna("")


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
        "trial": [_label(r) for _, r in top.iterrows()],
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


def linked(board: pd.DataFrame, study: Study, html: bool) -> pd.DataFrame:
    """The leaderboard with each trial linked to its run in MLflow's UI."""
    if board.empty or "run_id" not in board:
        return board.drop(columns=["run_id"], errors="ignore")
    from html import escape

    experiments = study.runs.set_index("run_id")["experiment_id"] if "experiment_id" in study.runs else {}
    out = board.copy()
    for i, row in out.iterrows():
        url = tracking.run_link(str(experiments.get(row.run_id, "0")), row.run_id)
        out.at[i, "trial"] = (f'<a href="{escape(url)}" title="run {row.run_id}">{escape(row.trial)}</a>' if html
                              else f"[{row.trial}]({url})")
    out = out.drop(columns=["run_id"])
    if html:  # long names may break after a dot or an underscore, never inside a word
        out.columns = [c.replace(".", ".\u200b").replace("_", "_\u200b") for c in out.columns]
    return out


def build(studies: list[Study], out_dir: Path) -> dict[str, Path]:
    """Write index.html, report.md and runs.csv for `studies` (the first one names the report)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    all_fits = {s.name: fit_table(s) for s in studies}
    for s in studies:
        top = ranked(s)
        fits = all_fits[s.name]
        conf_table, conf_tests, conf_verdicts = confirmation(s)
        summary = summarize(s)
        overfit = fits[fits.overfit_from.notna()] if "overfit_from" in fits else pd.DataFrame()
        judged = fits[~fits.verdict.isin(UNJUDGED)] if "verdict" in fits else pd.DataFrame()
        board = leaderboard(s)
        sections.append({
            "name": s.name, "summary": summary,
            "edges": edge_warnings(s, summary["best"]) if summary["best"] is not None else [],
            "leaderboard": _fmt(board), "leaderboard_html": _fmt(linked(board, s, html=True)),
            "leaderboard_md": _fmt(linked(board, s, html=False)), "history": history_plot(s),
            "n_complete": int((s.runs.state == "COMPLETE").sum()), "min_importance_trials": MIN_IMPORTANCE_TRIALS,
            "n_judged": len(judged),
            "curves": curves_overlay(s, top.head(TOP_CURVES)) if len(top) and len(s.history) else None,
            "grid": curves_grid(s, top.head(GRID_CURVES)) if len(top) and len(s.history) else None,
            "fits": _fmt(fits.drop(columns=["run_id"]).rename(columns={"overfit_from": "overfitting from"})) if len(fits) else pd.DataFrame(),
            "n_overfit": len(overfit), "n_fits": len(fits),
            "gap_corr": gap_correlations(s, fits), "gap_plot": gap_plot(s, fits),
            "axis": axis_plots(s), "importance": importances(s), "parallel": parallel_coordinates(s), "pareto": pareto_plot(s),
            "confirm": conf_table, "confirm_tests": conf_tests, "confirm_verdicts": conf_verdicts,
        })
    env = Environment(loader=PackageLoader("mnist_lab"), autoescape=select_autoescape(["html"]))
    context = {"title": " vs ".join(s.name for s in studies), "sections": sections, "compare": compare_plot(studies),
               "ui_url": tracking.ui_url()}
    paths = {"html": out_dir / "index.html", "md": out_dir / "report.md", "csv": out_dir / "runs.csv"}
    _write(paths["html"], env.get_template("report.html.j2").render(**context))
    _write(paths["md"], env.get_template("report.md.j2").render(**context))
    frames = []
    for s in studies:
        fits = all_fits[s.name]
        frame = s.runs.assign(study=s.name)
        if len(fits):
            frame = frame.merge(fits.drop(columns=["trial", "state"]), on="run_id", how="left")
        frames.append(frame)
    csv = pd.concat(frames, ignore_index=True)
    csv.to_csv(paths["csv"].with_suffix(".tmp"), index=False)
    paths["csv"].with_suffix(".tmp").replace(paths["csv"])
    return paths


def _write(path: Path, text: str) -> None:
    # Write next to the target, then rename: a crash never leaves half a report behind.
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run(study_names: list[str] | None, run_ids: list[str] | None, out: str | None) -> dict[str, Path]:
    from mlflow import MlflowClient

    experiment_id = tracking.setup()
    client = MlflowClient()
    experiments = [experiment_id]
    if run_ids:
        studies = [load_runs(client, run_ids)]
    else:
        names = study_names or [latest_study(client, experiments)]
        studies = [load_study(client, experiments, n) for n in names]
    out_dir = Path(out or "reports") / "-vs-".join(s.name for s in studies)
    paths = build(studies, out_dir)
    parent = studies[0].parent
    if parent is not None:
        for p in paths.values():
            client.log_artifact(parent.info.run_id, str(p), artifact_path="report")
        # The study's description (MLflow's UI) says where the report now is.
        note = client.get_run(parent.info.run_id).data.tags.get(tracking.DESCRIPTION_TAG, "")
        line = f"- report: {paths['html'].resolve()} (also logged here, under report/index.html)"
        kept = [x for x in note.splitlines() if not x.startswith("- report:")]
        client.set_tag(parent.info.run_id, tracking.DESCRIPTION_TAG, "\n".join([*kept, line]).strip())
    return paths
