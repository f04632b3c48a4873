"""What every sweep engine shares: the study's MLflow runs, trial records, the objective, and the
confirmation over seeds that decides whether a study crowns a new champion.

`sweep.py` (Optuna) and `tuner.py` (KerasTuner) both import this; it imports neither. A study is
one parent MLflow run (tag `mnist_lab.kind=study`) with one nested run per trial (`trial`) and
per confirmation seed (`confirm`). After the search, `confirm_and_crown` retrains the top
configurations and the baseline until each has N seeds, and registers `mnist-cnn@champion`
only when the best configuration's seed mean beats the baseline's and the current champion's
with p < ALPHA (Welch's one-sided t-test), measured on the same validation images.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist_lab import tracking
from mnist_lab.config import Config, MnistLabError

ALPHA = 0.05  # one-sided significance a new champion must reach against each incumbent
BASELINE = "baseline"  # the labels of the incumbents a trial must beat (the report reads them back from the runs)
CHAMPION = "current champion"
# The data settings that decide which images are validation images: runs that differ in any of
# these (or in the MNIST content digest) were scored on different images and are not compared.
SPLIT_KEYS = ("data.validation_size", "data.seed")


# --- runs --------------------------------------------------------------------------------------


def worker_id(pid: int | None = None) -> str:
    """host:pid of this process (or of its child `pid`): written on every trial and confirmation run it starts."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def worker_is_dead(worker: str | None) -> bool:
    """True only for a worker on this machine whose process is gone (SIGKILL, OOM, power cut).

    What it left RUNNING can be ended at once instead of after the heartbeat grace period;
    workers on other machines are judged by their heartbeats alone."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def trial_run_name(study_name: str, number: int, outcome: str = "") -> str:
    """`<study>-trial-N`, with `-pruned` or `-failed` once that is its outcome: MLflow's run list
    has no such statuses, so the name tells them apart at a glance."""
    return f"{study_name}-trial-{number}" + (f"-{outcome}" if outcome else "")


def confirm_run_name(label: str, seed: int) -> str:
    """`confirm · trial 3 · seed 2`: a confirmation seed, by the sweep's confirmation or `make confirm`."""
    return f"confirm · {label} · seed {seed}"


def trial_tags(study_name: str, number: int, engine: str) -> dict[str, str]:
    return {"mnist_lab.kind": "trial", "study": study_name, "trial_number": str(number), "engine": engine,
            "state": "RUNNING", "worker": worker_id()}


def end_dead_runs(client, study_name: str, parent_run_id: str) -> int:
    """End the study's runs left RUNNING by dead processes on this machine (as KILLED), and free a
    confirmation claim a dead process held; returns how many runs were ended."""
    ended = 0
    runs = client.search_runs([tracking.setup()], f"tags.study = '{study_name}' and attributes.status = 'RUNNING'", max_results=1000)
    for run in runs:
        if run.data.tags.get("mnist_lab.kind") in ("trial", "confirm") and worker_is_dead(run.data.tags.get("worker")):
            end_killed(client, run.info.run_id, "its worker stopped mid-run (killed or crashed)")
            ended += 1
    held = client.get_run(parent_run_id).data.tags.get(LOCK_TAG)
    if held and worker_is_dead(held.rsplit("@", 1)[0]):
        client.delete_tag(parent_run_id, LOCK_TAG)
    return ended


def end_interrupted(client, study_name: str, parent_run_id: str, workers: set[str]) -> None:
    """After Ctrl-C or SIGTERM: the study's runs these workers left unfinished (RUNNING, or FAILED by
    MLflow on the way out) and the study's own run end KILLED, saying so."""
    for run in client.search_runs([tracking.setup()], f"tags.study = '{study_name}' and attributes.status != 'FINISHED' "
                                  "and attributes.status != 'KILLED'", max_results=1000):
        if run.data.tags.get("worker") in workers:
            end_killed(client, run.info.run_id, "interrupted (Ctrl-C or SIGTERM); it runs again on resume")
    client.set_tag(parent_run_id, "stopped", "interrupted (Ctrl-C or SIGTERM)")
    client.set_terminated(parent_run_id, status="KILLED")


