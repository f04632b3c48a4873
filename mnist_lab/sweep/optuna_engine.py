"""The Optuna engine: search the space, then confirm and crown.

    mnist-lab sweep experiments/sweep.yaml                      # resumes if run again
    mnist-lab sweep experiments/smoke.yaml --n-trials 4 --workers 2
    mnist-lab sweep experiments/sweep.yaml --storage postgresql://user@db/optuna   # one per machine

Read top to bottom: the study is opened (created on the first start, with the baseline enqueued as
trial 0) and found in MLflow; what a killed run of this command left behind is settled; the
workers search until the budget is spent (mnist_lab/sweep/budget.py); then the best trials and
the baseline are confirmed over seeds and the champion crowned only if it beats them
(mnist_lab/champion.py); the study's one test evaluation; the description. Ctrl-C or SIGTERM at
any point ends cleanly: the interrupted trials run first on resume.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from mlflow import MlflowClient
from rich.console import Console

from mnist_lab import champion, tracking
from mnist_lab.errors import Interrupted, MnistLabError, StoreLost, fault_cause, store_fault
from mnist_lab.sweep import budget, display, records, recovery
from mnist_lab.sweep.optuna_study import make_storage, open_study
from mnist_lab.sweep.records import StudySetup
from mnist_lab.sweep.workers import WorkerSettings, Workers, quiet_store_faults

PARENT_WAIT_SECONDS = 60  # how long a worker that did not create the study waits for its MLflow run
# The creator records itself on the study milliseconds after making it: a study with no creator after
# this long lost it to a kill in between, and nobody is coming to make its run.
CREATOR_WAIT_SECONDS = 5


def parent_run(study, setup: StudySetup, created: bool, storage_url: str) -> str:
    """The study's MLflow run: created once, found again on resume and by every other worker.

    Safe against a kill at any instant of the first start: a run made but not yet recorded on the
    Optuna study is found by its tags and adopted (never a second parent), and a creator that died
    before making it is not waited for."""
    client = MlflowClient()
    storage = tracking.redact(storage_url)
    if created:
        # A new Optuna study under a name the MLflow store already knows would file its trials beside
        # another study's in every report; refused, and the new study removed again.
        existing = records.study_runs(client, setup)
        if existing:
            import optuna

            optuna.delete_study(study_name=setup.name, storage=make_storage(storage_url))
            run = existing[0]
            raise MnistLabError(
                f"study {setup.name}: the MLflow store already holds a study of that name (run {run.info.run_id}, "
                f"Optuna storage {run.data.tags.get('search_state', 'unknown')}); pick another --study name, or "
                f"resume that one with its --storage")
    for waited in range(PARENT_WAIT_SECONDS):
        run_id = study.user_attrs.get("mlflow_parent_run_id")  # read from the storage afresh each time
        if not run_id and not created:
            # A first start killed between making the run and recording it on the study left it here.
            run_id = next((r.info.run_id for r in records.study_runs(client, setup)
                           if r.data.tags.get("search_state") == storage), None)
            if run_id:
                study.set_user_attr("mlflow_parent_run_id", run_id)
                study.set_user_attr("mlflow_tracking_uri", tracking.redact(tracking.current_uri()))
        if run_id:
            records.check_parent_run(client, run_id, setup.name, study.user_attrs.get("mlflow_tracking_uri"),
                                     "--study NAME")
            client.update_run(run_id, status="RUNNING")
            return run_id
        creator = study.user_attrs.get("created_by")
        if created or (creator and tracking.worker_is_dead(creator)) or (not creator and waited >= CREATOR_WAIT_SECONDS):
            break  # nobody else will make it
        time.sleep(1)  # the creating worker may be a moment behind
    run_id = records.create_parent_run(setup, "optuna", storage)
    study.set_user_attr("mlflow_parent_run_id", run_id)
    study.set_user_attr("mlflow_tracking_uri", tracking.redact(tracking.current_uri()))
    return run_id


def run(setup: StudySetup, storage_url: str, n_workers: int) -> dict[str, Any]:
    """Search, then confirm and crown; returns the summary the CLI prints."""
    study, created = open_study(setup, storage_url)
    parent_run_id = parent_run(study, setup, created, storage_url)
    # What a SIGKILLed run of this command left behind on this machine is settled before anything starts.
    recovery.reap_dead_trials(study, make_storage(storage_url))
    records.end_dead_runs(MlflowClient(), setup, parent_run_id)
    if created and (baseline := setup.space.baseline_values()):
        # The first trial is the base config itself: every other trial is judged against it.
        study.enqueue_trial(baseline, user_attrs={"baseline": True})
    # One time budget, the study's, for search and confirmation: workers stop starting trials when the
    # next one and the confirmation (estimated from the trials' own durations) would no longer fit.
    clock = budget.Clock(study, setup.space.space.budget.timeout)
    stop = budget.Halt()
    workers = Workers(WorkerSettings(setup, storage_url, parent_run_id, clock.end, confirm_workers=n_workers), n_workers, stop)
    # SIGTERM and SIGHUP reach here as KeyboardInterrupt: the CLI, which owns the process, says so.
    hook, threading.excepthook = threading.excepthook, quiet_store_faults
    try:
        with display.Progress(study, setup, clock) as progress:
            workers.run(progress.update)
            progress.update()
        if stop.fault:  # a trial's store went away
            raise StoreLost(stop.fault)
        if stop.is_set():  # the worker thread was stopped by a signal of its own
            raise KeyboardInterrupt
        return conclude(setup, storage_url, parent_run_id, clock, n_workers)
    except KeyboardInterrupt:
        workers.stop()
        try:
            outcome = interrupted(setup, storage_url, parent_run_id, workers.ids)
        except Exception as e:  # stopped while a store was away: that store's paragraph, not a traceback
            if (fault := store_fault(e)) is None:
                raise
            outcome = lost(setup, storage_url, parent_run_id, workers.ids, fault, e)
        raise outcome from None
    except Exception as e:  # a store that went away mid-study ends it in one paragraph, not a traceback
        fault = stop.fault or store_fault(e)
        if fault is None:
            raise
        workers.stop()
        raise lost(setup, storage_url, parent_run_id, workers.ids, fault, e) from None
    finally:
        clock.tick(now=True)
        threading.excepthook = hook


def reload(setup: StudySetup, storage_url: str):
    """The study read afresh: what the workers wrote, not what the live display cached (it may have
    been interrupted half-way through refreshing its cache)."""
    import optuna

    return optuna.load_study(study_name=setup.name, storage=make_storage(storage_url))


def conclude(setup: StudySetup, storage_url: str, parent_run_id: str, clock: budget.Clock, n_workers: int = 1) -> dict[str, Any]:
    """After the search: say why it stopped, confirm the best trials over seeds, crown, evaluate once."""
    console = Console(stderr=True, highlight=False, soft_wrap=True)  # a log file gets whole lines, not 80 columns
    study = reload(setup, storage_url)
    space = setup.space
    counts = budget.count(study)
    stopped, done = budget.why_stopped(study, space, clock.end, n_workers)
    console.print(stopped)
    best_first = budget.ranked(study, space)
    best = best_first[0] if best_first else None
    metric = space.space.objective[0].metric
    summary: dict[str, Any] = {"study": setup.name, "parent_run_id": parent_run_id, "counts": counts,
                               "storage": tracking.redact(storage_url), "trials": str(counts), "stopped": stopped}
    client = MlflowClient()
    summary["best_line"] = records.record_search(client, parent_run_id, str(counts), stopped,
                                                 (best.number, metric, best.values[0]) if best else None)
    if not done:
        summary["failed"] = stopped
    elif best is not None:  # an unfinished study (stopped by failures, not by its budget or time) crowns nothing
        confirm = space.space.confirm
        baseline = next((t.user_attrs["mlflow_run_id"] for t in best_first if t.user_attrs.get("baseline")), None)
        seeds = budget.confirmation_seeds(study, space, clock.end, n_workers)
        console.print(f"confirmation: the top {confirm.top} trials and the baseline{'' if baseline else ' (not in the space: from its config)'}, "
                      f"{seeds} training seeds each{' (the time left fits more than confirm.seeds)' * (seeds > confirm.seeds)}")
        # The confirmation has the rest of the time budget, but at least the time it is estimated to need:
        # a study killed during its confirmation after the budget ran out still finishes it on resume.
        deadline = None if clock.end is None else max(clock.end, time.time() + budget.confirmation_seconds(study, space, n_workers, seeds))
        verdict = champion.confirm_and_crown(
            setup.name, parent_run_id, [t.user_attrs["mlflow_run_id"] for t in best_first], baseline or setup.base,
            confirm.top, seeds, setup.data_dir, deadline=deadline, floor=confirm.min_val_accuracy,
            on_result=lambda c, seed, v: (console.print(f"  {c.label} seed {seed}: val_accuracy {v:.4f}"), clock.tick()),
            workers=n_workers,
        )
        for line in display.verdict_lines(verdict):
            console.print(line)
        summary["verdict"] = verdict
        summary["test"] = champion.evaluate_answer(verdict, best.user_attrs["mlflow_run_id"], confirm.min_val_accuracy,
                                                   setup.data_dir)
    records.finish(client, parent_run_id, setup.name, summary, "FINISHED" if done else "FAILED")
    display.print_top(study, space)
    return summary


def interrupted(setup: StudySetup, storage_url: str, parent_run_id: str, worker_ids: set[str]) -> Interrupted:
    """Leave nothing RUNNING: the trials interrupted are queued to run first on resume, their runs
    and the study's run end KILLED."""
    settled = recovery.settle_interrupted(reload(setup, storage_url), make_storage(storage_url), worker_ids)
    # A confirmation seed cut short, or a trial run the retry above did not reach, ends KILLED too.
    records.end_interrupted(MlflowClient(), setup, parent_run_id, worker_ids)
    which = f"{runs_again(settled)}; " if settled else ""
    return Interrupted(f"stopped cleanly; {which}resume with: {tracking.resume_command()}")


