"""One Optuna trial: the space's values -> a config -> `train()` with pruning reports -> the objective.

Within an epoch the pruner is fed validation accuracy on a fixed stratified slice of the
validation set (a second's work), REPORTS_PER_EPOCH times, at training images seen; at each
epoch's end, the full validation set. So a hopeless trial stops in its first epoch (most trials
cost seconds), and trials are compared at equal images seen whatever their batch size.
"""

from __future__ import annotations

import contextlib
import math
import time

import keras
import mlflow
import numpy as np
import optuna
from mlflow import MlflowClient

from mnist_lab import data, tracking
from mnist_lab.config import Config
from mnist_lab.errors import ConfigError, StoreLost, causes, store_fault
from mnist_lab.sweep import recovery
from mnist_lab.sweep.budget import Halt
from mnist_lab.sweep.pruning import BATCH_ATTR, REPORTS_PER_EPOCH, RUN_ATTR, SCHEDULE_ATTR, SLICE_IMAGES
from mnist_lab.sweep.records import StudySetup, completed, describe_trial, record_impossible, trial_run_name, trial_tags
from mnist_lab.sweep.space import EPOCH_METRICS, suggest_optuna
from mnist_lab.train import TrainResult, train


class Surplus(Exception):
    """Another worker took the last trial of the budget at the same moment."""


def validation_slice(config: Config, data_dir: str | None, size: int = SLICE_IMAGES):
    """The same stratified `size` validation images for every trial of a split, as model input and labels."""
    split = data.load_split(config.data, data_dir)
    x, y = data.stratified_subset(split.x_val, split.y_val, size, seed=0)
    return data.to_model_input(x), y


def stopped(error: BaseException) -> bool:
    """Whether `error` replaced the KeyboardInterrupt that stops a trial (MLflow ending the run FAILED on
    a locked store, say): the trial was interrupted, not failed by its configuration."""
    return any(isinstance(c, KeyboardInterrupt) for c in causes(error))


class ReportProgress(keras.callbacks.Callback):
    """Feeds the pruner REPORTS_PER_EPOCH validation scores per epoch, at training images seen;
    stops the fit when the pruner says so, and raises KeyboardInterrupt when `stop` is set."""

    def __init__(self, trial: optuna.Trial, config: Config, metric: str | None, data_dir: str | None, stop: Halt):
        super().__init__()
        self.trial, self.config, self.metric, self.data_dir, self.stop = trial, config, metric, data_dir, stop
        self.pruned_at, self.run_id, self.slice = None, None, None
        self.batch = config.train.batch_size
        self.epoch_images = config.data.train_count()
        self.every = max(1, config.train.steps_per_epoch(self.epoch_images) // REPORTS_PER_EPOCH)

    def on_train_begin(self, logs=None):
        # The baseline is what every trial is judged against and what confirmation retrains:
        # it reports its curve like any trial but always runs to the end.
        self.prunable = not self.trial.user_attrs.get("baseline")
        self.run_id = mlflow.active_run().info.run_id
        self.trial.set_user_attr("mlflow_run_id", self.run_id)
        if self.metric == "val_accuracy":
            self.slice = validation_slice(self.config, self.data_dir)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.next_report = epoch, self.every

    def on_train_batch_end(self, batch, logs=None):
        if self.stop.is_set():  # Ctrl-C, SIGTERM or SIGHUP: this trial ends here, and is retried on resume
            raise KeyboardInterrupt
        # With steps_per_execution, Keras calls this once per compiled call, `batch` being its last step.
        if self.slice is None or batch + 1 < self.next_report or self.next_report >= self.every * REPORTS_PER_EPOCH:
            return
        seen = (batch + 1) * self.batch
        if seen >= self.epoch_images:
            return  # the epoch's last call: its end reports the full validation set at this step
        self.next_report = (batch + 1) // self.every * self.every + self.every
        x, y = self.slice
        accuracy = float(np.mean(self.model.predict_on_batch(x).argmax(axis=1) == y))
        self.report(accuracy, self.epoch * self.epoch_images + seen)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.metric) if self.metric else None
        if value is not None and math.isfinite(value):
            self.report(float(value), (epoch + 1) * self.epoch_images, last=epoch + 1 >= self.params.get("epochs", 0))

    def report(self, value: float, images_seen: int, last: bool = False) -> None:
        if self.pruned_at:
            return
        self.trial.report(value, step=images_seen)
        # After the last epoch there is nothing left to save: the trial is complete, not pruned.
        if not last and self.prunable and self.trial.should_prune():
            self.pruned_at = images_seen
            self.model.stop_training = True


def objective_value(result: TrainResult, metric: str) -> float:
    if metric == "val_accuracy":
        return result.val_accuracy
    if metric == "val_loss":
        return result.val_loss
    if metric == "param_count":
        return float(result.param_count)
    if metric == "train_seconds":
        return result.train_seconds
    return latency_ms(result.model)


def latency_ms(model: keras.Model, repeats: int = 30) -> float:
    """Median time to classify one image, ms: what a person waiting on `predict` feels."""
    x = np.zeros((1, 28, 28, 1), np.float32)
    model(x, training=False)  # warm-up: tracing and allocation are not latency
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x, training=False)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


