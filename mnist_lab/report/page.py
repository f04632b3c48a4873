"""The comparison report: what a team reads after a study.

    mnist-lab report                          # the latest study
    mnist-lab report --study sweep --study sweep-kt --out reports/
    mnist-lab report --runs RUN_ID RUN_ID ...

Page assembly only: `runs` reads the study from MLflow into pandas, `analysis` says what the
runs show, `figures` draws them (all in mnist_lab/report/); this module puts them on reports/<study>/index.html
(self-contained: images embedded), report.md and runs.csv, and logs those on the study's parent
run. Sections: summary, leaderboard, learning curves, overfitting checks, hyperparameter
effects, studies side by side, confirmation over seeds.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mnist_lab import tracking
from mnist_lab.errors import MnistLabError
from mnist_lab.report import analysis, compare, figures, fits, seeds
from mnist_lab.report.analysis import MIN_IMPORTANCE_TRIALS
from mnist_lab.report.runs import Study, load_runs, load_study
from mnist_lab.sweep.records import report_line

TOP_CURVES = 5  # trials overlaid in the learning-curve plot
GRID_CURVES = 24  # trials in the small-multiples grid


def _fmt(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].map(lambda v: "" if pd.isna(v) else f"{v:.4f}" if abs(v) < 10 else f"{v:,.0f}")
    return out.fillna("")


def linked(board: pd.DataFrame, study: Study, html: bool, ui_url: str) -> pd.DataFrame:
    """The leaderboard with each trial linked to its run in MLflow's UI, and marked as the baseline
    or the champion where it is one."""
    if board.empty or "run_id" not in board:
        return board.drop(columns=["run_id", "role"], errors="ignore")
    from html import escape

    experiments = study.runs.set_index("run_id")["experiment_id"] if "experiment_id" in study.runs else {}
    out = board.copy()
    for i, row in out.iterrows():
        url = tracking.run_link(str(experiments.get(row.run_id, "0")), row.run_id, ui_url)
        if html:
            mark = f' <span class="role {row.role}">{row.role}</span>' if row.role else ""
            out.at[i, "trial"] = f'<a href="{escape(url)}" title="run {row.run_id}">{escape(row.trial)}</a>{mark}'
        else:
            out.at[i, "trial"] = f"[{row.trial}]({url})" + (f" **{row.role}**" if row.role else "")
    out = out.drop(columns=["run_id", "role"])
    if html:  # long names may break after a dot or an underscore, never inside a word
        out.columns = [c.replace(".", ".\u200b").replace("_", "_\u200b") for c in out.columns]
    return out


def build(studies: list[Study], out_dir: Path, ui_url: str | None = None) -> dict[str, Path]:
    """Write index.html, report.md and runs.csv for one study (its whole report) or several (one
    comparison page), the links pointing into MLflow's UI at `ui_url` (default: where the store in use is served)."""
    if len(studies) > 1:
        return build_comparison(studies, out_dir)
    from jinja2 import Environment, PackageLoader, select_autoescape

    out_dir.mkdir(parents=True, exist_ok=True)
    ui_url = ui_url or tracking.ui_url()
    sections = []
    all_fits = {s.name: fits.fit_table(s) for s in studies}
    for s in studies:
        top = analysis.ranked(s)
        checks = all_fits[s.name]
        conf_table, conf_tests, conf_verdicts = seeds.confirmation(s)
        summary = analysis.summarize(s)
        overfit = checks[checks.overfit_from.notna()] if "overfit_from" in checks else pd.DataFrame()
        judged = fits.judged(checks)
        board = analysis.leaderboard(s)
        sections.append({
            "name": s.name, "summary": summary, "answer": seeds.answer(s),
            "edges": analysis.edge_warnings(s, summary["best"]) if summary["best"] is not None else [],
            "leaderboard": _fmt(board), "leaderboard_html": _fmt(linked(board, s, True, ui_url)),
            "leaderboard_md": _fmt(linked(board, s, False, ui_url)), "history": figures.history_plot(s),
            "n_complete": int((s.runs.state == "COMPLETE").sum()), "min_importance_trials": MIN_IMPORTANCE_TRIALS,
            "n_judged": len(judged),
            "curves": figures.curves_overlay(s, top.head(TOP_CURVES)) if len(top) and len(s.history) else None,
            "grid": figures.curves_grid(s, top.head(GRID_CURVES)) if len(top) and len(s.history) else None,
            "grid_shown": min(GRID_CURVES, len(top)), "n_finished": len(top),
            "fits": _fmt(checks.drop(columns=["run_id"]).rename(columns={"overfit_from": "overfitting from"})) if len(checks) else pd.DataFrame(),
            "n_overfit": len(overfit), "n_fits": len(checks),
            "gap_corr": fits.gap_correlations(s, checks), "gap_plot": figures.gap_plot(s, judged),
            "axis": figures.axis_plots(s), "importance": analysis.importances(s), "parallel": figures.parallel_coordinates(s), "pareto": figures.pareto_plot(s),
            "confirm": conf_table, "confirm_tests": conf_tests, "confirm_verdicts": conf_verdicts,
        })
    env = Environment(loader=PackageLoader("mnist_lab.report"), autoescape=select_autoescape(["html"]))
    context = {"title": " vs ".join(s.name for s in studies), "sections": sections, "ui_url": ui_url}
    paths = {"html": out_dir / "index.html", "md": out_dir / "report.md", "csv": out_dir / "runs.csv"}
    _write(paths["html"], env.get_template("report.html.j2").render(**context))
    _write(paths["md"], env.get_template("report.md.j2").render(**context))
    _write_runs(studies, paths["csv"], all_fits)
    return paths


