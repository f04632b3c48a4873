"""The study in MLflow: its own run, its trial runs' names and tags, runs that a kill or Ctrl-C left
behind, and the description MLflow's UI shows. Both engines record a study the same way, so
`mnist-lab report` reads studies of either engine alike.

A study is one run (tag `mnist_lab.kind=study`) with one nested run per trial (`trial`) and per
confirmation seed (`confirm`, written by mnist_lab/champion.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_lab import provenance, tracking
from mnist_lab.champion import LOCK_TAG
from mnist_lab.config import Config
from mnist_lab.errors import MnistLabError
from mnist_lab.sweep.space import LoadedSpace


@dataclass(frozen=True)
class StudySetup:
    """What both engines are handed by the driver: the study, checked, and where it is recorded."""

    name: str
    space: LoadedSpace
    overrides: dict[str, Any]  # the command line's key=value, for every trial
    base: Config  # the base config with the space's fixed keys and the overrides: what the rungs and display count in
    data_dir: str | None
    experiment_id: str

    def config_for(self, values: dict[str, Any]) -> Config:
        return self.space.config_for(values, self.overrides)


def trial_run_name(study_name: str, number: int, outcome: str = "") -> str:
    """`trial N · <study>`, `trial N pruned · <study>` or `trial N failed · <study>`: MLflow's run list
    has no such statuses, and cuts long names short, so what tells runs apart comes first."""
    return f"trial {number}" + (f" {outcome}" if outcome else "") + f" · {study_name}"


def describe_trial(client, run_id: str, study_name: str, number: int, outcome: str) -> None:
    """The trial's description in MLflow's UI: which study, and how it ended."""
    client.set_tag(run_id, tracking.DESCRIPTION_TAG, f"Trial {number} of study {study_name}, {outcome}.")


def completed(scores: dict[str, float], result, config) -> str:
    """How a complete trial ended, for its description: its scores, epochs, images, precision and size."""
    from mnist_lab.train import resolve_precision

    return (f"complete: {', '.join(f'{m} {v:.4f}' for m, v in scores.items())} after {result.epochs_run} epochs of "
            f"{config.data.train_count():,} images ({resolve_precision(config).precision}, {result.param_count:,} parameters)")


def trial_tags(study_name: str, number: int, engine: str) -> dict[str, str]:
    return {"mnist_lab.kind": "trial", "study": study_name, "trial_number": str(number), "engine": engine,
            "state": "RUNNING", "worker": tracking.worker_id()}


def study_runs(client, study: StudySetup) -> list:
    """The MLflow runs of studies named like this one (one, unless a name was reused)."""
    return client.search_runs([study.experiment_id], f"tags.`mnist_lab.kind` = 'study' and tags.study = '{study.name}'",
                              max_results=100)


def create_parent_run(study: StudySetup, engine: str, search_state: str, sampler: str | None = None) -> str:
    """The study's own run. `search_state`: where the engine keeps the study's progress (the Optuna
    storage, password masked, or KerasTuner's folder), which a resumed study must find again."""
    from mlflow import MlflowClient

    s = study.space.space
    commit, dirty = provenance.git_state()
    client = MlflowClient()
    run = client.create_run(
        study.experiment_id,
        run_name=study.name,
        tags={
            "mnist_lab.kind": "study", "study": study.name, "space_file": str(study.space.path),
            "space": study.space.text[:5000], "engine": engine, "sampler": sampler or s.sampler,
            "sampler_seed": str(s.seed), "pruner": s.pruner,
            "objective": ", ".join(f"{o.way} {o.metric}" for o in s.objective), "n_trials": str(s.budget.n_trials or "none"),
            "timeout": str(s.budget.timeout or "none"), "plateau": str(s.budget.plateau or "none"),
            "git_commit": commit, "git_dirty": str(dirty).lower(), "command": tracking.command_line(),
            "tracking_uri": tracking.redact(tracking.current_uri()), "worker": tracking.worker_id(),
            "search_state": search_state,
        },
    )
    client.log_text(run.info.run_id, study.space.text, f"space/{study.space.path.name}")
    return run.info.run_id


def check_parent_run(client, run_id: str, study_name: str, logged_to: str | None, instead: str) -> None:
    """A study's search state (Optuna storage, KerasTuner folder) names its parent run; the tracking
    store in use must hold it, or every trial would be logged under a run that does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        run = None
    if run is None or run.info.lifecycle_stage == "deleted":
        here = tracking.redact(tracking.current_uri())
        was = f" (it logged to {logged_to})" if logged_to and logged_to != here else ""
        raise MnistLabError(
            f"study {study_name}: its MLflow run {run_id} is not in the tracking store {here}{was}; the store was "
            f"switched or wiped since the study started. Point MLFLOW_TRACKING_URI back at that store, or start "
            f"afresh with {instead}"
        )


def record_impossible(client, study: StudySetup, parent_run_id: str, tags: dict, values: dict, reason: str) -> None:
    """An impossible configuration still gets its run, failed, with the reason: no silent gaps."""
    run = client.create_run(
        study.experiment_id,
        tags=tags | {"state": "FAIL", "failure_reason": reason, "mlflow.parentRunId": parent_run_id},
        run_name=trial_run_name(tags["study"], tags["trial_number"], "failed"),
    )
    for key, value in values.items():
        client.log_param(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, status="FAILED")


def end_killed(client, run_id: str, reason: str) -> None:
    client.set_tag(run_id, "state", "FAIL")
    client.set_tag(run_id, "failure_reason", reason)
    client.set_terminated(run_id, status="KILLED")


def end_dead_runs(client, study: StudySetup, parent_run_id: str) -> int:
    """End the study's runs left RUNNING by dead processes on this machine (as KILLED), and free a
    confirmation claim a dead process held; returns how many runs were ended."""
    ended = 0
    runs = client.search_runs([study.experiment_id], f"tags.study = '{study.name}' and attributes.status = 'RUNNING'",
                              max_results=1000)
    for run in runs:
        if run.data.tags.get("mnist_lab.kind") in ("trial", "confirm") and tracking.worker_is_dead(run.data.tags.get("worker")):
            end_killed(client, run.info.run_id, "its worker stopped mid-run (killed or crashed)")
            ended += 1
    held = client.get_run(parent_run_id).data.tags.get(LOCK_TAG)
    if held and tracking.worker_is_dead(held.rsplit("@", 1)[0]):
        client.delete_tag(parent_run_id, LOCK_TAG)
    return ended


def end_interrupted(client, study: StudySetup, parent_run_id: str, workers: set[str]) -> None:
    """After Ctrl-C or SIGTERM: the study's runs these workers left unfinished (RUNNING, or FAILED by
    MLflow on the way out) and the study's own run end KILLED, saying so."""
    for run in client.search_runs([study.experiment_id], f"tags.study = '{study.name}' and attributes.status != 'FINISHED' "
                                  "and attributes.status != 'KILLED'", max_results=1000):
        if run.data.tags.get("worker") in workers:
            end_killed(client, run.info.run_id, "interrupted (Ctrl-C or SIGTERM); it runs again on resume")
    client.set_tag(parent_run_id, "stopped", "interrupted (Ctrl-C or SIGTERM)")
    client.set_terminated(parent_run_id, status="KILLED")


