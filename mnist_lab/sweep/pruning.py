"""Successive halving that compares a trial only with trials at the same point of the same
learning-rate schedule: the sweep's default pruner (`pruner: sha`).

Why not Optuna's SuccessiveHalvingPruner as it is: it ranks every trial that reached a rung
together, at equal images seen. With annealed schedules in the space that is not a fair race. At
9/8 of an epoch a 2-epoch cosine run is already decaying its rate and scores high, while a 5-epoch
run is still near its peak rate and scores what a constant rate scores; its gain comes with the
decay, epochs later. Measured in the study of 4c73b2a (README): the trial that was crowned
(one-cycle over 3 epochs) was mid-pack at every rung up to 9/8 of an epoch (0.955, 0.965 against
the batch-32 constant-rate trials' 0.96-0.98) and overtook them only once its rate decayed; it
survived because it ran early, when a rung had few rivals, and the later one-cycle and batch-norm
proposals were pruned before their decay. TPE then learnt "constant rate, batch 32".

So the rungs stay Optuna's (min_resource * eta**k images of the trial's own run, the best 1/eta
kept), but the rivals are chosen fairly:
- a constant-rate trial is ranked against every constant-rate trial at equal images seen (their
  rate does not depend on the run's length);
- an annealed trial (cosine, one-cycle) against the trials of its schedule at the same fraction of
  their runs, i.e. at the same point of the schedule: a 5-epoch run at 5/8 of an epoch meets a
  2-epoch run at 2/8. With equal epochs that is equal images seen. The longer run has then seen more
  images, so it is never pruned for sampling more epochs or a slower schedule.
Ranking needs at least eta trials of the schedule at the rung (the trial included); before that, a
trial only has to clear a floor, an error no more than twice the median error of the trials of its
batch size at that rung, so a diverged configuration still stops early. Optuna's rule keeps only the
best one then, and measured (study of 7046983, README) that let the first one-cycle trial, a good draw, stop
the next ones of its schedule: TPE saw almost no finished annealed run and went back to the
baseline's corner. With this rule the study of dc30c9c crowned (0.9944 over 3 seeds) a one-cycle
network the study of 30fc94b had pruned after 1.15 epochs.

A one-cycle trial still in its warm-up (the first 30% of its run) skips the floor: its rate starts at
a 25th of its peak, and in section j's default study of seed 0 at 05f53ad the floor stopped 7
one-cycle trials within 5-7 s each, at 0.50-0.81 an eighth of an epoch in where the others scored
0.90-0.97, while the one-cycle draw that warmed up fast enough was crowned. A diverged one (a score
that is no longer a number) still stops at once; one stuck near chance runs until it is ranked or
its warm-up ends.

The floor compares batch sizes apart: an eighth of an epoch is 215 steps at batch 32 and 27 at batch
256, and a floor across batch sizes (at 3/8 of an epoch and earlier, or at a ranking rung short of rivals)
judged steps taken, not promise. In the three default
studies of the seventh session's equal-time bench (24203a2) it stopped 4 trials, every one a batch-256
cosine run (0.62-0.88 an eighth of an epoch in), while batch-256 runs that escaped it were crowned
(seed 2, 0.9957 over 3 seeds) or runner-up; no other batch size lost a trial to it. The first trial of a
batch size has no floor to clear (a diverged one still stops), and trials of a study started before the
attribute count as a batch size of their own.

A trial's value at a rung is its first report at or after it. A rival's value at a point of its
schedule is interpolated between its reports (they come every eighth of an epoch, and a point of a
longer run's schedule falls between a shorter run's reports), and it has none before its first
report: at the first rung an 8-epoch run meets no 3-epoch rival, whose first report lies 2.7 times
further along its schedule, only the floor. Nothing is stored beside the
intermediate values and three user attributes set when the trial starts, so the decision is the
same after a resume and for every worker sharing the storage.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from mnist_lab.config import ONE_CYCLE_WARMUP, Config

# Validation scores the pruner sees per epoch: 7 on a slice, then the full set (mnist_lab/sweep/objective.py).
# Pruning starts after the first (an eighth of an epoch, 3-6 s of training here), so most trials cost seconds.
REPORTS_PER_EPOCH = 8
SLICE_IMAGES = 1000  # the fixed, stratified slice of the validation set scored within an epoch
# User attributes the sweep sets on each trial before training: its learning-rate schedule, the
# training images of its whole run (epochs x training set), and its batch size.
SCHEDULE_ATTR, RUN_ATTR, BATCH_ATTR = "lr_schedule", "run_images", "batch_size"


def value_at(trial: FrozenTrial, images: float) -> float | None:
    """The trial's first reported value at or after `images`, if it got that far."""
    steps = [s for s in trial.intermediate_values if s >= images]
    return trial.intermediate_values[min(steps)] if steps else None


def value_along(trial: FrozenTrial, images: float) -> float | None:
    """The trial's value `images` into its run, interpolated between its reports; None outside them."""
    steps = sorted(trial.intermediate_values)
    if not steps or not steps[0] <= images <= steps[-1]:
        return None
    return float(np.interp(images, steps, [trial.intermediate_values[s] for s in steps]))


def rival_value(rival: FrozenTrial, schedule: str, rung: int, fraction: float) -> float | None:
    """Constant rate: the rival's value at equal images; annealed: at the same fraction of its own run
    as the trial's report at this rung is of the trial's run."""
    if schedule == "constant":
        return value_at(rival, rung)
    return value_along(rival, fraction * rival.user_attrs[RUN_ATTR])


