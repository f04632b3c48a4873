"""KerasTuner as the second sweep engine, reading the same space file and logging the same shape.

    mnist-lab sweep experiments/smoke.yaml --engine keras-tuner

The space's `tuner` key picks the algorithm (random, bayesian, hyperband); by default a
`hyperband` pruner means Hyperband, a `random` sampler RandomSearch, anything else Bayesian
optimisation. Each KerasTuner trial calls the same `train()` as Optuna trials do, as a nested
MLflow run tagged like theirs, so studies from both engines compare run for run. The tuner's
own state lives in mlruns/keras_tuner/<study>/, which is what makes a rerun resume.

The budget is the space's, read as the Optuna engine reads it: a time budget is the study's (its
spans in mlruns/keras_tuner/<study>/time_spans.json, summed over invocations), and no trial starts
once it and the confirmation would not fit; `n_trials`, when set, caps RandomSearch and Bayesian
optimisation (Hyperband sizes its own brackets); `plateau`, when set, stops RandomSearch and Bayesian
optimisation after that many complete trials without a better one. `confirm.max_seeds` is the
Optuna engine's alone.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

from mnist_lab import champion, tracking
from mnist_lab.errors import ConfigError, Interrupted, MnistLabError, StoreLost, store_fault
from mnist_lab.sweep import records
from mnist_lab.sweep.budget import Clock, reserve_seconds
from mnist_lab.sweep.display import verdict_lines
from mnist_lab.sweep.records import StudySetup
from mnist_lab.sweep.objective import objective_value
from mnist_lab.sweep.space import LoadedSpace, declare_keras_tuner


def algorithm(space: LoadedSpace) -> str:
    s = space.space
    if s.tuner:
        return s.tuner
    return "hyperband" if s.pruner == "hyperband" else "random" if s.sampler == "random" else "bayesian"


def previous_model(client, setup: StudySetup, number: int):
    """The model a Hyperband trial continues: the one logged by trial `number` of this study."""
    import mlflow.keras

    study_name = setup.name
    runs = client.search_runs([setup.experiment_id], f"tags.study = '{study_name}' and tags.trial_number = '{number}' "
                              "and tags.`mnist_lab.kind` = 'trial' and tags.state = 'COMPLETE'", max_results=1)
    if not runs:
        raise MnistLabError(f"study {study_name}: Hyperband continues trial {number}, whose model is not in the MLflow store")
    return mlflow.keras.load_model(tracking.model_uri(runs[0].info.run_id))


class SpansFile:
    """The study's time spans kept in the tuner's project folder: what an Optuna study keeps in its
    user attributes, for the same Clock."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def user_attrs(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def set_user_attr(self, key: str, value) -> None:
        spans = self.user_attrs | {key: value}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(spans))
        tmp.replace(self.path)  # a kill mid-write leaves the last spans, never half a file


def time_is_up(clock: Clock, space: LoadedSpace, trial_seconds: list[float]) -> bool:
    """No room for another trial and the confirmation: each taking as long as a median trial (KerasTuner
    runs every trial to its end), with at least `confirm.reserve` of the budget free."""
    if clock.end is None:
        return False
    s = space.space
    typical = statistics.median(trial_seconds) if trial_seconds else 0.0
    confirmation = ((s.confirm.seeds - 1) * s.confirm.top + s.confirm.seeds) * typical  # the baseline from its config
    return time.time() + typical + max(confirmation, reserve_seconds(space)) >= clock.end


def plateaued(oracle, plateau: int | None) -> int | None:
    """The best trial's number once `plateau` trials completed after it (KerasTuner's ids count up)
    without beating it; else None. A tie keeps the earlier trial best, whatever order a resume loaded them in."""
    if plateau is None:
        return None
    done = [t for t in oracle.trials.values() if t.status == "COMPLETED" and t.score is not None]
    if not done:
        return None
    sign = 1 if oracle.objective.direction == "max" else -1
    best = int(max(done, key=lambda t: (sign * t.score, -int(t.trial_id))).trial_id)
    return best if sum(int(t.trial_id) > best for t in done) >= plateau else None


