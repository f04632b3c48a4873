"""Dead and interrupted trials: found, failed, and their configurations queued again, on Optuna's
public heartbeat and retry API.

Each trial's worker writes a heartbeat every HEARTBEAT_SECONDS; a trial silent for GRACE_SECONDS
(its machine died) is failed by Optuna (`fail_stale_trials`) and retried through
`RetryHeartbeatStaleTrialCallback`. A worker on this machine whose process is gone is found at once
(`reap_dead_trials`), not after the grace period. After Ctrl-C or SIGTERM, the trials that were
running are queued again to run first (`settle_interrupted`). In every case the trial's MLflow run
ends KILLED with the reason.
"""

from __future__ import annotations

import os
import sys
import time

from mnist_lab import tracking
from mnist_lab.errors import causes
from mnist_lab.sweep.records import end_killed

HEARTBEAT_SECONDS = int(os.environ.get("MNIST_LAB_HEARTBEAT_SECONDS", 10))  # a live trial writes this often
GRACE_SECONDS = int(os.environ.get("MNIST_LAB_GRACE_SECONDS", 30))  # silence after which its worker counts as dead
MAX_RETRY = 2  # times a killed worker's configuration is tried again (an interrupted one: always)
# The one user attribute a retry inherits: what the trial *is*. Its run id, worker and failure belong to
# the attempt that died, and a retry starts clean (Optuna's callback would copy them all).
INHERITED_ATTRS = ("baseline",)


def on_dead_trial(study, trial) -> None:
    """A worker died mid-trial: retry its configuration (at most MAX_RETRY times), end its run KILLED."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    tries = len(RetryHeartbeatStaleTrialCallback.retry_history(trial)) + 1
    if tries > MAX_RETRY:
        # Dropped, and said so: a configuration that kills its worker every time (out of memory?) is not retried forever.
        # The pragma sits inside the brackets: after the `)` mutmut would read it as the statement's first line.
        print(f"trial {trial.number}: its worker stopped mid-trial {tries} times (killed or crashed); "
              "the configuration is not tried again", file=sys.stderr,
              flush=True,  # pragma: no mutate (flushing changes no text)
              )
        end_run(trial, f"its worker stopped mid-trial {tries} times (killed or crashed); not retried again")
        return
    retry(study, trial, "its worker stopped mid-trial (killed or crashed); the configuration is retried")


def retry(study, trial, reason: str) -> None:
    """Queue `trial`'s configuration again (Optuna's retry callback), starting clean, and end the
    attempt's MLflow run KILLED with `reason`."""
    import copy

    from optuna.storages import RetryHeartbeatStaleTrialCallback

    clean = copy.copy(trial)  # what the retry inherits is set anew below; the trial itself is left as it is
    clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in INHERITED_ATTRS}
    # Two workers stopping at once both write: SQLite may say "database is locked" for a moment.
    unlocked(RetryHeartbeatStaleTrialCallback(max_retry=None), study, clean)  # how often: on_dead_trial decides
    end_run(trial, reason)


def end_run(trial, reason: str) -> None:
    """End the attempt's MLflow run (if it got one) KILLED, with `reason`."""
    from mlflow import MlflowClient

    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        end_killed(MlflowClient(), run_id, reason)


def retried_trial_number(trial) -> int | None:
    """The number of the trial this one retries (the first of its series), or None."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def fail_running(storage, study_name: str, number: int, **user_attrs):
    """Mark the RUNNING trial `number` FAIL, with `user_attrs` first; its frozen record, or None if
    another process finished it first. Storage calls, not `study.tell`: telling would run the
    sampler's `after_trial` (a grid sampler stops the study there) outside any optimisation."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    trial_id = unlocked(trial_id_of, storage, study_name, number)
    try:
        for key, value in user_attrs.items():
            unlocked(storage.set_trial_user_attr, trial_id, key, value)
        unlocked(storage.set_trial_state_values, trial_id, TrialState.FAIL)
    except (UpdateFinishedTrialError, RuntimeError):
        return None
    return unlocked(storage.get_trial, trial_id)


def unlocked(call, *args, attempts: int = 20):
    """`call(*args)`, tried again while SQLite says "database is locked": right after Ctrl-C a worker
    that is still stopping may hold the storage's write lock for longer than the 30 s a connection
    waits for it (optuna_study.make_storage)."""
    for attempt in range(attempts):
        try:
            return call(*args)
        except Exception as e:
            if not locked(e) or attempt == attempts - 1:
                raise
            time.sleep(0.5)


def locked(error: BaseException | None) -> bool:
    """SQLite's "database is locked", in the error or its causes: Optuna's RDB storage reports a failed
    commit as its own StorageInternalError, with SQLite's error only as the cause."""
    return any("database is locked" in str(e) for e in causes(error))


def trial_id_of(storage, study_name: str, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def reap_dead_trials(study, storage) -> None:
    """Trials whose worker on this machine is gone are failed and retried now, not after the grace period."""
    from optuna.trial import TrialState

    running = (TrialState.RUNNING,)
    for t in study.get_trials(deepcopy=False, states=running):  # pragma: no mutate (a copy changes no value)
        if tracking.worker_is_dead(t.user_attrs.get("worker")):
            failed = fail_running(storage, study.study_name, t.number)
            if failed is not None:  # else another worker reaped it first
                on_dead_trial(study, failed)


def settle_interrupted(study, storage, workers: set[str]) -> list[int]:
    """After Ctrl-C: the trials `workers` were running are failed (if they did not stop in time),
    queued again at the front, and their MLflow runs ended KILLED; returns (number, number of its retry) pairs."""
    from optuna.trial import TrialState

    settled = []
    for t in study.get_trials(deepcopy=False):  # pragma: no mutate (a copy changes no value)
        if t.user_attrs.get("worker") not in workers or t.user_attrs.get("surplus"):
            continue
        if t.state == TrialState.RUNNING:  # it did not stop in time (or its worker failed it a moment ago: read it again)
            t = (fail_running(storage, study.study_name, t.number, interrupted=True)
                 or unlocked(storage.get_trial, trial_id_of(storage, study.study_name, t.number)))
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
            # Settled again after a store error cut the first pass short: what was queued is not queued twice.
            if retried_as(study, t.number, waiting_only=False) is None:  # pragma: no mutate (None reads as False)
                retry(study, t, "interrupted (Ctrl-C or SIGTERM); the configuration runs again on resume")
            settled.append((t.number, retried_as(study, t.number)))
    return settled


def retried_as(study, number: int, waiting_only: bool = True) -> int | None:
    """The number of the queued trial (or, with waiting_only=False, of any trial) that retries trial
    `number` (Optuna gives a retry a new number)."""
    from optuna.trial import TrialState

    states = (TrialState.WAITING,) if waiting_only else None
    for t in study.get_trials(deepcopy=False, states=states):  # pragma: no mutate (a copy changes no value)
        if (t.system_attrs.get("retry_history") or [None])[-1] == number:
            return t.number
    return None