def runs_again(settled: list[tuple[int, int | None]]) -> str:
    """Optuna numbers a retry anew: say under which number each configuration comes back."""
    return "; ".join(f"trial {old}'s configuration runs again first" + (f", as trial {new}" if new is not None else "")
                     for old, new in settled)


def lost(setup: StudySetup, storage_url: str, parent_run_id: str, worker_ids: set[str], fault: str,
         error: BaseException) -> StoreLost:
    """A store went away mid-study: the running trial is queued again and the runs ended, as far as
    the stores still allow; one paragraph says what was lost and how to resume."""
    settled: list[tuple[int, int | None]] = []
    with contextlib.suppress(Exception):
        settled = recovery.settle_interrupted(reload(setup, storage_url), make_storage(storage_url), worker_ids)
    with contextlib.suppress(Exception):
        records.end_interrupted(MlflowClient(), setup, parent_run_id, worker_ids)
    cause = fault_cause(error)
    where = {"the tracking server does not answer": f"MLFLOW_TRACKING_URI={tracking.redact(tracking.current_uri())}",
             "the database does not answer": f"--storage {tracking.redact(storage_url)}"}.get(fault, "the disk under mlruns/")
    again = (runs_again(settled) if settled
             else "the trial that was running runs again first (the next start finds it)")
    return StoreLost(f"{fault} ({where}: {tracking.redact(cause)[:200]}); study {setup.name} stopped. Nothing finished is "
                     f"lost: finished trials stay in the stores, and {again}. Once it is back, resume with: "
                     f"{tracking.resume_command()}")
