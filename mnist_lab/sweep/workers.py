"""The Optuna study's workers: one thread in this process (`--workers 1`), or N spawned processes
sharing the cores, each running trials until the budget is spent; and how they stop.

Ctrl-C or SIGTERM sets the sweep's `stop` event: running trials stop at their next batch, no trial
starts; `Workers.stop` sends worker processes SIGTERM after 3 s, and SIGKILL STOP_WAIT_SECONDS later.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace

from mnist_lab import tracking
from mnist_lab.parallel import stop_when_orphaned
from mnist_lab.startup import import_tensorflow
from mnist_lab.sweep import budget, recovery
from mnist_lab.errors import stop_signals, store_fault
from mnist_lab.sweep.budget import Halt
from mnist_lab.sweep.records import StudySetup, end_interrupted

STOP_WAIT_SECONDS = 30  # after Ctrl-C, how long running trials get to stop at their next batch
STOPPED_EXIT = 130  # a worker process stopped by a signal, as a shell says of Ctrl-C
# A worker process's exit code when a store went away, one per kind, so the main process can say which.
LOST_STORE_EXITS = {"the disk is full": 75, "the database does not answer": 76, "the tracking server does not answer": 77}


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs: plain values, so a spawned process gets them pickled."""

    study: StudySetup
    storage_url: str
    parent_run_id: str
    end: float | None  # time.time() at which the study's time budget ends
    main_pid: int = 0  # the sweep's own process: a worker process outliving it stops
    index: int = 0  # 0, 1, ...: each worker's sampler gets its own seed
    threads: int | None = None  # CPU threads for TensorFlow; None: a thread of the main process, which set them up
    confirm_workers: int = 1  # how many seeds the confirmation trains at once: what the time budget must keep for it


def work(settings: WorkerSettings, stop: Halt) -> None:
    """One worker: run trials until the study has its finished trials, or time runs short."""
    import optuna

    from mnist_lab.sweep.objective import Objective
    from mnist_lab.sweep.optuna_study import make_storage, open_study

    study, _ = open_study(settings.study, settings.storage_url, settings.index)
    storage = make_storage(settings.storage_url)
    space = settings.study.space
    objective = Objective(settings.study, settings.parent_run_id, stop)
    try:
        while not stop.is_set():
            recovery.reap_dead_trials(study, storage)
            optuna.storages.fail_stale_trials(study)
            if not budget.may_start_another(study, space, settings.end, settings.confirm_workers):
                break
            c = budget.count(study)
            cap = space.space.budget.n_trials
            if cap is not None and c.finished + c.running >= cap:
                time.sleep(1)  # the last trials are running elsewhere; they may still die and need a retry
                continue
            if stop.is_set():  # heard during the bookkeeping above: start nothing
                break
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
    except Exception as e:  # the storage itself went away (its errors reach here, not the objective's)
        if not stopping_write(e, stop):
            fault = store_fault(e)
            if fault is None:
                raise
            stop.set(fault)
    except KeyboardInterrupt:
        stop.set()  # the trial was failed by Optuna and marked interrupted; whoever settles the stop queues it again
    if stop.is_set() and stop.fault is None:  # stopped by a signal, wherever it found the worker
        settle_if_orphaned(settings, study, storage)


def settle_if_orphaned(settings: WorkerSettings, study, storage) -> None:
    """A stopped worker process whose sweep died (SIGKILL, OOM) settles its own trial, since nobody else
    will: fails and queues it again, and ends its runs and the study's run KILLED."""
    if settings.threads and os.getppid() != settings.main_pid:
        from mlflow import MlflowClient

        recovery.settle_interrupted(study, storage, {tracking.worker_id()})
        end_interrupted(MlflowClient(), settings.study, settings.parent_run_id, {tracking.worker_id()})


def stopping_write(error: BaseException, stop: Halt) -> bool:
    """Whether `error` is a stopping trial's last write meeting SQLite's lock (Optuna then fails its own
    "Should not reach" assert): not a fault, as the trial is still RUNNING and the sweep fails and
    queues it again like any trial cut short by Ctrl-C."""
    return stop.is_set() and recovery.locked(error)


