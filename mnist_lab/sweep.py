"""The sweep driver: search a space around the baseline, every trial an MLflow run.

    mnist-lab sweep experiments/sweep.yaml                      # Optuna, resumes if run again
    mnist-lab sweep experiments/smoke.yaml --n-trials 4 --workers 2
    mnist-lab sweep experiments/sweep.yaml --engine keras-tuner
    mnist-lab sweep experiments/sweep.yaml --storage postgresql://user@db/optuna   # one per machine

A study is one parent MLflow run with one nested run per trial (mnist_lab/study.py holds what
the two engines share, confirmation and crowning included). Running the same command
again continues the study: finished trials stay, a trial whose worker died (its process gone
from this machine, or no heartbeat for GRACE_SECONDS from another) is marked failed and its
configuration retried, and Ctrl-C or SIGTERM stops cleanly with the interrupted trial queued
first. `n_trials` counts finished trials (complete or pruned) over the whole study, across
restarts and workers; failed trials do not count, and `budget.max_consecutive_failures` in a
row end the study as broken.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist_lab import study as studies
from mnist_lab import tracking
from mnist_lab.config import ConfigError, Interrupted, MnistLabError, parse_overrides
from mnist_lab.space import EPOCH_METRICS, LoadedSpace, load_space
from mnist_lab.startup import import_tensorflow

HEARTBEAT_SECONDS = int(os.environ.get("MNIST_LAB_HEARTBEAT_SECONDS", 10))  # a live trial writes this often
GRACE_SECONDS = int(os.environ.get("MNIST_LAB_GRACE_SECONDS", 30))  # silence after which its worker counts as dead
MAX_RETRY = 2  # times a killed worker's configuration is tried again (an interrupted one: always)
STOP_WAIT_SECONDS = 30  # after Ctrl-C, how long running trials get to stop at their next batch
# Set on Ctrl-C or SIGTERM: running trials stop at their next batch and no trial starts.
STOP = threading.Event()
# Validation scores the pruner sees per epoch: 7 on a slice, then the full set. Pruning starts after
# the first (an eighth of an epoch, 3-6 s of training here), so most trials cost seconds.
REPORTS_PER_EPOCH = 8
SLICE_IMAGES = 1000  # the fixed, stratified slice of the validation set scored within an epoch


@dataclass
class SweepRequest:
    space_path: str
    n_trials: int | None = None
    timeout: float | None = None
    workers: int = 1
    study: str | None = None
    storage: str | None = None
    engine: str = "optuna"
    overrides: list[str] = field(default_factory=list)
    data_dir: str | None = None


def default_storage() -> str:
    Path("mlruns").mkdir(exist_ok=True)
    return f"sqlite:///{Path('mlruns').resolve() / 'optuna.db'}"


def run(request: SweepRequest) -> dict[str, Any]:
    """Validate everything, run the study, crown the champion; returns a summary."""
    space = load_space(request.space_path, request.n_trials, request.timeout)
    overrides = parse_overrides(request.overrides)
    space.config_for({}, overrides)  # a bad override fails here, before any trial
    if request.workers < 1:
        raise MnistLabError(f"--workers {request.workers}: must be at least 1")
    # The engine is in the default name: `make sweep ENGINE=keras-tuner` after `make sweep` starts
    # its own study instead of mixing its trials, counts and champion into Optuna's.
    study_name = request.study or f"{Path(request.space_path).stem}-{request.engine}"
    # The data and both stores are checked before TensorFlow loads: a missing dataset or a wrong
    # URL costs seconds, not a trial that fails for a reason no configuration can change.
    from mnist_lab import data

    data.load_split(space.config_for({}, overrides).data, request.data_dir)
    tracking.setup()
    if request.engine == "optuna":
        make_storage(request.storage or default_storage())
    import_tensorflow()  # here, once, rather than in a worker thread in the middle of the live display
    if request.engine == "keras-tuner":
        from mnist_lab import tuner

        return tuner.run(space, study_name, overrides, request)
    return run_optuna(space, study_name, overrides, request)


# --- Optuna ---------------------------------------------------------------------------------


def make_storage(url: str):
    import optuna

    # Heartbeats and stale-trial handling are "experimental" in Optuna since 2.9; we rely on them knowingly.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    for attempt in range(3):
        try:
            if url.startswith("sqlite:///"):
                tracking.create_sqlite_atomically(url, lambda tmp: optuna.storages.RDBStorage(tmp).engine.dispose())
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=_on_dead_trial,
                # A host that drops packets would otherwise hang the sweep for minutes.
                engine_kwargs={"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}} if url.startswith("postgresql") else None,
            )
        except Exception as e:  # SQLAlchemy: bad URL, server down, missing driver
            # Machines starting together race to create Optuna's tables: the loser's CREATE fails
            # on what the winner just made, and a second look finds the schema complete.
            if attempt < 2 and ("already exists" in str(e) or "duplicate key" in str(e)):
                time.sleep(1 + attempt)
                continue
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MnistLabError(f"--storage {tracking.redact(url)}: cannot open the Optuna storage "
                                f"({tracking.redact(first)[:200]})") from None


def make_sampler(space: LoadedSpace, worker: int = 0, trials_so_far: int = 0):
    import optuna

    s = space.space
    # Different seeds per worker, or parallel random/TPE workers would propose the same trials;
    # and per resume (offset by the trials already there), or a restarted sampler would replay
    # its sequence and repeat finished configurations. QMC and grid walk a shared sequence keyed
    # by trial number, so they keep one seed.
    seed = None if s.seed is None else s.seed + worker + 1000 * trials_so_far
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.sampler == "qmc":
        with warnings.catch_warnings():  # "experimental" since Optuna 3.0; chosen knowingly in the space file
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(seed=s.seed, warn_independent_sampling=False)
    if s.sampler == "grid":
        return optuna.samplers.GridSampler({k: p.choices for k, p in s.params.items()}, seed=s.seed)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    # Multivariate TPE models the knobs jointly (batch size with learning rate, schedule with
    # epochs), which independent TPE cannot; constant_liar keeps parallel workers apart.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, s.budget.n_trials // 3)),
                                      multivariate=True, constant_liar=True)


def make_pruner(space: LoadedSpace):
    """Pruners on training images seen (Optuna's step), fed 8 times per epoch; see `ReportProgress`."""
    import optuna

    s = space.space
    base = space.config_for({})
    max_epochs = base.train.epochs
    for key, p in s.params.items():
        if key == "train.epochs":
            max_epochs = getattr(p, "high", None) or max(p.choices)
    epoch = base.data.train_count()
    first_rung = max(1, epoch // REPORTS_PER_EPOCH)  # an eighth of an epoch of images
    if s.pruner == "median":
        # Not before an eighth of an epoch: the first reports of every trial are noise.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=first_rung)
    if s.pruner == "sha":
        # Successive halving: at an eighth of an epoch, then 3x, 9x... as many images, keep the best third
        # of the trials at the same point of the same learning-rate schedule (see mnist_lab/pruning.py).
        from mnist_lab.pruning import ScheduleAwareHalving

        return ScheduleAwareHalving(min_resource=first_rung, reduction_factor=3)
    if s.pruner == "sha-pooled":
        # Optuna's own: every trial at a rung ranked together, whatever its schedule.
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_rung, reduction_factor=3)
    if s.pruner == "hyperband":
        # Rungs from an eighth of an epoch up to the longest trial, keeping a third at each: a hopeless
        # trial stops within its first epoch, and trials are compared at equal images seen.
        return optuna.pruners.HyperbandPruner(
            min_resource=first_rung, max_resource=max(1, int(max_epochs) * epoch), reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def open_study(space: LoadedSpace, study_name: str, storage_url: str, worker: int = 0):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print our own one-line trial reports
    storage = make_storage(storage_url)
    directions = [o.way for o in space.space.objective]
    try:
        study = optuna.create_study(
            study_name=study_name, storage=storage, sampler=make_sampler(space, worker), pruner=make_pruner(space), directions=directions
        )
        # Optuna Dashboard shows these instead of "Objective 0".
        study.set_metric_names([o.metric for o in space.space.objective])
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage, pruner=make_pruner(space))
        study.sampler = make_sampler(space, worker, len(study.get_trials(deepcopy=False)))
        created = False
        if [d.name.lower() for d in study.directions] != directions:
            raise MnistLabError(
                f"study '{study_name}' in {tracking.redact(storage_url)} optimises {[d.name.lower() for d in study.directions]}, "
                f"but {space.path} asks for {directions}; pick another --study name"
            ) from None
    return study, created


def parent_run(study, space: LoadedSpace, study_name: str, created: bool, engine: str = "optuna") -> str:
    """The study's MLflow run: created once, found again on resume and by every other worker."""
    from mlflow import MlflowClient

    client = MlflowClient()
    if not created:
        for _ in range(60):  # the creating worker may be a moment behind
            run_id = study.user_attrs.get("mlflow_parent_run_id")
            if run_id:
                studies.check_parent_run(client, run_id, study_name, study.user_attrs.get("mlflow_tracking_uri"),
                                         "--study NAME")
                client.update_run(run_id, status="RUNNING")
                return run_id
            time.sleep(1)  # user_attrs reads the storage afresh each time
    run_id = studies.create_parent_run(space, study_name, engine)
    study.set_user_attr("mlflow_parent_run_id", run_id)
    study.set_user_attr("mlflow_tracking_uri", tracking.redact(tracking.current_uri()))
    return run_id


def _on_dead_trial(study, trial) -> None:
    """A worker died mid-trial (no heartbeat): retry its configuration, and end its MLflow run as killed."""
    retry(study, trial, MAX_RETRY, "its worker stopped mid-trial (killed or crashed); the configuration is retried")


def retry(study, trial, max_retry: int | None, reason: str) -> None:
    """Queue `trial`'s configuration again and end its MLflow run KILLED.

    Optuna's RetryFailedTrialCallback would copy the dead trial's user attributes (its run id,
    worker, failure) into the retry; the retry starts clean, keeping only what the trial *is*."""
    import optuna
    from mlflow import MlflowClient

    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if max_retry is None or len(history) <= max_retry:
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if k == "baseline"},
            system_attrs={**trial.system_attrs, "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
                          "retry_history": history},
        ))
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        studies.end_killed(MlflowClient(), run_id, reason)