def cut(values: list[float], eta: int, maximize: bool) -> float:
    """The worst value still in the best len//eta (the pruner asks only once there are eta)."""
    return sorted(values, reverse=maximize)[len(values) // eta - 1]


def promotable(value: float, rivals: list[float], eta: int, maximize: bool) -> bool:
    """Optuna's rule: in the best len//eta of the values."""
    keep = cut(rivals, eta, maximize)
    return value >= keep if maximize else value <= keep


def hopeless(value: float, values: list[float], maximize: bool) -> bool:
    """More than twice the median error of the trials at the rung (error: 1 - accuracy, or the loss).

    The floor for a trial without a rival: lenient, because it compares across schedules (a cosine
    run starts at its peak rate like a constant one; a one-cycle run in its warm-up is not judged)
    though only within a batch size (the caller's choice of `values`).
    """
    median = sorted(values)[len(values) // 2]
    return (1 - value) > 2 * (1 - median) if maximize else value > 2 * median


def within_noise(value: float, keep: float, maximize: bool, noise_images: int | None) -> bool:
    """An accuracy less than one standard error of a score on `noise_images` images below the cut: not
    told apart from it (losses and unset: no allowance)."""
    if not maximize or noise_images is None or not 0 <= keep <= 1:
        return False
    return value >= keep - math.sqrt(keep * (1 - keep) / noise_images)


class ScheduleAwareHalving(optuna.pruners.BasePruner):
    """`min_resource * eta**k` images are the floor's rungs; trials are ranked only from `rank_from`
    images on (`rank_from * eta**k`; by default from the first rung), and a trial within
    `noise_images`' standard error of the cut is kept."""

    def __init__(self, min_resource: int, reduction_factor: int = 3, rank_from: int | None = None,
                 noise_images: int | None = None):
        self.min_resource, self.eta = min_resource, reduction_factor
        self.rank_from, self.noise_images = rank_from or min_resource, noise_images

    def rungs(self, upto: int) -> list[int]:
        out, r = [], self.min_resource
        while r < self.rank_from and r <= upto:
            out.append(r)
            r *= self.eta
        r = self.rank_from
        while r <= upto:
            out.append(r)
            r *= self.eta
        return out

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        value = trial.intermediate_values[step]
        if not math.isfinite(value):
            return True
        earlier = [s for s in trial.intermediate_values if s < step]
        previous = max(earlier) if earlier else 0
        crossed = [r for r in self.rungs(step) if r > previous]  # rungs this report is the first at or after
        if not crossed:
            return False
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        schedule, run, batch = trial.user_attrs[SCHEDULE_ATTR], trial.user_attrs[RUN_ATTR], trial.user_attrs.get(BATCH_ATTR)
        alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        others = [t for t in study.get_trials(deepcopy=False, states=alive)  # pragma: no mutate (a deep copy changes no value)
                  if t.number != trial.number]
        for rung in crossed:
            rivals = [v for t in others if t.user_attrs.get(SCHEDULE_ATTR) == schedule
                      and (v := rival_value(t, schedule, rung, step / run)) is not None and math.isfinite(v)]
            if rung >= self.rank_from and len(rivals) + 1 >= self.eta:
                if not promotable(value, rivals + [value], self.eta, maximize) and not within_noise(
                        value, cut(rivals + [value], self.eta, maximize), maximize, self.noise_images):
                    return True
                continue
            if schedule == "one_cycle" and step < ONE_CYCLE_WARMUP * run:
                continue  # still warming up: its score says nothing yet of where the run ends
            same_batch = [v for t in others if t.user_attrs.get(BATCH_ATTR) == batch
                          and (v := value_at(t, rung)) is not None and math.isfinite(v)]
            if same_batch and hopeless(value, same_batch, maximize):
                return True
        return False


def make_pruner(pruner: str, base: Config, max_epochs: int) -> optuna.pruners.BasePruner:
    """The space's `pruner`, on training images seen (Optuna's step). `base` is the config every
    trial starts from, the command line's overrides included: its training set is an epoch."""
    epoch = base.data.train_count()
    first_rung = max(1, epoch // REPORTS_PER_EPOCH)  # the first report: an eighth of an epoch of images
    if pruner == "median":
        # Not before the first report: the first reports of every trial are noise.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=first_rung)
    if pruner == "sha":
        # Successive halving from the first epoch's end on (1, 3, 9 epochs), scored on the whole validation
        # set: keep the best third of the trials at the same point of the same learning-rate schedule, and
        # any trial within a standard error of that cut. Before it (an eighth and three eighths of an
        # epoch) only the floor: a diverged or hopeless trial stops in seconds.
        return ScheduleAwareHalving(min_resource=first_rung, reduction_factor=3, rank_from=epoch, noise_images=SLICE_IMAGES)
    if pruner == "sha-pooled":
        # Optuna's own: every trial at a rung ranked together, whatever its schedule.
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_rung, reduction_factor=3)
    if pruner == "hyperband":
        # Rungs from an eighth of an epoch up to the longest trial, keeping a third at each: a hopeless
        # trial stops within its first epoch, and trials are compared at equal images seen.
        return optuna.pruners.HyperbandPruner(min_resource=first_rung, max_resource=max(1, max_epochs * epoch),
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()
