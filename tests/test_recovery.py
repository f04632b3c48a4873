"""mnist_lab/sweep/recovery.py on its own, on a real Optuna SQLite storage and a real MLflow store: dead
and interrupted trials are failed, queued again (clean), and their runs ended KILLED with the reason."""

import os
import socket
import subprocess
import time

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from mnist_lab import tracking
from mnist_lab.sweep import recovery


@pytest.fixture
def study(store):
    storage = optuna.storages.RDBStorage(f"sqlite:///{store / 'optuna.db'}")
    return optuna.create_study(study_name="s", storage=storage), storage


def a_dead_worker() -> str:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}"  # a process of this machine that is gone


def running_trial(study, worker: str, **attrs):
    """A RUNNING trial of `worker`, with an MLflow run RUNNING as the objective would have started it."""
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    experiment_id = tracking.setup()  # before MlflowClient(), which binds to the store set at that moment
    run = MlflowClient().create_run(experiment_id)
    for key, value in {"worker": worker, "mlflow_run_id": run.info.run_id, **attrs}.items():
        trial.set_user_attr(key, value)
    return trial.number, run.info.run_id


def ended_killed(run_id: str, reason: str) -> bool:
    run = MlflowClient().get_run(run_id)
    return run.info.status == "KILLED" and run.data.tags["state"] == "FAIL" and run.data.tags["failure_reason"] == reason


def test_a_dead_worker_s_trial_is_failed_queued_clean_and_its_run_killed(study):
    study, storage = study
    number, run_id = running_trial(study, a_dead_worker(), baseline=True, interrupted=False)
    alive, alive_run = running_trial(study, tracking.worker_id())
    elsewhere, _ = running_trial(study, "another-host:1")
    recovery.reap_dead_trials(study, storage)
    trials = study.get_trials()
    assert trials[number].state == TrialState.FAIL
    assert trials[alive].state == TrialState.RUNNING and trials[elsewhere].state == TrialState.RUNNING
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert len(queued) == 1 and queued[0].params == trials[number].params
    assert queued[0].user_attrs == {"baseline": True}  # what the trial is; not the dead attempt's run, worker or flags
    assert recovery.retried_trial_number(queued[0]) == number and recovery.retried_as(study, number) == queued[0].number
    assert recovery.retried_as(study, alive) is None
    assert ended_killed(run_id, "its worker stopped mid-trial (killed or crashed); the configuration is retried")
    assert MlflowClient().get_run(alive_run).info.status == "RUNNING"


def test_a_configuration_that_kills_its_worker_every_time_is_dropped_with_a_word(study, capsys):
    study, storage = study
    number, run_id = running_trial(study, a_dead_worker())
    for attempt in range(1, recovery.MAX_RETRY + 2):
        recovery.reap_dead_trials(study, storage)
        waiting = study.get_trials(states=(TrialState.WAITING,))
        if attempt <= recovery.MAX_RETRY:  # queued again: the next attempt starts and its worker dies too
            assert ended_killed(run_id, "its worker stopped mid-trial (killed or crashed); the configuration is retried")
            assert len(waiting) == 1
            trial = study.ask()
            assert trial.number == waiting[0].number
            experiment_id = tracking.setup()
            run_id = MlflowClient().create_run(experiment_id).info.run_id
            trial.set_user_attr("worker", a_dead_worker())
            trial.set_user_attr("mlflow_run_id", run_id)
        else:
            assert waiting == []
            assert ended_killed(run_id, f"its worker stopped mid-trial {attempt} times (killed or crashed); not retried again")
    err = capsys.readouterr().err
    assert f"its worker stopped mid-trial {recovery.MAX_RETRY + 1} times (killed or crashed); the configuration is not tried again" in err
    assert err.count("not tried again") == 1
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL] * (recovery.MAX_RETRY + 1)