def fail_running(study, t, **user_attrs):
    """Mark a RUNNING trial FAIL (with `user_attrs` first); None if another process finished it first."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        for key, value in user_attrs.items():
            study._storage.set_trial_user_attr(t._trial_id, key, value)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    except (UpdateFinishedTrialError, RuntimeError):
        return None
    return study._storage.get_trial(t._trial_id)


def reap_dead_trials(study) -> None:
    """Trials whose worker on this machine is gone are failed and retried now, not after the grace period."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if studies.worker_is_dead(t.user_attrs.get("worker")):
            failed = fail_running(study, t)
            if failed is not None:  # else another worker reaped it first
                _on_dead_trial(study, failed)


def settle_interrupted(study, workers: set[str]) -> list[int]:
    """After Ctrl-C: the trials `workers` were running are failed (if they did not stop in time),
    queued again at the front, and their MLflow runs ended KILLED; returns their numbers."""
    from optuna.trial import TrialState

    settled = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("worker") not in workers or t.user_attrs.get("surplus"):
            continue
        if t.state == TrialState.RUNNING:
            t = fail_running(study, t, interrupted=True) or study._storage.get_trial(t._trial_id)
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
            retry(study, t, None, "interrupted (Ctrl-C or SIGTERM); the configuration runs again on resume")
            settled.append(t.number)
    return settled


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    fail: int = 0  # the space's failures: impossible configurations, diverging losses, errors in training
    lost: int = 0  # killed or interrupted workers' trials: not the space's fault, and retried
    running: int = 0
    waiting: int = 0
    surplus: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def count(study) -> Counts:
    from optuna.trial import TrialState

    c = Counts()
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            c.surplus += 1
        elif t.state == TrialState.COMPLETE:
            c.complete += 1
        elif t.state == TrialState.PRUNED:
            c.pruned += 1
        elif t.state == TrialState.FAIL:
            if worker_lost(t):
                c.lost += 1
            else:
                c.fail += 1
        elif t.state == TrialState.RUNNING:
            c.running += 1
        elif t.state == TrialState.WAITING:
            c.waiting += 1
    return c