def work_in_process(settings: WorkerSettings) -> None:
    """A spawned worker process: its own TensorFlow thread pool; Ctrl-C, SIGTERM, SIGHUP or the death
    of the sweep's main process stop its trial at the next batch."""
    halt = Halt()
    stop_on_signals(halt)
    threading.Thread(target=stop_when_orphaned, args=(settings.main_pid,), daemon=True).start()
    import_tensorflow()
    import tensorflow as tf

    # Workers share the cores: one pool each, sized cores // workers.
    tf.config.threading.set_intra_op_parallelism_threads(settings.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tracking.setup()
    threading.excepthook = quiet_store_faults
    work(settings, halt)
    if halt.fault:  # said once by the main process; the exit code tells it which
        sys.exit(LOST_STORE_EXITS[halt.fault])
    if halt.is_set():  # a signal: the main process tells one sent to this worker alone from its own stop
        sys.exit(STOPPED_EXIT)


def stop_on_signals(halt: Halt) -> None:
    """A worker process hears Ctrl-C (sent to the whole process group), SIGTERM and SIGHUP on its halt
    only: its trial stops at the next batch (ReportProgress raises KeyboardInterrupt there) and it starts
    no other. A KeyboardInterrupt raised by the handler itself could land inside one of Optuna's or
    MLflow's store calls and leave that transaction, and SQLite's write lock, held while the other workers
    settle their trials. Ctrl-C only where the sweep hears it too: a script's background job ignores it."""

    def interrupt(signum, frame):
        halt.set()

    for sig in stop_signals(ctrl_c=True):
        signal.signal(sig, interrupt)


def quiet_store_faults(args) -> None:
    """Threads of Optuna and MLflow (heartbeats, logging) whose store went away end quietly: the sweep
    says once what was lost. Anything else is a bug, and shows its traceback."""
    if store_fault(args.exc_value) is None:
        threading.__excepthook__(args)


def say_dead(process, alive: int) -> None:
    """A worker process ended while the sweep goes on: killed (the kernel's OOM killer, a person), a bug,
    or a signal sent to it alone. A trial it left RUNNING is retried by the workers left
    (recovery.reap_dead_trials, which says so when it drops one instead); one it stopped is interrupted."""
    code = process.exitcode
    if code == STOPPED_EXIT:
        how = "was stopped by a signal sent to it alone"
    elif code < 0:
        try:
            how = f"ended by {signal.Signals(-code).name}"
        except ValueError:  # a real-time signal has no name
            how = f"ended by signal {-code}"
    else:
        how = f"ended with exit code {code}"
    then = f"the sweep goes on with {alive} worker{'s' if alive > 1 else ''}" if alive else "no worker is left: the search ends here"
    print(f"worker process {process.pid} {how}; {then}", file=sys.stderr, flush=True)


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


class Workers:
    """The workers of one sweep invocation: started, watched, and stopped on Ctrl-C."""

    def __init__(self, settings: WorkerSettings, n: int, stop: Halt):
        self.stop_event = stop
        self.ids = {tracking.worker_id()}  # whose trials and runs this invocation settles after Ctrl-C
        self.threads: list[WorkerThread] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.said_dead: set[int] = set()  # worker processes whose death was told
        if n == 1:
            self.threads.append(WorkerThread(target=work, args=(settings, stop), daemon=True))
        else:
            threads = max(1, (os.cpu_count() or 1) // n)
            ctx = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
            self.processes = [ctx.Process(target=work_in_process,
                                          args=(replace(settings, index=i, threads=threads, main_pid=os.getpid()),))
                              for i in range(n)]

    def run(self, tick) -> None:
        """Start them and wait, calling `tick()` about once a second (the live display)."""
        for t in self.threads:
            t.start()
        for p in self.processes:
            p.start()
            self.ids.add(tracking.worker_id(p.pid))
        while self.running():
            for t in self.threads:
                t.done.wait(1)
            for p in self.processes:
                p.join(1)
                lost = next((fault for fault, code in LOST_STORE_EXITS.items() if p.exitcode == code), None)
                if lost:
                    self.stop_event.set(lost)
                elif p.exitcode and p.pid not in self.said_dead and not self.stop_event.is_set():
                    self.said_dead.add(p.pid)
                    say_dead(p, sum(q.is_alive() for q in self.processes))
            if self.stop_event.fault:
                return  # the sweep stops the other workers now, not when they meet the fault themselves
            tick()

    def running(self) -> bool:
        # A thread not started yet (Ctrl-C while the display opens) is not running.
        return any(t.ident is not None and not t.done.is_set() for t in self.threads) or any(p.is_alive() for p in self.processes)

    def stop(self) -> None:
        """After Ctrl-C or SIGTERM: trials stop at their next batch; stragglers are terminated, then killed."""
        self.stop_event.set()
        started = time.time()

        def wait(seconds: float) -> None:
            while self.running() and time.time() < started + seconds:
                time.sleep(0.2)

        wait(3)  # Ctrl-C in a terminal reached the worker processes too
        for p in self.processes:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker stops its trial at the next batch
        wait(STOP_WAIT_SECONDS)
        for p in self.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