def record_search(client, parent_run_id: str, trials: str, stopped: str, best: tuple[int, str, float] | None) -> str | None:
    """On the study's run: trials by state, why the search stopped, and its best trial (number,
    metric, value); returns the best trial's line for the description."""
    client.set_tag(parent_run_id, "trials", trials)
    client.set_tag(parent_run_id, "stopped", stopped)
    if best is None:
        return None
    number, metric, value = best
    client.set_tag(parent_run_id, "best_trial", str(number))
    # Not best_val_accuracy: that is each trial's own metric, and the study's value would be
    # charted as one more bar among the trials.
    client.log_metric(parent_run_id, f"study_best_{metric}", value)
    return f"trial {number}: {metric} {value:.4f}"


def report_line(study_name: str, html: Path | None = None) -> str:
    """The description's line saying where the study's report is (`mnist-lab report` rewrites it)."""
    where = html.resolve() if html else f"`mnist-lab report --study {study_name}` writes reports/{study_name}/index.html"
    return f"- report: {where} (also logged here, under report/)"


def finish(client, parent_run_id: str, study_name: str, summary: dict, status: str) -> None:
    """The study run's description in MLflow's UI (trials by state, best trial, verdict, where the
    report is), then its end: FINISHED, or FAILED for a study that stopped short of its budget."""
    verdict = summary.get("verdict")
    lines = [f"**Study {study_name}**", "", f"- trials: {summary.get('trials', '?')}",
             f"- {summary.get('stopped') or summary.get('failed') or 'not finished'}"]
    if summary.get("best_line"):
        lines.append(f"- best trial by the search: {summary['best_line']}")
    if verdict is not None:
        lines.append(f"- confirmation over seeds: {verdict.reason}")
        if verdict.model_version:
            lines.append(f"- champion: {tracking.MODEL_NAME} version {verdict.model_version}")
    if summary.get("test"):
        lines.append(f"- the one test-set evaluation: test_accuracy {summary['test']['test_accuracy']:.4f} "
                     f"(run {summary['test']['run_id']})")
    lines.append(report_line(study_name))
    client.set_tag(parent_run_id, tracking.DESCRIPTION_TAG, "\n".join(lines))
    client.set_terminated(parent_run_id, status=status)
