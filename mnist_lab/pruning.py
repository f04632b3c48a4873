"""Successive halving that compares trials at equal images seen *and* at the same point of their
learning-rate schedule: the sweep's default pruner (`pruner: sha`).

Why not Optuna's SuccessiveHalvingPruner as it is: it ranks every trial that reached a rung
together. With annealed schedules in the space that is not a fair race. At 9/8 of an epoch a
2-epoch cosine run is already decaying its rate and scores high, while a 5-epoch run is still near
its peak rate and scores what a constant rate scores; its gain comes with the decay, epochs later.
Measured in the study of 4c73b2a (README): the trial that was crowned (one-cycle over 3 epochs)
was mid-pack at every rung up to 9/8 of an epoch (0.955, 0.965 vs the batch-32 constant-rate
trials' 0.96-0.98) and overtook them only once its rate decayed; it survived because it ran
early, when a rung had few rivals, and the 24 later one-cycle/BN proposals were pruned before
their decay. Tree-structured Parzen estimation then learnt "constant rate, batch 32".

So a trial is ranked, at equal images seen, only against trials whose learning rate followed the
same curve up to there: all constant-rate trials form one group (their rate does not depend on
the run's length), and an annealed trial's group is its schedule and its epochs (its position in
the schedule at a given image count). Within a group: keep the best 1/eta, as Optuna's pruner
does (the best one while the group has fewer than eta trials at the rung). A trial alone in its
group has no fair rival yet; it only has to clear a floor, an error no more than twice the median
error of all trials at that rung, so a diverged or hopeless configuration still stops early.

The rungs are those of Optuna's pruner: min_resource * eta**k images. A trial's value at a rung
is its first report at or after it. Nothing is stored beside the intermediate values, so the
decision is the same after a resume and for every worker sharing the storage.
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import FrozenTrial, TrialState

GROUP_ATTR = "lr_group"  # user attribute the sweep sets on each trial: see `lr_group`


def lr_group(schedule: str, epochs: int) -> str:
    """Trials whose learning rate at a given image count is the same function of that count."""
    return "constant" if schedule == "constant" else f"{schedule} over {epochs} epochs"


def value_at(trial: FrozenTrial, resource: int) -> float | None:
    """The trial's first reported value at or after `resource` images, if it got that far."""
    steps = [s for s in trial.intermediate_values if s >= resource]
    return trial.intermediate_values[min(steps)] if steps else None


def promotable(value: float, rivals: list[float], eta: int, maximize: bool) -> bool:
    """Optuna's rule: in the best len//eta of the values (the best one while there are fewer than eta)."""
    ranked = sorted(rivals, reverse=maximize)
    keep = max(1, len(ranked) // eta)
    return value >= ranked[keep - 1] if maximize else value <= ranked[keep - 1]


class ScheduleAwareHalving(optuna.pruners.BasePruner):
    def __init__(self, min_resource: int, reduction_factor: int = 3):
        self.min_resource, self.eta = min_resource, reduction_factor

    def rungs(self, upto: int) -> list[int]:
        out, r = [], self.min_resource
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
        group = trial.user_attrs.get(GROUP_ATTR)
        others = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
                  if t.number != trial.number]
        for rung in crossed:
            at_rung = [(t.user_attrs.get(GROUP_ATTR), v) for t in others if (v := value_at(t, rung)) is not None and math.isfinite(v)]
            peers = [v for g, v in at_rung if g == group]
            if peers:
                if not promotable(value, peers + [value], self.eta, maximize):
                    return True
            elif at_rung and hopeless(value, [v for _, v in at_rung], maximize):
                return True
        return False


def hopeless(value: float, values: list[float], maximize: bool) -> bool:
    """More than twice the median error of all trials at the rung (error: 1 - accuracy, or the loss).

    The floor for a trial without a peer: a lenient one, because the comparison is across schedules
    (a one-cycle run still warming up at an eighth of an epoch has about 1.5x the median error).
    """
    median = sorted(values)[len(values) // 2]
    return (1 - value) > 2 * (1 - median) if maximize else value > 2 * median
