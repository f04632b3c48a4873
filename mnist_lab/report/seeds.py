"""Confirmation over seeds, as the report reads it: each confirmed configuration's validation scores
per training seed, the tests between them, and the study's answer in one sentence.

A configuration's seeds are its confirmation runs and its trial's own run, as in the sweep's
verdict (which counts the trial's run as the first seed). Its test accuracy is its one test-set
evaluation, on its trial's run, where one was made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mnist_lab.report.runs import Study
from mnist_lab.stats import ALPHA, BASELINE, is_incumbent, mean_ci, welch_greater, welch_two_sided


@dataclass
class Configuration:
    label: str  # "trial 7", "baseline", "current champion (version 2)"
    source_run_id: str
    scores: dict[int, float] = field(default_factory=dict)  # train.seed -> val_accuracy
    test: float | None = None
    sweep_score: float | None = None  # its trial's one run, which the search ranked it by

    @property
    def values(self) -> np.ndarray:
        return np.asarray([self.scores[s] for s in sorted(self.scores)], dtype=float)

    @property
    def mean(self) -> float:
        return float(self.values.mean())


def _number(v) -> float | None:
    return None if v is None or v != v else float(v)


def configurations(study: Study) -> list[Configuration]:
    """The confirmed configurations, in the order the search ranked them (incumbents last)."""
    c = study.confirm
    if c.empty or "tags.source_run_id" not in c:
        return []
    c = c[c.status == "FINISHED"].copy()
    c["rank"] = c["tags.config_rank"].astype(int)
    trials = study.runs.set_index("run_id") if len(study.runs) else pd.DataFrame()
    out = []
    # One configuration per source run: the sweep's confirmation and `mnist-lab confirm` add
    # seeds to the same configurations (each skips the seeds the other trained).
    for source, g in sorted(c.groupby("tags.source_run_id"), key=lambda kv: kv[1]["rank"].min()):
        named = g.get("tags.source_label", pd.Series(dtype=str)).dropna()
        config = Configuration(named.iloc[0] if len(named) else f"trial {g['tags.source_trial'].iloc[0]}", source)
        g = g.drop_duplicates("tags.seed")
        config.scores = {int(seed): v for seed, v in zip(g["tags.seed"], g["metrics.val_accuracy"]) if v == v}
        if source in trials.index:
            trial = trials.loc[source]
            config.sweep_score, config.test = _number(trial.get("metrics.val_accuracy")), _number(trial.get("metrics.test_accuracy"))
            if config.sweep_score is not None:  # the trial's own run is a seed too (its train.seed, 0 unless the space sets it)
                config.scores.setdefault(int(float(trial.get("params.train.seed", 0) or 0)), config.sweep_score)
        out.append(config)
    return out


def confirmation(study: Study) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Mean ± 95% CI per confirmed configuration, Welch's t-tests between them, plain verdicts."""
    configs = configurations(study)
    rows = []
    for c in configs:
        mean, half = mean_ci(c.values)
        rows.append({"configuration": c.label, "seeds": len(c.scores),
                     "sweep val_accuracy": "" if c.sweep_score is None else f"{c.sweep_score:.4f}",
                     "val_accuracy": f"{mean:.4f} ± {half:.4f}" if len(c.scores) > 1 else f"{mean:.4f}",
                     **({"test_accuracy": f"{c.test:.4f}"} if c.test is not None else {})})
    tests, verdicts = [], []
    # The search ranked these by one run each; their seed means may rank them otherwise.
    scored = [c for c in configs if c.sweep_score is not None and c.scores]
    for a in scored:
        for b in scored:
            if a.sweep_score > b.sweep_score and a.mean < b.mean:
                verdicts.append(f"rank reversal: {a.label} beat {b.label} in the search ({a.sweep_score:.4f} against "
                                f"{b.sweep_score:.4f}), but over seeds its mean is lower ({a.mean:.4f} against {b.mean:.4f})")
    for i, a in enumerate(configs):
        for b in configs[i + 1:]:
            if len(a.scores) >= 2 and len(b.scores) >= 2:
                row, verdict = compare_seeds(a.label, a.values, b.label, b.values)
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
        if gate < ALPHA:  # pragma: no mutate (< or <=: a p-value of exactly 0.05 does not occur)
            return row, f"{trial} beats {held} on validation (one-sided p = {gate:.3g}, the sweep's gate; two-sided p = {p:.2g})"
        return row, f"{trial} does not beat {held} with confidence (one-sided p = {gate:.2f}, {len(x)} and {len(y)} seeds)"
    if p < ALPHA:  # pragma: no mutate (< or <=: a p-value of exactly 0.05 does not occur)
        better, worse = (label_a, label_b) if diff > 0 else (label_b, label_a)
        return row, f"{better} beats {worse} on validation (two-sided p = {p:.3g})"
    return row, f"{label_a} and {label_b} are tied within noise (two-sided p = {p:.2f}, {len(a)} and {len(b)} seeds)"


def answer(study: Study) -> str:
    """The study's answer in one sentence a team lead can forward: what won, by how much over the
    baseline (and the champion it faced), how sure, whether it was crowned, its test accuracy."""
    configs = configurations(study)
    candidates = [c for c in configs if not is_incumbent(c.label) and c.scores]
    if not candidates:
        return (f"No answer yet: nothing of study {study.name} was confirmed over seeds "
                f"(mnist-lab confirm --study {study.name} retrains its best trials with several seeds).")
    won = max(candidates, key=lambda c: c.mean)
    n = len(won.scores)
    against, beaten = [], []
    for held in (c for c in configs if is_incumbent(c.label) and len(c.scores) >= 2):
        if n < 2:
            continue  # pragma: no mutate (or break: n is the same for every incumbent)
        p = welch_greater(list(won.values), list(held.values))
        name = "the baseline" if held.label == BASELINE else held.label
        against.append((name, f"{100 * (won.mean - held.mean):+.2f} points of validation accuracy ({won.mean:.4f} against "
                              f"{held.mean:.4f}, means over {n} and {len(held.scores)} seeds; one-sided Welch p = {p:.2g})"))
        beaten.append(p < ALPHA)
    if not against:
        said = (f"{won.label} scores {won.mean:.4f} validation accuracy over {n} seed{'s' if n > 1 else ''}; no baseline or "
                "champion was confirmed over 2 seeds or more to compare it with")
    elif all(beaten):
        said = f"{won.label} beats " + " and ".join(f"{name} by {how}" for name, how in against)
    else:
        said = (f"{won.label} does not beat {' and '.join(name for name, _ in against)} with confidence: "
                + "; ".join(f"{how.split(' (')[0]} over {name} ({how.split(' (', 1)[1]}" for name, how in against))
    champion = study.champion or {}
    if champion.get("source_run_id") == won.source_run_id:
        said += f". It is mnist-cnn@champion (version {champion['version']})"
    elif str((study.parent.data.tags if study.parent else {}).get("confirmation", "")).startswith(f"{won.label} beats"):
        said += ". It was crowned, and mnist-cnn@champion has since moved on" + (
            f" to version {champion['version']}" if champion else "")
    else:
        said += ". Nothing was crowned"
    if won.test is not None:
        said += f"; its one test-set evaluation: {won.test:.4f}"
    return said + "."