def build_comparison(studies: list[Study], out_dir: Path) -> dict[str, Path]:
    """One page for several studies: each one's answer, a table with a column per study, their
    best so far and their best trials' curves on shared axes, and why their scores may not compare."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    out_dir.mkdir(parents=True, exist_ok=True)
    env = Environment(loader=PackageLoader("mnist_lab.report"), autoescape=select_autoescape(["html"]))
    context = {"title": " vs ".join(s.name for s in studies), "answers": [(s.name, seeds.answer(s)) for s in studies],
               "table": compare.side_by_side(studies), "warnings": compare.warnings(studies),
               "best_so_far": figures.compare_plot(studies), "curves": figures.compare_curves(studies),
               "own_reports": [(s.name, f"../{s.name}/index.html") for s in studies]}
    paths = {"html": out_dir / "index.html", "md": out_dir / "report.md", "csv": out_dir / "runs.csv"}
    _write(paths["html"], env.get_template("compare.html.j2").render(**context))
    _write(paths["md"], env.get_template("compare.md.j2").render(**context))
    _write_runs(studies, paths["csv"], {s.name: fits.fit_table(s) for s in studies})
    return paths


def _write_runs(studies: list[Study], path: Path, all_fits: dict[str, pd.DataFrame]) -> None:
    frames = []
    for s in studies:
        checks = all_fits[s.name]
        frame = s.runs.assign(study=s.name)
        if len(checks):
            frame = frame.merge(checks.drop(columns=["trial", "state"]), on="run_id", how="left")
        frames.append(frame)
    csv = pd.concat(frames, ignore_index=True)
    csv.to_csv(path.with_suffix(".tmp"), index=False)
    path.with_suffix(".tmp").replace(path)


def _write(path: Path, text: str) -> None:
    # Write next to the target, then rename: a crash never leaves half a report behind.
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run(study_names: list[str] | None, run_ids: list[str] | None, out: str | None, ui_url: str | None = None) -> dict[str, Path]:
    from mlflow import MlflowClient

    for name in study_names or []:
        tracking.check_study_name(name)  # before anything is read or written
    experiment_id = tracking.setup()
    client = MlflowClient()
    if run_ids:
        studies = [load_runs(client, run_ids)]
    else:
        try:
            names = study_names or [tracking.latest_study(client, experiment_id)]
        except MnistLabError as e:
            raise MnistLabError(f"{e} (or pass --runs RUN_ID ...)") from None
        studies = [load_study(client, experiment_id, n) for n in names]
    out_dir = Path(out or "reports") / "-vs-".join(s.name for s in studies)
    try:
        paths = build(studies, out_dir, ui_url)
    except OSError as e:
        raise MnistLabError(f"--out {out or 'reports'}: cannot write the report there ({e.strerror or e}); "
                            "pass --out DIR somewhere you can write") from None
    if len(studies) > 1:  # beside each study's own report, never over it
        for s in studies:
            if s.parent is not None:
                for p in paths.values():
                    client.log_artifact(s.parent.info.run_id, str(p), artifact_path=f"comparisons/{out_dir.name}")
        return paths
    parent = studies[0].parent
    if parent is not None:
        for p in paths.values():
            client.log_artifact(parent.info.run_id, str(p), artifact_path="report")
        # The study's description (MLflow's UI) says where the report now is.
        note = client.get_run(parent.info.run_id).data.tags.get(tracking.DESCRIPTION_TAG, "")
        kept = [x for x in note.splitlines() if not x.startswith("- report:")]
        client.set_tag(parent.info.run_id, tracking.DESCRIPTION_TAG,
                       "\n".join([*kept, report_line(parent.data.tags.get("study", ""), paths["html"])]).strip())
    return paths
