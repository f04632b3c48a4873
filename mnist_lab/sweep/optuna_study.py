"""The Optuna study: its storage (with heartbeats), its sampler and its pruner, created on the first
start and loaded again on every resume and by every worker.
"""

from __future__ import annotations

import time
import warnings
from functools import lru_cache

from mnist_lab import tracking
from mnist_lab.errors import MnistLabError
from mnist_lab.sweep.pruning import make_pruner
from mnist_lab.sweep.records import StudySetup
from mnist_lab.sweep.recovery import GRACE_SECONDS, HEARTBEAT_SECONDS, on_dead_trial
from mnist_lab.sweep.space import LoadedSpace


def default_storage() -> str:
    from pathlib import Path

    try:
        Path("mlruns").mkdir(exist_ok=True)
    except OSError as e:
        raise MnistLabError(f"mlruns/: cannot hold the Optuna storage here ({e.strerror}); run from a folder you can "
                            "write to, or pass --storage URL") from None
    return f"sqlite:///{Path('mlruns').resolve() / 'optuna.db'}"


@lru_cache(maxsize=None)
def make_storage(url: str):
    """The storage at `url`, opened once per process (its heartbeat settings and the retry of dead trials included)."""
    import optuna

    # Heartbeats and stale-trial handling are "experimental" in Optuna since 2.9; we rely on them knowingly.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    for attempt in range(3):
        try:
            sqlite = url.startswith("sqlite:///")
            if sqlite:
                tracking.create_sqlite_atomically(url, lambda tmp: optuna.storages.RDBStorage(tmp).engine.dispose())
            storage = optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=on_dead_trial,
                # A host that drops packets would otherwise hang the sweep for minutes.
                engine_kwargs={"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}} if url.startswith("postgresql")
                # SQLite: sqlite3 in autocommit (see write_locked_transactions); a writer waits up to 30 s for
                # the lock, not sqlite3's 5: on a loaded machine its holder can be descheduled that long.
                else {"connect_args": {"isolation_level": None, "timeout": 30}} if sqlite else None,
            )
            if sqlite:
                write_locked_transactions(storage.engine)
            return storage
        except Exception as e:  # SQLAlchemy: bad URL, server down, missing driver
            # Machines starting together race to create Optuna's tables: the loser's CREATE fails
            # on what the winner just made, and a second look finds the schema complete.
            if attempt < 2 and ("already exists" in str(e) or "duplicate key" in str(e)):
                time.sleep(1 + attempt)
                continue
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MnistLabError(f"--storage {tracking.redact(url)}: cannot open the Optuna storage "
                                f"({tracking.redact(first)[:200]})") from None


def write_locked_transactions(engine) -> None:
    """Every transaction on this SQLite storage takes the database's write lock at its BEGIN.

    Optuna starts an enqueued or retried trial by reading that it is WAITING and then writing it
    RUNNING. PostgreSQL locks the row in between (SELECT ... FOR UPDATE); SQLite ignores FOR UPDATE,
    and Python's sqlite3 begins the transaction only at the write, so two workers asking at the same
    moment both read WAITING and both ran the trial, and the second's result then failed its worker
    ("Cannot tell a COMPLETE trial"): a sweep went on with one worker of two. With BEGIN IMMEDIATE the
    second waits for the first's commit and reads RUNNING. (SQLAlchemy's recipe for SQLite: sqlite3 in
    autocommit mode, set by the engine's connect_args, and SQLAlchemy's own BEGIN.)"""
    from sqlalchemy import event

    event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))


def make_sampler(space: LoadedSpace, worker: int = 0, trials_so_far: int = 0):
    import numpy as np
    import optuna

    s = space.space
    # Different seeds per worker, or parallel random/TPE workers would propose the same trials;
    # and per resume (keyed by the trials already there), or a restarted sampler would replay its
    # sequence and repeat finished configurations. One SeedSequence of (seed, worker, resume point)
    # keeps every combination apart: `seed + worker` gave sampler seed 0's second worker the draws
    # of seed 1's first, so studies of neighbouring seeds shared half their trials (measured:
    # benchmarks/equal_time.json, seeds 0 and 1 crowned the same configuration). QMC and grid walk
    # a shared sequence keyed by trial number, so they keep one seed.
    seed = None if s.seed is None else int(np.random.SeedSequence([s.seed, worker, trials_so_far]).generate_state(1)[0])
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
    # epochs), which independent TPE cannot; constant_liar keeps parallel workers apart. Five random
    # start-up trials (the baseline is one), not Optuna's ten: a 27-minute study on 2 cores finishes
    # 20-29 trials, and with ten every champion of section j's studies at 8b7cb41 was a start-up draw.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(s.budget.n_trials),
                                      multivariate=True, constant_liar=True)


def startup_trials(n_trials: int | None) -> int:
    """How many trials TPE draws at random before it models what finished (the enqueued baseline is one)."""
    return min(5, max(2, (n_trials or 15) // 3))


def open_study(setup: StudySetup, storage_url: str, worker: int = 0):
    """(the study, whether this call created it)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print our own one-line trial reports
    space = setup.space
    storage = make_storage(storage_url)
    pruner = make_pruner(space.space.pruner, setup.base, space.max_epochs(setup.base))
    directions = [o.way for o in space.space.objective]
    try:
        study = optuna.create_study(study_name=setup.name, storage=storage, sampler=make_sampler(space, worker),
                                    pruner=pruner, directions=directions)
        study.set_user_attr("created_by", tracking.worker_id())  # a start killed before making the study's run is not waited for
        study.set_user_attr("sampler_seed", space.space.seed)
        # Optuna Dashboard shows these instead of "Objective 0".
        study.set_metric_names([o.metric for o in space.space.objective])
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=setup.name, storage=storage, pruner=pruner)
    started_with = study.user_attrs.get("sampler_seed", space.space.seed)  # studies from before the attribute: any
    if started_with != space.space.seed:
        # Its trials so far were drawn from one seed's sequence; another seed's draws after them would
        # make a study that no single seed reproduces.
        raise MnistLabError(f"study '{setup.name}' was started with sampler seed {started_with}, and this command asks for "
                            f"{space.space.seed}; resume it with --seed {started_with}, or pick another --study name")
    study.sampler = make_sampler(space, worker, len(study.get_trials(deepcopy=False)))
    if [d.name.lower() for d in study.directions] != directions:
        raise MnistLabError(
            f"study '{setup.name}' in {tracking.redact(storage_url)} optimises {[d.name.lower() for d in study.directions]}, "
            f"but {space.path} asks for {directions}; pick another --study name"
        ) from None
    return study, False
