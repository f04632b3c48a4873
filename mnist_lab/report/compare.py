"""Studies side by side, as pure functions of the studies `runs.load_study` reads: one table with a
column per study, and the warnings that say when their scores cannot be compared as they stand.
"""

from __future__ import annotations

import pandas as pd

from mnist_lab.report import analysis, seeds
from mnist_lab.report.runs import Study
from mnist_lab.stats import is_incumbent, mean_ci


def _values(study: Study, param: str) -> list[str]:
    column = study.runs.get(f"params.{param}", pd.Series(dtype=str)).dropna()
    return sorted({analysis.value_text(v) for v in column}, key=lambda v: (len(v), v))


def side_by_side(studies: list[Study]) -> pd.DataFrame:
    """One row per aspect, one column per study: how each searched, what it found, what it cost."""
    columns = {}
    for s in studies:
        summary = analysis.summarize(s)
        configs = [c for c in seeds.configurations(s) if not is_incumbent(c.label) and c.scores]
        won = max(configs, key=lambda c: c.mean) if configs else None
        mean, half = mean_ci(won.values) if won else (None, None)
        crowned = s.champion and won and s.champion["source_run_id"] == won.source_run_id
        best = summary["best"]
        columns[s.name] = {
            "engine / sampler / pruner": f"{summary['engine']} / {summary['sampler']} / {summary['pruner']}",
            "trials": ", ".join(f"{n} {state.lower()}" for state, n in summary["states"].items()) or "none",
            f"best {s.objective} (one run)": f"{summary['best_value']:.4f} ({analysis.label(best)})" if best is not None else "-",
            "confirmed over seeds": (f"{won.label}: {mean:.4f} ± {half:.4f} over {len(won.scores)} seeds" if won and len(won.scores) > 1
                                     else f"{won.label}: {mean:.4f} (1 seed)" if won else "not confirmed"),
            "mnist-cnn@champion": f"yes (version {s.champion['version']})" if crowned else "no",
            "test accuracy": f"{won.test:.4f}" if won and won.test is not None else "-",
            "compute spent": f"{summary['epochs']} epochs, {summary['train_seconds']:.0f} s of training",
            "training images per epoch": ", ".join(_values(s, "train_images")) or "-",
            "validation images": ", ".join(_values(s, "validation_images")) or "-",
            "scores made in": "; ".join(w for w, _ in summary["trained_in"]) or "-",
        }
    return pd.DataFrame(columns).rename_axis("").reset_index()


def warnings(studies: list[Study]) -> list[str]:
    """Why the studies' scores may not compare as they stand: other validation images, other
    epoch sizes, other data, another precision or CPU."""
    out = []
    for what, param, why in (
        ("validation images", "validation_images", "their scores come from validation sets of different sizes, with "
                                                    "different noise (±0.7 points on 1,000 images, ±0.3 on 5,000)"),
        ("validation split seed", "data.seed", "their validation images are different images"),
        ("training images per epoch", "train_images", "an epoch is not the same amount of training: compare them "
                                                      "against images seen or seconds, not epochs"),
    ):
        seen = {s.name: _values(s, param) for s in studies}
        if len({tuple(v) for v in seen.values()}) > 1:
            listed = "; ".join(f"{name}: {', '.join(v) or '-'}" for name, v in seen.items())
            out.append(f"The studies differ in {what} ({listed}): {why}.")
    digests = {s.name: sorted(s.runs.get("tags.data_digest", pd.Series(dtype=str)).dropna().unique()) for s in studies}
    if len({tuple(v) for v in digests.values()}) > 1:
        out.append("The studies were trained on different MNIST files (data digests differ): their scores do not compare.")
    where = {s.name: tuple(w for w, _ in analysis.trained_in(s)) for s in studies}
    if len(set(where.values())) > 1:
        out.append("The studies' scores were made in different precisions or on different CPUs ("
                   + "; ".join(f"{k}: {', '.join(v) or '-'}" for k, v in where.items()) + "): compare like with like.")
    return out
