"""An Optuna study's budget: the study's clock, trials counted by state, the trials ranked by the
objective, whether the time budget leaves room for another trial and the confirmation, and why the
search stopped.

Both bounds are the study's, not one command's, so a sweep killed or stopped and run again goes on
with what is left of them, and a finished one goes straight to its confirmation:
- `timeout`: the study's time, the union of the spans during which any invocation of it ran (each
  writes its span on the study every few seconds: a kill loses at most that), so concurrent workers
  on several machines are counted once and the days between a kill and a resume not at all;
- `n_trials`, when set: finished trials (complete or pruned) over every restart and worker; failed
  trials do not count, trials lost to a killed or interrupted worker are retried.
`budget.max_consecutive_failures` failures in a row end the study as broken; `budget.plateau`
complete trials without a better one end its search early, and the time left buys the confirmation
more seeds (`confirm.max_seeds`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from mnist_lab.errors import signals_deferred
from mnist_lab.sweep.space import LoadedSpace


@dataclass
class Halt:
    """How a sweep stops its trials: set on Ctrl-C or SIGTERM, or by a trial whose store went away
    (with what was lost); running trials stop at their next batch and no trial starts."""

    event: threading.Event = field(default_factory=threading.Event)
    fault: str | None = None  # 'the tracking server does not answer', ... (mnist_lab/errors.py)

    def set(self, fault: str | None = None) -> None:
        self.fault = self.fault or fault
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()


SPAN_PREFIX = "time_span "  # a study user attribute per invocation: [started, last seen] (time.time())


def spent_seconds(study) -> float:
    """Seconds the study has run, over every invocation and machine: the union of their spans."""
    total, reach = 0.0, float("-inf")
    for start, last in sorted(v for k, v in study.user_attrs.items() if k.startswith(SPAN_PREFIX)):
        total += max(0.0, last - max(start, reach))
        reach = max(reach, last)
    return total


class Clock:
    """This invocation's share of the study's time budget: `end` is when it is spent (None without one)."""

    TICK_SECONDS = 5

    def __init__(self, study, timeout: float | None):
        self.study, self.started, self.ticked = study, time.time(), 0.0
        self.key = f"{SPAN_PREFIX}{socket.gethostname()}:{os.getpid()}:{self.started:.3f}"
        self.spent_before = spent_seconds(study)
        self.timeout = timeout
        self.end = self.started + timeout - self.spent_before if timeout else None

    def spent(self) -> float:
        return self.spent_before + time.time() - self.started

    def tick(self, now: bool = False) -> None:
        """Write this invocation's span on the study (every TICK_SECONDS, or `now`)."""
        if now or time.time() - self.ticked >= self.TICK_SECONDS:
            self.ticked = time.time()
            # Bookkeeping that the next tick redoes: a locked or briefly absent store is not worth a stop.
            with contextlib.suppress(Exception), signals_deferred():
                self.study.set_user_attr(self.key, [self.started, self.ticked])


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    fail: int = 0  # the space's failures: impossible configurations, diverging losses, errors in training
    lost: int = 0  # killed or interrupted workers' trials: not the space's fault, and retried
    running: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    def __str__(self) -> str:
        return f"{self.complete} complete, {self.pruned} pruned, {self.fail} failed, {self.lost} lost to kills"


def count(study) -> Counts:
    from optuna.trial import TrialState

    c = Counts()
    for t in study.get_trials(deepcopy=False):  # pragma: no mutate (a copy changes no value)
        if t.user_attrs.get("surplus"):
            continue
        if t.state == TrialState.COMPLETE:
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
    return c


def worker_lost(t) -> bool:
    """A failed trial whose worker was killed or interrupted; the objective records a reason for every other failure."""
    return "fail_reason" not in t.user_attrs or bool(t.user_attrs.get("interrupted"))