def worker_lost(t) -> bool:
    """A failed trial whose worker was killed or interrupted; the objective records a reason for every other failure."""
    return "fail_reason" not in t.user_attrs or bool(t.user_attrs.get("interrupted"))


def failures_in_a_row(study) -> int:
    """How many trials failed, by the space's fault, since the last one that finished."""
    from optuna.trial import TrialState

    ended = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
             if not t.user_attrs.get("surplus") and not (t.state == TrialState.FAIL and worker_lost(t))]
    ended.sort(key=lambda t: (t.datetime_complete or t.datetime_start).timestamp() if (t.datetime_complete or t.datetime_start) else 0)
    n = 0
    for t in reversed(ended):
        if t.state != TrialState.FAIL:
            break
        n += 1
    return n


class Surplus(Exception):
    """Another worker took the last trial of the budget at the same moment."""


def trial_seconds(t) -> float | None:
    return (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None


def confirmation_seconds(study, space: LoadedSpace) -> float:
    """What the confirmation would cost if the search stopped now: the seeds still missing for the
    current top trials and the baseline, each as long as that trial's own run took."""
    from optuna.trial import TrialState

    confirm = space.space.confirm
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    way = space.space.objective[0].way
    complete.sort(key=lambda t: -t.values[0] if way == "maximize" else t.values[0])
    contenders = [t for t in complete if not t.user_attrs.get("baseline")][: confirm.top]
    contenders += [t for t in complete if t.user_attrs.get("baseline")]
    return sum((confirm.seeds - 1) * (trial_seconds(t) or 0) for t in contenders)


def search_time_left(study, space: LoadedSpace, end: float | None) -> bool:
    """May another trial start? Only if it and then the confirmation still fit before `end`.

    The next trial is assumed to take as long as three in four finished ones did (most are
    pruned early, a few run long); at least `confirm.reserve` of the time budget stays free.
    """
    import numpy as np
    from optuna.trial import TrialState

    if end is None:
        return True
    finished = [trial_seconds(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))]
    finished = [s for s in finished if s is not None]
    next_trial = float(np.percentile(finished, 75)) if finished else 0.0
    keep = max(space.space.confirm.reserve * (space.space.budget.timeout or 0), confirmation_seconds(study, space))
    return time.time() + next_trial + keep < end