class Objective:
    """`objective(trial)` for `study.optimize`: one trial of the study, a nested MLflow run under its run."""

    def __init__(self, study: StudySetup, parent_run_id: str, stop: Halt):
        self.study, self.parent_run_id, self.stop = study, parent_run_id, stop
        self.client = MlflowClient()
        objectives = study.space.space.objective
        self.metrics = [o.metric for o in objectives]
        self.report_metric = self.metrics[0] if len(self.metrics) == 1 and self.metrics[0] in EPOCH_METRICS else None

    def __call__(self, trial: optuna.Trial):
        try:
            # First of all, so that a worker stopped at any instant of the trial finds it as its own.
            trial.set_user_attr("worker", tracking.worker_id())
            return self.run_trial(trial)
        except (optuna.TrialPruned, Surplus):
            raise
        except KeyboardInterrupt:
            self.interrupted(trial)
            raise
        except Exception as e:
            if stopped(e):  # the stop's KeyboardInterrupt, replaced on its way out by an error of the clean-up
                self.interrupted(trial)
                raise KeyboardInterrupt from e
            fault = store_fault(e)
            if fault is None:
                raise
            # Not the configuration's fault: the sweep stops, and the trial runs again on resume.
            self.stop.set(fault)
            with contextlib.suppress(Exception):  # the store that went away may be the one holding the trial
                trial.set_user_attr("interrupted", True)
                trial.set_user_attr("fail_reason", f"{fault}; runs again on resume")
            raise StoreLost(fault) from e

    @staticmethod
    def interrupted(trial: optuna.Trial) -> None:
        """Not the configuration's fault, wherever in the trial the stop lands (training, or the logging
        around it): the trial runs again on resume, and its run ends KILLED."""
        with contextlib.suppress(Exception):
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("fail_reason", "interrupted; runs again on resume")

    def run_trial(self, trial: optuna.Trial):
        from optuna.trial import TrialState

        study, client = self.study, self.client
        ahead = [t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
                 if t.number < trial.number and not t.user_attrs.get("surplus")]
        cap = study.space.space.budget.n_trials
        if cap is not None and len(ahead) >= cap:
            trial.set_user_attr("surplus", True)
            raise Surplus("the study's budget was already taken by other workers")
        tags = trial_tags(study.name, trial.number, "optuna")
        retry_of = recovery.retried_trial_number(trial.study.trials[trial.number])
        if retry_of is not None:
            tags["retry_of_trial"] = str(retry_of)
        if trial.user_attrs.get("baseline"):
            tags["baseline"] = "true"  # the report and MLflow's run list mark it
        values = suggest_optuna(trial, study.space.space)
        try:
            config = study.config_for(values)
        except ConfigError as e:
            reason = str(e).split(": ", 1)[-1]
            record_impossible(client, study, self.parent_run_id, tags, values, reason)
            trial.set_user_attr("fail_reason", reason)
            raise
        # The pruner ranks a trial only against trials at the same point of the same rate schedule, and
        # holds it to the floor only against trials of its batch size.
        trial.set_user_attr(SCHEDULE_ATTR, config.train.lr_schedule)
        trial.set_user_attr(RUN_ATTR, config.train.epochs * config.data.train_count())
        trial.set_user_attr(BATCH_ATTR, config.train.batch_size)
        watcher = ReportProgress(trial, config, self.report_metric, study.data_dir, self.stop)
        try:
            # A pruned trial keeps its curves, config and environment; plots and a model of a fraction
            # of a run are not worth their seconds (most trials are pruned).
            result = train(config, data_dir=study.data_dir, run_name=trial_run_name(study.name, trial.number), tags=tags,
                           callbacks=[watcher], parent_run_id=self.parent_run_id, progress=False,
                           log_model=lambda: watcher.pruned_at is None, log_plots=lambda: watcher.pruned_at is None)
        except Exception as e:
            if stopped(e):
                raise  # a stop, not a failure: told apart in __call__
            # An exception raised without a message still says what failed (an empty reason would read as
            # a worker that died).
            trial.set_user_attr("fail_reason", str(e)[:500] or type(e).__name__)
            if watcher.run_id:
                client.set_tag(watcher.run_id, "state", "FAIL")
                client.update_run(watcher.run_id, name=trial_run_name(study.name, trial.number, "failed"))
                describe_trial(client, watcher.run_id, study.name, trial.number, f"failed: {str(e)[:300]}")
            raise
        for key, value in (("mlflow_run_id", result.run_id), ("epochs_run", result.epochs_run),
                           ("train_seconds", result.train_seconds), ("param_count", result.param_count)):
            trial.set_user_attr(key, value)
        if watcher.pruned_at:
            client.set_tag(result.run_id, "state", "PRUNED")
            client.set_tag(result.run_id, "pruned_at_images", str(watcher.pruned_at))
            client.set_tag(result.run_id, "pruned_at_epoch", f"{watcher.pruned_at / config.data.train_count():.2f}")
            client.update_run(result.run_id, name=trial_run_name(study.name, trial.number, "pruned"))
            describe_trial(client, result.run_id, study.name, trial.number,
                           f"pruned at epoch {watcher.pruned_at / config.data.train_count():.2f} ({watcher.pruned_at:,} training images): "
                           f"its {self.report_metric or 'score'} there was not among the best of the trials at that point of "
                           f"its {config.train.lr_schedule} schedule")
            raise optuna.TrialPruned(f"pruned after {watcher.pruned_at:,} training images")
        scores = [objective_value(result, metric) for metric in self.metrics]
        client.set_tag(result.run_id, "state", "COMPLETE")
        describe_trial(client, result.run_id, study.name, trial.number, completed(dict(zip(self.metrics, scores)), result, config))
        if "latency_ms" in self.metrics:
            client.log_metric(result.run_id, "latency_ms", scores[self.metrics.index("latency_ms")])
        return scores[0] if len(scores) == 1 else scores