def run(setup: StudySetup) -> dict[str, Any]:
    import keras_tuner as kt
    from mlflow import MlflowClient

    from mnist_lab.train import train

    space, study_name = setup.space, setup.name
    s = space.space
    if s.multi_objective:
        raise MnistLabError(f"{space.path}: the keras-tuner engine optimises one objective; use --engine optuna for several")
    objective = s.objective[0]
    algo = algorithm(space)
    project = Path("mlruns") / "keras_tuner" / study_name
    client = MlflowClient()
    parent_file, uri_file = project / "mlflow_parent_run_id", project / "mlflow_tracking_uri"
    if parent_file.exists():
        parent_run_id = parent_file.read_text().strip()
        records.check_parent_run(client, parent_run_id, study_name, uri_file.read_text().strip() if uri_file.exists() else None,
                                 f"--study NAME (or remove {project}/)")
        client.update_run(parent_run_id, status="RUNNING")
        records.end_dead_runs(client, setup, parent_run_id)
    else:
        parent_run_id = records.create_parent_run(setup, "keras-tuner", str(project.resolve()), sampler=algo)
        project.mkdir(parents=True, exist_ok=True)
        uri_file.write_text(tracking.redact(tracking.current_uri()))
        parent_file.write_text(parent_run_id)

    hp = kt.HyperParameters()
    declare_keras_tuner(hp, s)
    epochs_key = "train.epochs"
    max_epochs = space.max_epochs(setup.base)
    base = {"random": kt.RandomSearch, "bayesian": kt.BayesianOptimization, "hyperband": kt.Hyperband}[algo]
    # Without a trial cap the time budget stops the search (pre_create_trial): KerasTuner itself needs a count.
    budget = {"max_epochs": max_epochs, "factor": 3} if algo == "hyperband" else {"max_trials": s.budget.n_trials or 10_000}
    # Hyperband's trials run for different numbers of epochs: a 1-epoch trial not beating a 9-epoch one is no plateau.
    plateau = None if algo == "hyperband" else s.budget.plateau
    printed = []
    clock = Clock(SpansFile(project / "time_spans.json"), s.budget.timeout)
    seconds: list[float] = []

    class MlflowTuner(base):
        def pre_create_trial(self):
            clock.tick(now=True)
            if time_is_up(clock, space, seconds) or plateaued(self.oracle, plateau) is not None:
                # KerasTuner's own stop: its next trial is STOPPED (a cap of 0 would read as no cap at all).
                self.oracle.max_trials = len(self.oracle.trials) or -1
            super().pre_create_trial()

        def run_trial(self, trial, *args, **kwargs):
            try:
                return self.logged_trial(trial)
            except (kt.errors.FailedTrialError, kt.errors.FatalError):
                raise
            except Exception as e:
                if store_fault(e):  # not the configuration's fault: the search stops, the trial reruns on resume
                    raise kt.errors.FatalError(str(e)) from e
                raise

        def logged_trial(self, trial):
            values = {key: trial.hyperparameters.get(key) for key in s.params}
            if algo == "hyperband":
                values[epochs_key] = trial.hyperparameters.get("tuner/epochs")  # Hyperband owns the epoch budget
            number = int(trial.trial_id)
            tags = records.trial_tags(study_name, number, "keras-tuner")
            try:
                config = setup.config_for(values)
            except ConfigError as e:
                reason = str(e).split(": ", 1)[-1]
                records.record_impossible(client, setup, parent_run_id, tags, values, reason)
                printed.append(f"trial {number:>3} FAIL     {reason}")
                raise kt.errors.FailedTrialError(reason) from None
            warm_start = None
            previous = trial.hyperparameters.values.get("tuner/trial_id")
            if algo == "hyperband" and previous is not None:
                # Hyperband promotes a configuration to more epochs: continue the run it promotes
                # (its model is in MLflow) from `tuner/initial_epoch`, instead of starting again.
                warm_start = (previous_model(client, setup, int(previous)),
                              int(trial.hyperparameters.get("tuner/initial_epoch")))
                tags["resumed_from_trial"] = str(int(previous))
            try:
                result = train(config, data_dir=setup.data_dir, run_name=records.trial_run_name(study_name, number), tags=tags,
                               parent_run_id=parent_run_id, progress=False, warm_start=warm_start)
            except Exception as e:
                if store_fault(e):  # not the configuration's fault: the search stops, the trial reruns on resume
                    raise kt.errors.FatalError(str(e)) from e
                printed.append(f"trial {number:>3} FAIL     {e}")
                raise kt.errors.FailedTrialError(str(e)) from None
            seconds.append(result.train_seconds)
            client.set_tag(result.run_id, "state", "COMPLETE")
            value = objective_value(result, objective.metric)
            records.describe_trial(client, result.run_id, study_name, number, records.completed({objective.metric: value}, result, config))
            print(f"trial {number:>3} COMPLETE {objective.metric} {value:.4f} ({result.train_seconds:.0f} s) "
                  + " ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in values.items()), flush=True)
            return {objective.metric: value}

    tuner = MlflowTuner(
        hypermodel=None,
        objective=kt.Objective(objective.metric, direction="max" if objective.way == "maximize" else "min"),
        hyperparameters=hp,
        seed=s.seed,
        directory=str(project.parent),
        project_name=study_name,
        overwrite=False,  # reloading the oracle's saved trials is what resumes a study
        max_consecutive_failed_trials=s.budget.max_consecutive_failures,
        **budget,
    )

    def lost(fault: str, error: Exception) -> StoreLost:
        return StoreLost(f"{fault} mid-study ({tracking.redact(str(error).splitlines()[0])[:200]}); study {study_name} "
                         f"stopped. Finished trials are kept; the running one reruns. Once it is back, resume with: "
                         f"{tracking.resume_command()}")

    failed_out = None
    try:
        tuner.search(verbose=0)
        clock.tick(now=True)
    except RuntimeError as e:
        if "consecutive failures" not in str(e):
            raise
        failed_out = (f"stopped: {s.budget.max_consecutive_failures} trials failed in a row, the limit "
                      f"budget.max_consecutive_failures (the last: {str(e).splitlines()[-1][:200]}); fix the space and run again")
    except KeyboardInterrupt:
        # KerasTuner reruns an unfinished trial from its saved oracle state on the next start.
        try:
            records.end_interrupted(client, setup, parent_run_id, {tracking.worker_id()})
        except Exception as e:  # stopped while a store was away: that store's paragraph, not a traceback
            if (fault := store_fault(e)) is None:
                raise
            raise lost(fault, e) from None
        raise Interrupted(f"stopped cleanly; resume with: {tracking.resume_command()}") from None
    except Exception as e:  # KerasTuner's FatalError from a trial, or its own state failing to save
        fault = store_fault(e)
        if fault is None:
            raise
        with contextlib.suppress(Exception):  # as far as the stores still allow
            records.end_interrupted(client, setup, parent_run_id, {tracking.worker_id()})
        raise lost(fault, e) from None
    for line in printed:
        print(line)

    parent = client.get_run(parent_run_id)
    runs = champion.ranked_trial_runs(client, parent, objective.metric, objective.way == "maximize")
    failed = client.search_runs([setup.experiment_id], f"tags.study = '{study_name}' and tags.state = 'FAIL'")
    timed_out = clock.end is not None and time_is_up(clock, space, seconds)
    best_number = plateaued(tuner.oracle, plateau)
    stopped = failed_out or (f"stopped: the study's time budget ({s.budget.timeout:.0f} s) has room only for the confirmation, "
                             f"after {len(runs)} complete trials" if timed_out
                             else f"stopped: {plateau} trials completed after trial {best_number}, then the best, without beating "
                                  f"it (budget.plateau); {len(runs)} complete trials" if best_number is not None
                             else f"stopped: KerasTuner's {algo} search is done ({len(runs)} complete trials)")
    print(stopped, flush=True)
    trials = f"{len(runs)} complete, 0 pruned, {len(failed)} failed"
    best = runs[0] if runs else None
    summary: dict[str, Any] = {"study": study_name, "parent_run_id": parent_run_id, "engine": "keras-tuner",
                               "trials": trials, "stopped": stopped}
    summary["best_line"] = records.record_search(
        client, parent_run_id, trials, stopped,
        (int(best.data.tags["trial_number"]), objective.metric, best.data.metrics[objective.metric]) if best else None)
    if failed_out:  # an unfinished study crowns nothing
        summary["failed"] = failed_out
    elif best is not None:
        confirm = s.confirm
        # KerasTuner runs no baseline trial: the baseline is confirmed from its config.
        verdict = champion.confirm_and_crown(study_name, parent_run_id, [r.info.run_id for r in runs], setup.base, confirm.top,
                                             confirm.seeds, setup.data_dir, floor=confirm.min_val_accuracy,
                                             on_result=lambda *_: clock.tick(now=True))
        for line in verdict_lines(verdict):
            print(line)
        summary["verdict"] = verdict
        summary["test"] = champion.evaluate_answer(verdict, best.info.run_id, confirm.min_val_accuracy, setup.data_dir)
    records.finish(client, parent_run_id, study_name, summary, "FAILED" if failed_out else "FINISHED")
    return summary