def optuna_worker(space_path: str, n_trials: int | None, timeout: float | None, study_name: str, storage_url: str,
                  overrides: dict, data_dir: str | None, parent_run_id: str, worker: int, threads: int | None,
                  end: float | None) -> None:
    """One worker: run trials until the study has n_trials finished ones, or time runs short."""
    if threads:  # a worker process of its own (--workers N): Ctrl-C or SIGTERM stops its trial at the next batch
        signal.signal(signal.SIGTERM, _raise_interrupt)
    import_tensorflow()
    if threads:
        import tensorflow as tf

        # Workers share the cores: one pool each, sized cores // workers.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    import optuna

    tracking.setup()
    space = load_space(space_path, n_trials, timeout)
    study, _ = open_study(space, study_name, storage_url, worker)
    budget = space.space.budget
    objective = make_objective(space, study_name, overrides, data_dir, parent_run_id, budget.n_trials)
    try:
        while not STOP.is_set() and search_time_left(study, space, end):
            reap_dead_trials(study)
            optuna.storages.fail_stale_trials(study)
            c = count(study)
            if c.finished >= budget.n_trials or failures_in_a_row(study) >= budget.max_consecutive_failures:
                break
            if c.finished + c.running >= budget.n_trials:
                time.sleep(1)  # the last trials are running elsewhere; they may still die and need a retry
                continue
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
    except KeyboardInterrupt:
        STOP.set()  # the trial was failed by Optuna and marked interrupted; the main process queues it again


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def make_objective(space: LoadedSpace, study_name: str, overrides: dict, data_dir: str | None, parent_run_id: str, budget: int):
    import keras
    import mlflow
    import numpy as np
    import optuna
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    from mnist_lab.pruning import RUN_ATTR, SCHEDULE_ATTR
    from mnist_lab.space import suggest_optuna
    from mnist_lab.train import train

    client = MlflowClient()
    objectives = space.space.objective
    report_metric = objectives[0].metric if len(objectives) == 1 and objectives[0].metric in EPOCH_METRICS else None

    class ReportProgress(keras.callbacks.Callback):
        """Feeds the pruner 8 validation scores per epoch, at training images seen; stops the fit when told.

        Within an epoch: accuracy on a fixed stratified slice of the validation set (a second's
        work), so a hopeless trial stops in its first epoch; at each epoch's end: the full set.
        """

        def __init__(self, trial, config):
            super().__init__()
            self.trial, self.config, self.pruned_at, self.run_id = trial, config, None, None
            self.batch = config.train.batch_size
            self.epoch_images = config.data.train_count()
            self.every = max(1, config.train.steps_per_epoch(self.epoch_images) // REPORTS_PER_EPOCH)
            self.slice = None

        def on_train_begin(self, logs=None):
            # The baseline is what every trial is judged against and what confirmation retrains:
            # it reports its curve like any trial but always runs to the end.
            self.prunable = not self.trial.user_attrs.get("baseline")
            self.run_id = mlflow.active_run().info.run_id
            self.trial.set_user_attr("mlflow_run_id", self.run_id)
            if report_metric == "val_accuracy":
                self.slice = validation_slice(self.config, data_dir)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.next_report = epoch, self.every

        def on_train_batch_end(self, batch, logs=None):
            if STOP.is_set():  # Ctrl-C in the main thread: this trial ends here, and is retried on resume
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
            value = (logs or {}).get(report_metric) if report_metric else None
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

    def objective(trial: optuna.Trial):
        ahead = [t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
                 if t.number < trial.number and not t.user_attrs.get("surplus")]
        if len(ahead) >= budget:
            trial.set_user_attr("surplus", True)
            raise Surplus("the study's budget was already taken by other workers")
        trial.set_user_attr("worker", studies.worker_id())  # so a dead or interrupted worker's trial is found at once
        values = suggest_optuna(trial, space.space)
        tags = studies.trial_tags(study_name, trial.number, "optuna")
        retry_of = optuna.storages.RetryFailedTrialCallback.retried_trial_number(trial.study.trials[trial.number])
        if retry_of is not None:
            tags["retry_of_trial"] = str(retry_of)
        try:
            config = space.config_for(values, overrides)
        except ConfigError as e:
            reason = str(e).split(": ", 1)[-1]
            studies.record_impossible(client, parent_run_id, tags, values, reason)
            trial.set_user_attr("fail_reason", reason)
            raise
        # The pruner ranks a trial only against trials at the same point of the same rate schedule.
        trial.set_user_attr(SCHEDULE_ATTR, config.train.lr_schedule)
        trial.set_user_attr(RUN_ATTR, config.train.epochs * config.data.train_count())
        watcher = ReportProgress(trial, config)
        try:
            # A pruned trial keeps its curves, config and environment; plots and a model of a fraction
            # of a run are not worth their seconds (most trials are pruned).
            result = train(config, data_dir=data_dir, run_name=studies.trial_run_name(study_name, trial.number), tags=tags,
                           callbacks=[watcher], parent_run_id=parent_run_id, progress=False,
                           log_model=lambda: watcher.pruned_at is None, log_plots=lambda: watcher.pruned_at is None)
        except KeyboardInterrupt:
            # Not the configuration's fault: the main process queues it again and ends the run KILLED.
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("fail_reason", "interrupted; runs again on resume")
            raise
        except Exception as e:
            trial.set_user_attr("fail_reason", str(e)[:500])
            if watcher.run_id:
                client.set_tag(watcher.run_id, "state", "FAIL")
                client.update_run(watcher.run_id, name=studies.trial_run_name(study_name, trial.number, "failed"))
            raise
        trial.set_user_attr("mlflow_run_id", result.run_id)
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("train_seconds", result.train_seconds)
        trial.set_user_attr("param_count", result.param_count)
        if watcher.pruned_at:
            client.set_tag(result.run_id, "state", "PRUNED")
            client.set_tag(result.run_id, "pruned_at_images", str(watcher.pruned_at))
            client.set_tag(result.run_id, "pruned_at_epoch", f"{watcher.pruned_at / config.data.train_count():.2f}")
            client.update_run(result.run_id, name=studies.trial_run_name(study_name, trial.number, "pruned"))
            raise optuna.TrialPruned(f"pruned after {watcher.pruned_at:,} training images")
        scores = [studies.objective_value(result, o.metric) for o in objectives]
        client.set_tag(result.run_id, "state", "COMPLETE")
        for o, v in zip(objectives, scores):
            if o.metric == "latency_ms":
                client.log_metric(result.run_id, "latency_ms", v)
        return scores[0] if len(scores) == 1 else scores

    return objective


def validation_slice(config, data_dir: str | None, size: int = SLICE_IMAGES):
    """The same stratified `size` validation images for every trial of a split, as model input and labels."""
    import numpy as np

    from mnist_lab import data

    split = data.load_split(config.data, data_dir)
    if len(split.y_val) <= size:
        return data.to_model_input(split.x_val), split.y_val
    rng = np.random.default_rng(0)
    per_class = [rng.permutation(np.flatnonzero(split.y_val == k)) for k in range(10)]
    # Each digit in its share of the validation set, so the slice's accuracy tracks the full one.
    take = np.concatenate([idx[: round(size * len(idx) / len(split.y_val))] for idx in per_class])
    return data.to_model_input(split.x_val[take]), split.y_val[take]


def run_optuna(space: LoadedSpace, study_name: str, overrides: dict, request: SweepRequest) -> dict[str, Any]:
    """Search, then confirm and crown. Ctrl-C or SIGTERM at any point ends cleanly: see `Interrupted`."""
    from mlflow import MlflowClient

    storage_url = request.storage or default_storage()
    study, created = open_study(space, study_name, storage_url)
    parent_run_id = parent_run(study, space, study_name, created)
    client = MlflowClient()
    # What a SIGKILLed run of this command left behind on this machine is settled before anything starts.
    reap_dead_trials(study)
    studies.end_dead_runs(client, study_name, parent_run_id)
    if created:
        baseline = space.baseline_values()
        if baseline:
            # The first trial is the base config itself: every other trial is judged against it.
            study.enqueue_trial(baseline, user_attrs={"baseline": True})
    STOP.clear()
    workers = {studies.worker_id()}
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        return _search_confirm_crown(study, space, study_name, overrides, request, storage_url, parent_run_id, workers)
    except KeyboardInterrupt:
        STOP.set()
        raise _interrupted(study, study_name, storage_url, parent_run_id, workers) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupted(study, study_name: str, storage_url: str, parent_run_id: str, workers: set[str]) -> Interrupted:
    """Wait briefly for trials to stop at their next batch, then leave nothing RUNNING: the trials
    interrupted are queued to run first on resume, their runs and the study's run end KILLED."""
    from mlflow import MlflowClient

    started = time.time()

    def running() -> bool:
        return any(not h.done.is_set() if isinstance(h, WorkerThread) else h.is_alive() for h in _workers_started)

    def wait(seconds: float) -> None:
        while running() and time.time() < started + seconds:
            time.sleep(0.2)

    wait(3)  # Ctrl-C in a terminal reached the worker processes too
    procs = [h for h in _workers_started if isinstance(h, multiprocessing.process.BaseProcess)]
    for p in procs:
        if p.is_alive():
            p.terminate()  # SIGTERM: the worker stops its trial at the next batch
    wait(STOP_WAIT_SECONDS)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    study = type(study)(study_name=study_name, storage=make_storage(storage_url))
    settled = settle_interrupted(study, workers)
    # A confirmation seed cut short, or a trial run the retry above did not reach, ends KILLED too.
    studies.end_interrupted(MlflowClient(), study_name, parent_run_id, workers)
    which = f"trial {', '.join(map(str, settled))} runs again first; " if settled else ""
    return Interrupted(f"stopped cleanly; {which}resume with: {tracking.command_line()}")


_workers_started: list = []  # the worker threads or processes of this sweep, for a clean stop


class WorkerThread(threading.Thread):
    """The single worker's thread, with its own `done` flag: after Ctrl-C interrupts `join()`,
    `Thread.is_alive()` can wrongly say False while the thread still runs (CPython before 3.13)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.done = threading.Event()

    def run(self):
        try:
            super().run()
        finally:
            self.done.set()


def _search_confirm_crown(study, space: LoadedSpace, study_name: str, overrides: dict, request: SweepRequest,
                          storage_url: str, parent_run_id: str, workers: set[str]) -> dict[str, Any]:
    from mlflow import MlflowClient
    from rich.console import Console

    budget = space.space.budget
    started = time.time()
    # One time budget for search and confirmation: workers stop starting trials when the next one
    # and the confirmation (estimated from the trials' own durations) would no longer fit.
    end = started + budget.timeout if budget.timeout else None
    args = (str(space.path), request.n_trials, request.timeout, study_name, storage_url, overrides, request.data_dir, parent_run_id)
    _workers_started.clear()
    with Progress(study, budget.n_trials, space, end) as progress:
        if request.workers == 1:
            worker_thread = WorkerThread(target=optuna_worker, args=(*args, 0, None, end), daemon=True)
            _workers_started.append(worker_thread)
            worker_thread.start()
            while not worker_thread.done.wait(1):
                progress.update()
        else:
            threads = max(1, (os.cpu_count() or 1) // request.workers)
            ctx = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
            procs = [ctx.Process(target=optuna_worker, args=(*args, i, threads, end)) for i in range(request.workers)]
            for p in procs:
                p.start()
                _workers_started.append(p)
                workers.add(studies.worker_id(p.pid))
            while any(p.is_alive() for p in procs):
                for p in procs:
                    p.join(1)
                progress.update()
        progress.update()
    if STOP.is_set():  # a worker process was stopped by a signal of its own
        raise KeyboardInterrupt
    study = type(study)(study_name=study_name, storage=make_storage(storage_url))
    c = count(study)
    client = MlflowClient()
    trials = f"{c.complete} complete, {c.pruned} pruned, {c.fail} failed, {c.lost} lost to kills"
    client.set_tag(parent_run_id, "trials", trials)
    summary = {"study": study_name, "parent_run_id": parent_run_id, "counts": c, "storage": tracking.redact(storage_url),
               "trials": trials}
    out_of_time = end is not None and not search_time_left(study, space, end)
    in_a_row = failures_in_a_row(study)
    done = c.finished >= budget.n_trials or out_of_time
    if c.finished >= budget.n_trials:
        stopped = f"stopped: the budget of {budget.n_trials} finished trials is reached"
    elif out_of_time:
        stopped = (f"stopped: the time budget ({budget.timeout:.0f} s) has room only for the confirmation, "
                   f"after {c.finished} finished trials")
    elif in_a_row >= budget.max_consecutive_failures:
        last = max((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("fail_reason")), key=lambda t: t.number, default=None)
        why = f" (the last: {last.user_attrs['fail_reason'][:200]})" if last else ""
        stopped = (f"stopped: {in_a_row} trials failed in a row{why}, the limit budget.max_consecutive_failures; "
                   f"{c.finished} of {budget.n_trials} trials finished. Fix the space, or raise the limit, and run again to resume")
        summary["failed"] = stopped
    else:
        stopped = f"stopped with {c.finished} of {budget.n_trials} trials finished; run the same command again to resume"
        summary["failed"] = stopped
    Console(stderr=True, highlight=False).print(stopped, soft_wrap=True)
    client.set_tag(parent_run_id, "stopped", stopped)
    summary["stopped"] = stopped
    best = best_trial(study, space)
    if best is not None:
        client.set_tag(parent_run_id, "best_trial", str(best.number))
        # Not best_val_accuracy: that is each trial's own metric, and the study's value would be
        # charted as one more bar among the trials.
        client.log_metric(parent_run_id, f"study_best_{space.space.objective[0].metric}", best.values[0])
        summary["best"] = best
        summary["best_line"] = f"trial {best.number}: {space.space.objective[0].metric} {best.values[0]:.4f}"
    # An unfinished study (stopped by failures, not by its budget or time) crowns nothing.
    if best is not None and done:
        summary["verdict"] = confirm_stage(study, space, study_name, parent_run_id, request.data_dir, end)
        verdict = summary["verdict"]
        if not verdict.deferred:
            run_id = verdict.best.source_run_id if verdict.promoted else best.user_attrs["mlflow_run_id"]
            summary["test"] = studies.evaluate_once(run_id, request.data_dir)
    studies.describe_study(client, parent_run_id, study_name, summary)
    client.set_terminated(parent_run_id, status="FINISHED" if done else "FAILED")
    print_top(study, space)
    return summary


def confirm_stage(study, space: LoadedSpace, study_name: str, parent_run_id: str, data_dir: str | None, end: float | None):
    """The top trials and the baseline, retrained over seeds; the champion only if confirmed."""
    from optuna.trial import TrialState
    from rich.console import Console

    console = Console(stderr=True, highlight=False, soft_wrap=True)  # a log file gets whole lines, not 80 columns
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "mlflow_run_id" in t.user_attrs]
    metrics = [o.metric for o in space.space.objective]
    i = metrics.index("val_accuracy") if "val_accuracy" in metrics else 0
    if space.space.multi_objective:
        # Several objectives: the Pareto front's members, most accurate first, are the candidates.
        front = {t.number for t in study.best_trials}
        complete = [t for t in complete if t.number in front]
    sign = 1 if space.space.objective[i].way == "maximize" else -1
    complete.sort(key=lambda t: -sign * t.values[i])
    baseline = next((t.user_attrs["mlflow_run_id"] for t in complete if t.user_attrs.get("baseline")), None)
    confirm = space.space.confirm
    console.print(f"confirmation: the top {confirm.top} trials{' and the baseline' if baseline else ''}, "
                  f"{confirm.seeds} training seeds each")
    verdict = studies.confirm_and_crown(
        study_name, parent_run_id, [t.user_attrs["mlflow_run_id"] for t in complete], baseline, confirm.top, confirm.seeds,
        data_dir, deadline=end, on_result=lambda c, seed, v: console.print(f"  {c.label} seed {seed}: val_accuracy {v:.4f}"),
    )
    for line in studies.describe(verdict):
        console.print(line)
    return verdict


def best_trial(study, space: LoadedSpace):
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "mlflow_run_id" in t.user_attrs]
    if not complete:
        return None
    if not space.space.multi_objective:
        sign = 1 if space.space.objective[0].way == "maximize" else -1
        return max(complete, key=lambda t: sign * t.values[0])
    # Several objectives: the Pareto front's most accurate member carries the champion title.
    front = {t.number for t in study.best_trials}
    metrics = [o.metric for o in space.space.objective]
    i = metrics.index("val_accuracy") if "val_accuracy" in metrics else 0
    sign = 1 if space.space.objective[i].way == "maximize" else -1
    return max((t for t in complete if t.number in front), key=lambda t: sign * t.values[i])


# --- what a person sees -----------------------------------------------------------------------


class Progress:
    """The sweep's one live display, redrawn every second from the study's storage (so it shows
    every worker's trials): a bar of finished trials with counts by state and a legend, best so
    far, elapsed time and the ETA, then one line per running trial (epoch, latest validation
    score). Each trial that finishes gets one permanent line above it. Off a terminal (CI, a
    log file) only those lines are printed."""

    LEGEND = "✓ complete  ✂ pruned  ✗ failed  ▶ running"

    def __init__(self, study, total: int, space: LoadedSpace, end: float | None = None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.study, self.total, self.space, self.end = study, total, space, end
        self.console = Console(stderr=True, highlight=False)
        self.running_lines: list[str] = []
        display = self

        class Live(RichProgress):
            def get_renderables(self):
                yield self.make_tasks_table(self.tasks)
                yield from display.running_lines

        self.bar = Live(
            TextColumn("trials"), MofNCompleteColumn(), BarColumn(bar_width=24), TextColumn("{task.fields[states]}"),
            TextColumn("best {task.fields[best]}"), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
            console=self.console, disable=not self.console.is_terminal,
        )
        self.reported: set[int] = set()
        self.opened_at = time.time()
        self.epoch_images = space.config_for({}).data.train_count()

    def __enter__(self):
        self.bar.__enter__()
        self.console.print(f"[dim]{self.LEGEND}[/dim]")
        self.task = self.bar.add_task("sweep", total=self.total, states="", best="-", eta="-")
        self.start_finished = count(self.study).finished
        self.bar.update(self.task, completed=self.start_finished)
        return self

    def __exit__(self, *exc):
        self.running_lines = []
        self.bar.__exit__(*exc)

    def eta(self, finished: int) -> str:
        """From the trials finished in this invocation, capped by the time budget's end."""
        now = time.time()
        done_here = finished - self.start_finished
        guesses = []
        if done_here > 0:
            guesses.append((now - self.opened_at) / done_here * max(0, self.total - finished))
        if self.end is not None:
            guesses.append(max(0.0, self.end - now))
        if not guesses:
            return "-"
        seconds = int(min(guesses))
        return f"{seconds // 60}:{seconds % 60:02d}"

    def update(self) -> None:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        c = count(self.study)
        metric = self.space.space.objective[0]
        values = [t.values[0] for t in trials if t.state == TrialState.COMPLETE and t.values]
        best = (max if metric.way == "maximize" else min)(values) if values else None
        self.bar.update(
            self.task, completed=min(c.finished, self.total),
            states=f"✓{c.complete} ✂{c.pruned} ✗{c.fail} ▶{c.running}",
            best=f"{metric.metric} {best:.4f}" if best is not None else "-", eta=self.eta(c.finished),
        )
        self.running_lines = []
        for t in trials:
            if t.state == TrialState.RUNNING and not t.user_attrs.get("surplus"):
                latest = f", {metric.metric} {t.intermediate_values[t.last_step]:.4f}" if t.last_step is not None else ""
                epoch = (t.last_step or 0) / self.epoch_images
                started = f"{time.time() - t.datetime_start.timestamp():.0f} s" if t.datetime_start else ""
                self.running_lines.append(f"  ▶ trial {t.number}: epoch {epoch:.2f}{latest} ({started})")
        for t in trials:
            if t.number in self.reported or t.state in (TrialState.RUNNING, TrialState.WAITING) or t.user_attrs.get("surplus"):
                continue
            self.reported.add(t.number)
            if t.datetime_complete and t.datetime_complete.timestamp() < self.opened_at:
                continue  # finished before this invocation: already reported then
            self.console.print(trial_line(t, metric.metric, self.epoch_images), soft_wrap=True)


def trial_line(t, metric: str, epoch_images: int) -> str:
    """One line for a finished trial: state, score or why it stopped, seconds, its values."""
    from optuna.trial import TrialState

    mark = {TrialState.COMPLETE: "✓", TrialState.PRUNED: "✂", TrialState.FAIL: "✗"}.get(t.state, " ")
    if t.state == TrialState.COMPLETE:
        what = f"{metric} {t.values[0]:.4f}" if t.values else ""
    elif t.state == TrialState.PRUNED:
        last = t.intermediate_values.get(t.last_step) if t.last_step is not None else None
        what = (f"pruned at epoch {t.last_step / epoch_images:.2f} ({metric} {last:.4f})" if last is not None else "pruned")
    else:
        what = t.user_attrs.get("fail_reason", "worker died; configuration retried")
    params = " ".join(f"{k.split('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.', 1)[-1]}={v}"
                      for k, v in t.params.items())
    baseline = " (baseline)" if t.user_attrs.get("baseline") else ""
    return f"{mark} trial {t.number:>3}{baseline} {what} ({trial_seconds(t) or 0:.0f} s) {params}"


def print_top(study, space: LoadedSpace, k: int = 5) -> None:
    """The best k complete trials side by side: one column per trial, one row per value, so a
    space of 15 knobs still fits a terminal."""
    from optuna.trial import TrialState
    from rich.console import Console
    from rich.table import Table

    objectives = space.space.objective
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    sign = 1 if objectives[0].way == "maximize" else -1
    done.sort(key=lambda t: -sign * t.values[0])
    top = done[:k]
    table = Table(title=f"study {study.study_name}: top {len(top)} of {len(done)} complete trials")
    table.add_column("")
    for t in top:
        table.add_column(f"trial {t.number}{' (baseline)' if t.user_attrs.get('baseline') else ''}", justify="right")

    def show(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    for i, o in enumerate(objectives):
        table.add_row(o.metric, *(f"{t.values[i]:.4f}" for t in top))
    table.add_row("train seconds", *(f"{t.user_attrs.get('train_seconds', 0):.0f}" for t in top))
    for key in space.space.params:
        table.add_row(key.removeprefix("model.").replace("conv_blocks.", "conv"), *(show(t.params.get(key, "")) for t in top))
    Console(stderr=False).print(table)