def failures_in_a_row(study) -> int:
    """How many trials failed, by the space's fault, since the last one that finished."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    ended = [t for t in study.get_trials(deepcopy=False, states=states)  # pragma: no mutate (a copy changes no value)
             if not t.user_attrs.get("surplus") and not (t.state == TrialState.FAIL and worker_lost(t))]
    ended.sort(key=lambda t: t.datetime_complete)  # Optuna sets it on every finished trial (FrozenTrial._validate)
    n = 0
    for t in reversed(ended):
        if t.state != TrialState.FAIL:
            break
        n += 1
    return n


def ranked(study, space: LoadedSpace) -> list:
    """The complete trials, best first by the objective that crowns: val_accuracy where it is one of
    several objectives (then only the Pareto front's members), else the first."""
    from optuna.trial import TrialState

    objectives = space.space.objective
    metrics = [o.metric for o in objectives]
    i = metrics.index("val_accuracy") if space.space.multi_objective and "val_accuracy" in metrics else 0
    states = (TrialState.COMPLETE,)
    complete = study.get_trials(deepcopy=False, states=states)  # pragma: no mutate (a copy changes no value)
    if space.space.multi_objective:
        front = {t.number for t in study.best_trials}
        complete = [t for t in complete if t.number in front]
    sign = 1 if objectives[i].way == "maximize" else -1
    return sorted(complete, key=lambda t: -sign * t.values[i])


def trial_seconds(t) -> float | None:
    return (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None


def confirmation_seconds(study, space: LoadedSpace, workers: int = 1, seeds: int | None = None) -> float:
    """What the confirmation would cost if the search stopped now: the seeds still missing (to `seeds`,
    by default `confirm.seeds`) for the current top trials and the baseline, each as long as that
    trial's own run took, trained `workers` at a time (as its trials were, one per worker:
    mnist_lab/parallel.py), so never less than the longest."""
    confirm = space.space.confirm
    seeds = seeds or confirm.seeds
    best_first = ranked(study, space)
    contenders = [t for t in best_first if not t.user_attrs.get("baseline")][: confirm.top]
    baseline = [t for t in best_first if t.user_attrs.get("baseline")]
    runs = [trial_seconds(t) or 0 for t in contenders + baseline for _ in range(seeds - 1)]
    if not baseline and contenders:  # not in the space: all its seeds are trained then, guessed as long as the best's
        runs += [trial_seconds(contenders[0]) or 0] * seeds
    return max(sum(runs) / workers, max(runs)) if runs else 0.0


def reserve_seconds(space: LoadedSpace) -> float:
    """The part of the time budget that stays free whatever the estimates say (`confirm.reserve`)."""
    return space.space.confirm.reserve * (space.space.budget.timeout or 0)


def confirmation_seeds(study, space: LoadedSpace, end: float | None, workers: int = 1) -> int:
    """Seeds for each confirmed configuration: `confirm.seeds`, or more, up to `confirm.max_seeds`, when
    the time budget left fits them and its `confirm.reserve` (a search stopped at a plateau leaves time:
    it goes here)."""
    confirm = space.space.confirm
    if end is None or confirm.max_seeds is None:
        return confirm.seeds
    fits = [n for n in range(confirm.seeds + 1, confirm.max_seeds + 1)
            if time.time() + confirmation_seconds(study, space, workers, n) + reserve_seconds(space) <= end]
    return max(fits, default=confirm.seeds)


PLATEAU_ATTR = "plateau_reached"  # [the best trial's number, budget.plateau, "complete"] when the search stopped at a plateau


def plateaued(study, space: LoadedSpace) -> int | None:
    """The best trial's number once `budget.plateau` trials have completed after it (numbered after it)
    without beating it; else None. With several objectives, after the newest member of the Pareto
    front. Pruned trials do not count: the default study prunes many within seconds, and counting them
    (section j at 05f53ad) stopped its search after 11 of its 27 minutes, 12 trials after its best, 8 of
    them pruned, and the study ended 7 minutes early. Written on the study when first seen, so the stop
    holds for every worker and machine even if a trial still running then ends better (the confirmation
    ranks it all the same); a space with another `plateau`, or a stop written by the rule that counted
    pruned trials, reads the study afresh."""
    from optuna.trial import TrialState

    plateau = space.space.budget.plateau
    if plateau is None:
        return None
    reached = study.user_attrs.get(PLATEAU_ATTR)
    if reached is not None and list(reached[1:]) == [plateau, "complete"]:
        return reached[0]
    front = study.best_trials if space.space.multi_objective else ranked(study, space)[:1]
    if not front:
        return None
    best = max(t.number for t in front)
    after = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.number > best]  # pragma: no mutate (a copy changes no value)
    if len(after) < plateau:
        return None
    study.set_user_attr(PLATEAU_ATTR, [best, plateau, "complete"])
    return best


def search_time_left(study, space: LoadedSpace, end: float | None, workers: int = 1) -> bool:
    """May another trial start? Only if it and then the confirmation still fit before `end`.

    The next trial is assumed to take as long as three in four finished ones did (most are
    pruned early, a few run long); at least `confirm.reserve` of the time budget stays free.
    """
    import numpy as np
    from optuna.trial import TrialState

    if end is None:
        return True
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    finished = [trial_seconds(t) for t in study.get_trials(deepcopy=False, states=states)]  # pragma: no mutate (a copy changes no value)
    finished = [s for s in finished if s is not None]
    next_trial = float(np.percentile(finished, 75)) if finished else 0.0
    keep = max(reserve_seconds(space), confirmation_seconds(study, space, workers))
    return time.time() + next_trial + keep < end


def trials_left(study, space: LoadedSpace) -> bool:
    """No trial cap, or fewer trials finished than it."""
    cap = space.space.budget.n_trials
    return cap is None or count(study).finished < cap


def may_start_another(study, space: LoadedSpace, end: float | None, workers: int = 1) -> bool:
    """Neither the trial budget nor the time budget spent, the search not stalled, the space not broken."""
    budget = space.space.budget
    return (trials_left(study, space) and failures_in_a_row(study) < budget.max_consecutive_failures
            and plateaued(study, space) is None and search_time_left(study, space, end, workers))


def why_stopped(study, space: LoadedSpace, end: float | None, workers: int = 1) -> tuple[str, bool]:
    """(the sentence saying why the search stopped, whether the study is done: a done study goes on
    to its confirmation; one stopped short of its budget crowns nothing)."""
    budget = space.space.budget
    c = count(study)
    of = f" of {budget.n_trials}" if budget.n_trials is not None else ""
    if not trials_left(study, space):
        return f"stopped: the budget of {budget.n_trials} finished trials is reached", True
    if end is not None and not search_time_left(study, space, end, workers):
        return (f"stopped: the study's time budget ({budget.timeout:.0f} s) has room only for the confirmation, "
                f"after {c.finished} finished trials"), True
    if (best := plateaued(study, space)) is not None:
        return (f"stopped: {budget.plateau} trials completed after trial {best}, then the best, without beating it "
                f"(budget.plateau); {c.finished} trials finished"), True
    in_a_row = failures_in_a_row(study)
    if in_a_row >= budget.max_consecutive_failures:
        # The last of the space's own failures, not an interrupted trial's "runs again on resume".
        last = max((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("fail_reason") and not worker_lost(t)),
                   key=lambda t: t.number, default=None)
        why = f" (the last: {last.user_attrs['fail_reason'][:200]})" if last else ""
        return (f"stopped: {in_a_row} trials failed in a row{why}, the limit budget.max_consecutive_failures; "
                f"{c.finished}{of} trials finished. Fix the space, or raise the limit, and run again to resume"), False
    return f"stopped with {c.finished}{of} trials finished; run the same command again to resume", False
