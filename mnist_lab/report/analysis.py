"""What a study's runs say, as pure functions of the frames `runs.load_study` reads (fit verdicts
are in `fits`): edge warnings, importances, confirmation statistics, rankings, the leaderboard and the summary.
Nothing here reads MLflow or draws; `figures` draws, `report` assembles the page.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mnist_lab.report.runs import Study
from mnist_lab.sweep.space import ChoiceParam, distributions

MIN_TREND_POINTS = 8  # fewer points get no fitted trend line
MIN_IMPORTANCE_TRIALS = 20  # below this, importances are flagged as rough


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
        # Measured along the axis as the plots draw it: a log range on a log scale, where a learning rate
        # of 5e-4 in [1e-4, 1e-2] lies a third of the way along, not within 5% of the low end.
        position = range_position(value, p)
        if p.high > p.low and (position <= 0.05 or position >= 0.95):
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
    """Finished trials, one order everywhere: complete ones by the objective, then pruned ones by
    their last score (taken after a fraction of their training, it does not rank them among the complete)."""
    col = f"metrics.{study.objective}"
    runs = study.runs.copy()
    if col not in runs:
        runs[col] = np.nan
    runs = runs[runs.state.isin(["COMPLETE", "PRUNED", "FINISHED"])].assign(_pruned=lambda r: r.state.eq("PRUNED"))
    return runs.sort_values(["_pruned", col], ascending=[True, not study.maximize], na_position="last").drop(columns="_pruned")


def roles(study: Study) -> dict[str, str]:
    """run id -> "baseline" or "champion" (mnist-cnn@champion now) for the trials that are either."""
    out = {}
    if "tags.baseline" in study.runs:
        out |= {r: "baseline" for r in study.runs.loc[study.runs["tags.baseline"].eq("true"), "run_id"]}
    if "tags.source_label" in study.confirm:  # a baseline inside the space is confirmed from its trial's run
        out |= {r: "baseline" for r in study.confirm.loc[study.confirm["tags.source_label"].eq("baseline"), "tags.source_run_id"]}
    if study.champion:
        out[study.champion["source_run_id"]] = "champion"
    return out


def trained_in(study: Study) -> list[tuple[str, int]]:
    """Where the scores were made: "mixed_bfloat16 on AMD EPYC" and how many runs, for trials and seeds alike."""
    runs = pd.concat([study.runs, study.confirm], ignore_index=True) if len(study.confirm) else study.runs
    if runs.empty or "params.precision" not in runs:
        return []
    runs = runs[runs["params.precision"].notna()]  # a run that trained nothing (an impossible configuration) has none
    where = runs["params.precision"] + " on " + runs.get("tags.cpu_model", pd.Series("?", index=runs.index)).fillna("?")
    return [(text, int(n)) for text, n in where.value_counts().items()]


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
    where = trained_in(study)
    if len(where) > 1:  # bfloat16 and float32, or two CPUs, score the same configuration a little differently
        warnings.append("the compared scores were made in different precisions or on different CPUs ("
                        + "; ".join(f"{n} runs in {w}" for w, n in where) + "): compare like with like")
    reproduce = None
    if best is not None and study.space is not None:
        values = {**study.space.fixed, **{k: best.get(f"params.{k}") for k in study.searched}}
        base = Path(tags.get("space_file", "experiments/x.yaml")).parent / (study.space.base or "")
        # Quoted for a shell: a list value such as [128,64] would otherwise be a glob pattern.
        reproduce = " ".join(["mnist-lab", "train", *([str(base)] if study.space.base else []),
                              *(shlex.quote(f"{k}={_yaml_value(v)}") for k, v in values.items())])
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
        "failures": failure_reasons(runs), "trained_in": where,
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
    """The top `k` trials in `ranked` order: their searched values, the score they are ranked by, size,
    time and test accuracy; `role` marks the baseline and the champion."""
    top = ranked(study).head(k)
    if top.empty:
        return pd.DataFrame()
    marked = roles(study)
    table = pd.DataFrame({
        "trial": [label(r) for _, r in top.iterrows()],
        "role": top.run_id.map(lambda r: marked.get(r, "")).to_numpy(),
        "run_id": top.run_id.to_numpy(),
        **{k.split(".", 1)[-1]: top.get(f"params.{k}", pd.Series("", index=top.index)).map(
            lambda v: "" if v is None or v != v else value_text(v)).to_numpy() for k in study.searched},
        study.objective: top[f"metrics.{study.objective}"].to_numpy(),
        "params": pd.to_numeric(top.get("params.param_count"), errors="coerce").map(
            lambda n: "" if n != n else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k").to_numpy()
        if "params.param_count" in top else "",
        "train s": top.get("metrics.train_seconds"),
        "test_accuracy": top.get("metrics.test_accuracy", pd.Series(np.nan, index=top.index)),
    })
    return table.reset_index(drop=True)