def test_interrupted_trials_of_these_workers_are_queued_first_and_said(study):
    study, storage = study
    me, other = tracking.worker_id(), "another-host:7"
    still_running, run_a = running_trial(study, me)
    stopped, run_b = running_trial(study, me)
    recovery.fail_running(storage, "s", stopped, interrupted=True)  # its worker failed it as it stopped
    failed_itself, _ = running_trial(study, me)
    recovery.fail_running(storage, "s", failed_itself)  # the configuration's own failure: not retried
    surplus, _ = running_trial(study, me, surplus=True)
    not_mine, _ = running_trial(study, other)
    settled = recovery.settle_interrupted(study, storage, {me})
    trials = study.get_trials()
    retries = {recovery.retried_trial_number(t): t.number for t in trials if t.state == TrialState.WAITING}
    assert settled == [(still_running, retries[still_running]), (stopped, retries[stopped])]
    assert set(retries) == {still_running, stopped}
    assert trials[still_running].state == TrialState.FAIL and trials[still_running].user_attrs["interrupted"] is True
    assert trials[surplus].state == TrialState.RUNNING and trials[not_mine].state == TrialState.RUNNING
    reason = "interrupted (Ctrl-C or SIGTERM); the configuration runs again on resume"
    assert ended_killed(run_a, reason) and ended_killed(run_b, reason)
    # Settling again (after a store error cut the first pass short) queues nothing twice.
    assert recovery.settle_interrupted(study, storage, {me}) == settled
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 2
    # An interrupted configuration is retried however often it was interrupted (no MAX_RETRY).
    for _ in range(recovery.MAX_RETRY + 1):
        trial = study.ask()
        trial.set_user_attr("worker", me)
        again = recovery.settle_interrupted(study, storage, {me})
        assert again[-1][0] == trial.number and again[-1][1] is not None
        assert len(study.get_trials(states=(TrialState.WAITING,))) == 2


def test_a_trial_its_stopping_worker_fails_in_the_meantime_is_read_again_and_queued_once(study, monkeypatch):
    study, storage = study
    me = tracking.worker_id()
    number, run_id = running_trial(study, me)
    real = recovery.fail_running

    def worker_first(storage_, name, n, **attrs):  # the worker marks it just before the main process does
        real(storage_, name, n, interrupted=True)
        return real(storage_, name, n, **attrs)

    monkeypatch.setattr(recovery, "fail_running", worker_first)
    settled = recovery.settle_interrupted(study, storage, {me})
    assert [old for old, _ in settled] == [number] and settled[0][1] is not None
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1
    assert ended_killed(run_id, "interrupted (Ctrl-C or SIGTERM); the configuration runs again on resume")


def test_fail_running_says_when_another_process_finished_the_trial_first(study):
    study, storage = study
    number, _ = running_trial(study, tracking.worker_id())
    study.tell(number, 0.5)
    assert recovery.fail_running(storage, "s", number, interrupted=True) is None
    assert study.get_trials()[number].state == TrialState.COMPLETE
    assert "interrupted" not in study.get_trials()[number].user_attrs


def test_unlocked_waits_out_a_locked_database_and_nothing_else(monkeypatch):
    waits = []
    monkeypatch.setattr(recovery.time, "sleep", waits.append)
    calls = []

    def locked_twice(x):
        calls.append(x)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return x * 2

    assert recovery.unlocked(locked_twice, 21) == 42 and len(calls) == 3 and waits == [0.5, 0.5]
    calls.clear()
    with pytest.raises(RuntimeError, match="locked"):
        recovery.unlocked(locked_twice, 1, attempts=2)
    assert len(calls) == 2

    def broken():
        calls.append(1)
        raise ValueError("no such table")

    calls.clear()
    with pytest.raises(ValueError):
        recovery.unlocked(broken)
    assert calls == [1]