def end_killed(client, run_id: str, reason: str) -> None:
    client.set_tag(run_id, "state", "FAIL")
    client.set_tag(run_id, "failure_reason", reason)
    client.set_terminated(run_id, status="KILLED")


def create_parent_run(space, study_name: str, engine: str) -> str:
    from mlflow import MlflowClient

    s = space.space
    commit, dirty = tracking.git_state()
    client = MlflowClient()
    run = client.create_run(
        tracking.setup(),
        run_name=study_name,
        tags={
            "mnist_lab.kind": "study", "study": study_name, "space_file": str(space.path), "space": space.text[:5000],
            "engine": engine, "sampler": s.sampler, "pruner": s.pruner,
            "objective": ", ".join(f"{o.way} {o.metric}" for o in s.objective), "n_trials": str(s.budget.n_trials),
            "git_commit": commit, "git_dirty": str(dirty).lower(), "command": tracking.command_line(),
            "tracking_uri": tracking.redact(tracking.current_uri()),
        },
    )
    client.log_text(run.info.run_id, space.text, f"space/{space.path.name}")
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


def record_impossible(client, parent_run_id: str, tags: dict, values: dict, reason: str) -> None:
    """An impossible configuration still gets its run, failed, with the reason: no silent gaps."""
    run = client.create_run(
        tracking.setup(),
        tags=tags | {"state": "FAIL", "failure_reason": reason, "mlflow.parentRunId": parent_run_id},
        run_name=trial_run_name(tags["study"], tags["trial_number"], "failed"),
    )
    for key, value in values.items():
        client.log_param(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, status="FAILED")


def objective_value(result, metric: str) -> float:
    if metric == "val_accuracy":
        return result.val_accuracy
    if metric == "val_loss":
        return result.val_loss
    if metric == "param_count":
        return float(result.param_count)
    if metric == "train_seconds":
        return result.train_seconds
    return latency_ms(result.model)


def latency_ms(model, repeats: int = 30) -> float:
    """Median time to classify one image, ms: what a person waiting on `predict` feels."""
    import numpy as np

    x = np.zeros((1, 28, 28, 1), np.float32)
    model(x, training=False)  # warm-up: tracing and allocation are not latency
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x, training=False)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def evaluate_once(run_id: str, data_dir: str | None = None) -> dict[str, Any]:
    """The study's one test-set evaluation, of the run it answers with; reused if already done."""
    import mlflow.keras
    from mlflow import MlflowClient

    from mnist_lab.train import evaluate_test_set

    run = MlflowClient().get_run(run_id)
    if "test_accuracy" in run.data.metrics:  # e.g. a finished study run again
        return {"run_id": run_id, "test_accuracy": run.data.metrics["test_accuracy"]}
    accuracy, _ = evaluate_test_set(mlflow.keras.load_model(tracking.model_uri(run_id)), run_id, data_dir)
    return {"run_id": run_id, "test_accuracy": accuracy}


# --- confirmation over seeds -------------------------------------------------------------------


def welch_greater(a: list[float], b: list[float]) -> float:
    """One-sided p-value that mean(a) > mean(b) (Welch's t-test: no equal-variance assumption).

    Identical constant samples (zero spread in both) give p = 1 if the means are equal or a's
    is lower, and p = 0 if a's is higher: the test is undefined there, the order is not.
    """
    import numpy as np
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's t-test needs at least two seeds on each side")
    if np.std(a) == 0 and np.std(b) == 0:
        return 0.0 if np.mean(a) > np.mean(b) else 1.0
    with warnings.catch_warnings():  # near-identical seed scores: scipy warns, the p-value is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)


def is_incumbent(label: str) -> bool:
    """Is this confirmation label the baseline's or the current champion's (what a trial must beat)?"""
    return label == BASELINE or label.startswith(CHAMPION)


@dataclass
class Contender:
    """A configuration with its validation accuracy per training seed, and where it was measured."""

    label: str  # "trial 7", "baseline", "current champion (version 3)"
    rank: int  # 1 = the study's best trial; incumbents come after the candidates
    source_run_id: str  # the run whose config.yaml (and, for a trial, model) this is
    config: Config
    split: tuple  # (data digest, *SPLIT_KEYS values): which validation images the scores are on
    scores: dict[int, float] = field(default_factory=dict)  # train.seed -> val_accuracy

    @property
    def values(self) -> list[float]:
        return [self.scores[s] for s in sorted(self.scores)]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)