def test_a_worker_on_another_machine_that_falls_silent_is_retried_after_the_grace_period(store, monkeypatch):
    """Optuna's own heartbeat path, on the storage the sweep opens: a RUNNING trial of a worker elsewhere
    (whose process this machine cannot see) is left alone while its heartbeat is fresh, and failed,
    queued again and its run ended KILLED once it has been silent for the grace period. The README's
    30 s is the default; here 2 s, so the test waits 3."""
    import time

    from mnist_lab.sweep import optuna_study

    assert (recovery.HEARTBEAT_SECONDS, recovery.GRACE_SECONDS) == (10, 30) or "MNIST_LAB_GRACE_SECONDS" in os.environ
    monkeypatch.setattr(optuna_study, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(optuna_study, "GRACE_SECONDS", 2)
    storage = optuna_study.make_storage(f"sqlite:///{store / 'heartbeat.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    number, run_id = running_trial(study, "another-host:1")
    trial_id = study.get_trials()[number]._trial_id
    storage.record_heartbeat(trial_id)  # what the worker's heartbeat thread writes
    recovery.reap_dead_trials(study, storage)  # this machine's reaper cannot judge a worker elsewhere
    optuna.storages.fail_stale_trials(study)  # what Optuna runs before each trial: still within the grace
    assert study.get_trials()[number].state == TrialState.RUNNING
    time.sleep(3)  # the silence itself is what is tested
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials()
    assert trials[number].state == TrialState.FAIL
    [queued] = [t for t in trials if t.state == TrialState.WAITING]
    assert queued.params == trials[number].params and recovery.retried_trial_number(queued) == number
    assert ended_killed(run_id, "its worker stopped mid-trial (killed or crashed); the configuration is retried")


def test_retried_as_names_the_queued_retry_and_only_with_waiting_only_false_one_already_started(study):
    study, storage = study
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    failed = recovery.fail_running(storage, "s", trial.number)
    recovery.retry(study, failed, "its worker stopped mid-trial (killed or crashed); the configuration is retried")
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert recovery.retried_as(study, trial.number) == queued.number
    assert study.ask().number == queued.number  # a worker takes the retry: it is no longer queued
    assert recovery.retried_as(study, trial.number) is None
    assert recovery.retried_as(study, trial.number, waiting_only=False) == queued.number


def test_unlocked_waits_out_a_write_lock_that_optuna_reports_as_its_own_error(store):
    """Right after Ctrl-C a stopping worker may hold SQLite's write lock; Optuna's RDB storage reports the
    failed commit as StorageInternalError, "database is locked" only in its cause (a clean-clone
    `make test` once ended a Ctrl-C'd sweep with that traceback instead of its one line)."""
    import sqlite3
    import threading
    import time

    db = store / "locked.db"
    # A 0.2 s busy wait instead of SQLite's 5 s, so the lock below outlasts it.
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}", engine_kwargs={"connect_args": {"timeout": 0.2}})
    study = optuna.create_study(study_name="s", storage=storage)
    trial_id = study.ask()._trial_id
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # another process's write, in progress
    with pytest.raises(optuna.exceptions.StorageInternalError) as e:
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    assert "database is locked" not in str(e.value) and recovery.locked(e.value)  # only its cause says so
    threading.Timer(1.0, lambda: holder.execute("COMMIT")).start()
    started = time.time()
    assert recovery.unlocked(storage.set_trial_state_values, trial_id, TrialState.FAIL)
    assert 0.9 < time.time() - started < 10 and storage.get_trial(trial_id).state == TrialState.FAIL
    holder.close()


def test_a_stopping_trial_whose_last_write_meets_the_lock_is_the_interruption_not_a_fault(store):
    """A clean-clone `make test` once ended a SIGHUP'd sweep with a traceback: the trial, stopping, could not
    write its end (SQLite's lock) and Optuna failed its own "Should not reach" assert. The worker now takes
    that as the interruption it is (the sweep fails and queues the trial); without the halt set, it is a fault."""
    import sqlite3

    from mnist_lab.sweep.budget import Halt
    from mnist_lab.sweep.workers import stopping_write

    db = store / "locked.db"
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}", engine_kwargs={"connect_args": {"timeout": 0.2}})
    study = optuna.create_study(study_name="s", storage=storage)
    halt, holder = Halt(), sqlite3.connect(db, isolation_level=None, check_same_thread=False)

    def stopped_while_another_writes(trial):
        halt.set()
        holder.execute("BEGIN EXCLUSIVE")
        raise optuna.TrialPruned()

    with pytest.raises(Exception) as e:
        study.optimize(stopped_while_another_writes, n_trials=1, catch=(Exception,))
    holder.execute("COMMIT")
    assert stopping_write(e.value, halt) and not stopping_write(e.value, Halt())
    assert not stopping_write(RuntimeError("a bug"), halt)
    assert study.trials[0].state == TrialState.RUNNING  # left for the sweep to fail and queue again
    holder.close()


def _exit_with(code: int) -> None:
    os._exit(code)


def _wait_for_a_signal() -> None:
    time.sleep(60)


def test_a_worker_process_that_ends_mid_sweep_is_named_with_how_it_ended(capsys):
    """Real processes, ended each way a sweep's worker can end while the sweep goes on."""
    import multiprocessing
    import signal

    from mnist_lab.sweep.workers import STOPPED_EXIT, say_dead

    ctx = multiprocessing.get_context("fork")  # these children run no TensorFlow
    said = []
    for end, alive in ((STOPPED_EXIT, 1), (1, 2), (signal.SIGKILL, 1), (signal.SIGRTMIN + 3, 0)):
        if end in (STOPPED_EXIT, 1):
            p = ctx.Process(target=_exit_with, args=(end,))
            p.start()
        else:
            p = ctx.Process(target=_wait_for_a_signal)
            p.start()
            os.kill(p.pid, end)
        p.join(10)
        say_dead(p, alive)
        said.append(p.pid)
    err = capsys.readouterr().err.splitlines()
    assert err == [f"worker process {said[0]} was stopped by a signal sent to it alone; the sweep goes on with 1 worker",
                   f"worker process {said[1]} ended with exit code 1; the sweep goes on with 2 workers",
                   f"worker process {said[2]} ended by SIGKILL; the sweep goes on with 1 worker",
                   f"worker process {said[3]} ended by signal {int(signal.SIGRTMIN) + 3}; no worker is left: the search ends here"]