@dataclass
class Verdict:
    promoted: bool
    reason: str  # one line for the console, the parent run and the report
    best: Contender | None = None
    contenders: list[Contender] = field(default_factory=list)
    p_values: dict[str, float] = field(default_factory=dict)  # incumbent label -> p
    model_version: str | None = None
    deferred: bool = False  # another worker of the study confirms: this one has no verdict to act on


def run_config(run_id: str) -> Config:
    """The resolved config a run trained with (its config.yaml artifact)."""
    import mlflow
    import yaml

    return Config.model_validate(yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")))


def contender(client, run, label: str, rank: int) -> Contender:
    config = run_config(run.info.run_id)
    split = (run.data.tags.get("data_digest"), *(run.data.params.get(k) for k in SPLIT_KEYS))
    return Contender(label, rank, run.info.run_id, config, split, {config.train.seed: run.data.metrics["val_accuracy"]})


def add_confirmation_runs(client, experiment_id: str, contenders: list[Contender]) -> None:
    """Fill in seeds already trained for these configurations (by this study or `make confirm`)."""
    ids = {c.source_run_id: c for c in contenders}
    for run in client.search_runs([experiment_id], "tags.`mnist_lab.kind` = 'confirm' and attributes.status = 'FINISHED'"):
        c = ids.get(run.data.tags.get("source_run_id"))
        if c is not None and "val_accuracy" in run.data.metrics:
            c.scores.setdefault(int(run.data.tags["seed"]), run.data.metrics["val_accuracy"])


def train_one_seed(c: Contender, parent_run_id: str, study_name: str, data_dir: str | None, on_result=None) -> None:
    """Retrain `c` once more, with the lowest training seed it has no score for."""
    from mnist_lab.train import train

    seed = 0
    while seed in c.scores:
        seed += 1
    seeded = c.config.model_copy(update={"train": c.config.train.model_copy(update={"seed": seed})})
    result = train(seeded, data_dir=data_dir, parent_run_id=parent_run_id, log_model=False, progress=False,
                   run_name=confirm_run_name(c.label, seed),
                   tags={"mnist_lab.kind": "confirm", "study": study_name, "source_run_id": c.source_run_id,
                         "source_label": c.label, "config_rank": str(c.rank), "seed": str(seed), "state": "CONFIRM",
                         "worker": worker_id(),
                         "source_trial": c.label.removeprefix("trial ") if c.label.startswith("trial ") else c.label})
    c.scores[seed] = result.val_accuracy
    if on_result:
        on_result(c, seed, result.val_accuracy)


def train_round_robin(contenders: list[Contender], seeds: int, parent_run_id: str, study_name: str,
                      data_dir: str | None, deadline: float | None, on_result=None) -> None:
    """One more seed for each in turn, fewest seeds first: if the deadline cuts the confirmation
    short, every configuration has as many seeds as the time allowed (a verdict needs 2 each),
    rather than the first ones 3 and the baseline 1."""
    while True:
        short = [c for c in contenders if len(c.scores) < seeds]
        if not short or (deadline is not None and time.time() > deadline):
            return
        train_one_seed(min(short, key=lambda c: len(c.scores)), parent_run_id, study_name, data_dir, on_result)


def current_champion(client):
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(tracking.MODEL_NAME, tracking.CHAMPION_ALIAS)
    except MlflowException:
        return None, None
    return version, (client.get_run(version.run_id) if version.run_id else None)


def judge(best: Contender, incumbents: list[Contender]) -> tuple[bool, str, dict[str, float]]:
    """Pure: does `best` beat every incumbent on the same validation images with p < ALPHA?"""
    p_values: dict[str, float] = {}
    for other in incumbents:
        if other.split != best.split:
            return False, (f"no confirmed improvement: {other.label} was scored on other validation images "
                           f"(data digest, validation_size, data.seed {other.split} against {best.split}); "
                           "retrain it on this split, or remove its alias, to crown anew"), p_values
        if len(best.scores) < 2 or len(other.scores) < 2:
            return False, (f"no confirmed improvement: {best.label} has {len(best.scores)} and {other.label} "
                           f"{len(other.scores)} seeds; confirmation needs at least 2 each (the time budget ran out)"), p_values
        p_values[other.label] = welch_greater(best.values, other.values)
    failed = [label for label, p in p_values.items() if p >= ALPHA]
    summary = ", ".join(f"{label}: p = {p:.3g}" for label, p in p_values.items())
    if failed:
        return False, f"no confirmed improvement: {best.label} ({best.mean:.4f}) does not beat {' and '.join(failed)} with p < {ALPHA} ({summary})", p_values
    if not p_values:
        return True, f"{best.label} is crowned: there is no baseline or champion to beat ({best.mean:.4f} over {len(best.scores)} seeds)", p_values
    return True, f"{best.label} beats {' and '.join(p_values)} ({best.mean:.4f} over {len(best.scores)} seeds; {summary})", p_values


LOCK_TAG = "confirmation_by"  # on the parent run: which worker is confirming, and since when
LOCK_SETTLE_SECONDS = 2.0  # how long claims may race before the last one written wins
LOCK_STALE_SECONDS = 6 * 3600  # a claim this old is a worker that died mid-confirmation


def claim_confirmation(client, parent_run_id: str) -> bool:
    """Only one of a study's workers (machines) runs its confirmation: the last claim written wins.

    MLflow tags are last-writer-wins; every claimant writes, waits for the others' writes to land,
    and reads back. A finished confirmation clears the claim; a stale one is taken over.
    """
    held = client.get_run(parent_run_id).data.tags.get(LOCK_TAG)
    holder, _, since = (held or "").rpartition("@")
    if held and time.time() - float(since) < LOCK_STALE_SECONDS and not worker_is_dead(holder):
        return False
    me = f"{worker_id()}@{time.time():.0f}"
    client.set_tag(parent_run_id, LOCK_TAG, me)
    time.sleep(LOCK_SETTLE_SECONDS)
    return client.get_run(parent_run_id).data.tags.get(LOCK_TAG) == me


def confirm_and_crown(study_name: str, parent_run_id: str, ranked_run_ids: list[str], baseline_run_id: str | None,
                      top: int, seeds: int, data_dir: str | None = None, deadline: float | None = None,
                      on_result=None) -> Verdict:
    """Retrain the top `top` trials, the baseline and the current champion to `seeds` seeds; crown if confirmed."""
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment_id = tracking.setup()
    if not ranked_run_ids:
        return Verdict(False, "no confirmed improvement: no trial completed")
    if not claim_confirmation(client, parent_run_id):
        return Verdict(False, "another worker of this study is running its confirmation; its verdict goes on the study's run",
                       deferred=True)
    try:
        return _confirm_and_crown(client, experiment_id, study_name, parent_run_id, ranked_run_ids, baseline_run_id,
                                  top, seeds, data_dir, deadline, on_result)
    finally:
        client.delete_tag(parent_run_id, LOCK_TAG)


def _confirm_and_crown(client, experiment_id, study_name, parent_run_id, ranked_run_ids, baseline_run_id, top, seeds,
                       data_dir, deadline, on_result) -> Verdict:
    runs = [client.get_run(r) for r in [r for r in ranked_run_ids if r != baseline_run_id][:top]]
    candidates = [contender(client, run, f"trial {run.data.tags.get('trial_number')}", rank) for rank, run in enumerate(runs, 1)]
    incumbents: list[Contender] = []
    if baseline_run_id:
        incumbents.append(contender(client, client.get_run(baseline_run_id), BASELINE, len(candidates) + 1))
    version, champion_run = current_champion(client)
    reigning = champion_run is not None and champion_run.info.run_id in {c.source_run_id for c in candidates}
    if champion_run is not None and not reigning and champion_run.info.run_id != baseline_run_id:
        incumbents.append(contender(client, champion_run, f"{CHAMPION} (version {version.version})", len(candidates) + 2))
    everyone = candidates + incumbents
    add_confirmation_runs(client, experiment_id, everyone)
    if not candidates:
        return Verdict(False, "no confirmed improvement: the baseline is the best trial", None, everyone)
    # A champion from other validation images is not retrained: it cannot be compared anyway.
    comparable = [c for c in everyone if c.split == candidates[0].split]
    train_round_robin(comparable, seeds, parent_run_id, study_name, data_dir, deadline, on_result)
    best = max(candidates, key=lambda c: c.mean)
    if reigning and best.source_run_id == champion_run.info.run_id:
        # A finished study run again: its answer is already the champion; no second version.
        reason = f"{best.label} is already mnist-cnn@champion (version {version.version})"
        client.set_tag(parent_run_id, "confirmation", reason)
        return Verdict(False, reason, best, everyone, model_version=version.version)
    promoted, reason, p_values = judge(best, incumbents)
    verdict = Verdict(promoted, reason, best, everyone, p_values)
    client.set_tag(parent_run_id, "confirmation", reason[:5000])
    if promoted:
        verdict.model_version = register_champion(client, study_name, best, verdict)
    return verdict


def register_champion(client, study_name: str, best: Contender, verdict: Verdict) -> str:
    """A new version of mnist-cnn, aliased @champion: the alias is the one record of who is champion
    (no champion tags on runs to go stale); the version says where it came from and why."""
    import mlflow

    run = client.get_run(best.source_run_id)
    seeds = ", ".join(f"{v:.4f}" for v in best.values)
    tags = {"study": study_name, "trial": best.label.removeprefix("trial "), "source_run_id": best.source_run_id,
            "data_digest": best.split[0] or "", "validation_size": str(best.split[1]), "data.seed": str(best.split[2]),
            "val_accuracy_seed_mean": f"{best.mean:.4f}", "val_accuracy_seeds": seeds,
            **{f"p_vs_{label.split(' (')[0].replace(' ', '_')}": f"{p:.3g}" for label, p in verdict.p_values.items()}}
    # MLflow prints "Successfully registered model ..." / "Created version ..." on stderr; the
    # sweep's own "crowned: registered as mnist-cnn@champion version N" says it once. Errors still raise.
    with contextlib.redirect_stderr(io.StringIO()):
        registered = mlflow.register_model(tracking.model_uri(best.source_run_id), tracking.MODEL_NAME, tags=tags)
    client.update_model_version(
        tracking.MODEL_NAME, registered.version,
        description=(f"{best.label} of study {study_name} (run {best.source_run_id}, "
                     f"{run.data.params.get('param_count', '?')} parameters): validation accuracy {best.mean:.4f} "
                     f"mean over {len(best.values)} training seeds ({seeds}). {verdict.reason}."),
    )
    if not client.get_registered_model(tracking.MODEL_NAME).description:
        client.update_registered_model(tracking.MODEL_NAME, description=(
            "MNIST digit classifiers crowned by mnist-lab sweeps. The @champion alias is the one confirmed over "
            "training seeds against the baseline and the previous champion; `mnist-lab predict` uses it."))
    client.set_registered_model_alias(tracking.MODEL_NAME, tracking.CHAMPION_ALIAS, registered.version)
    return registered.version


def report_line(study_name: str, html: Path | None = None) -> str:
    """The description's line saying where the study's report is (`mnist-lab report` rewrites it)."""
    where = html.resolve() if html else f"`mnist-lab report --study {study_name}` writes reports/{study_name}/index.html"
    return f"- report: {where} (also logged here, under report/)"


def describe_study(client, parent_run_id: str, study_name: str, summary: dict) -> None:
    """The study run's description in MLflow's UI: trials by state, best trial, verdict, where the report is."""
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


def describe(verdict: Verdict) -> list[str]:
    """Console lines: each configuration's seed scores, then the verdict."""
    lines = []
    for c in verdict.contenders:
        seeds = ", ".join(f"{c.scores[s]:.4f}" for s in sorted(c.scores))
        lines.append(f"  {c.label:<32} mean {c.mean:.4f} over {len(c.scores)} seeds ({seeds})")
    return lines + [("crowned: " if verdict.promoted else "") + verdict.reason]
