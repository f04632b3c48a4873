"""One Optuna study for `make bench` section g: the lab's own trial machinery (the sweep's objective,
its pruner reports, its MLflow runs), run until the study has spent a compute budget.

    python benchmarks/search_study.py SPACE.yaml IMAGES      # in a fresh folder: mlruns/ lands there

`mnist-lab sweep` stops at a number of trials or a time; a comparison of search methods needs
them to stop at equal compute instead, here training images seen (a pruned trial counts the
images it saw before it stopped). No confirmation stage: only the search is compared.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mnist_lab import tracking
from mnist_lab.sweep.budget import Halt
from mnist_lab.sweep.objective import Objective
from mnist_lab.sweep.optuna_engine import parent_run
from mnist_lab.sweep.optuna_study import default_storage, open_study
from mnist_lab.sweep.records import StudySetup
from mnist_lab.sweep.space import load_space


def images_seen(trial, epoch_images: int) -> int:
    if trial.state.name == "PRUNED":
        return trial.last_step or 0
    if trial.state.name == "COMPLETE":
        return trial.user_attrs.get("epochs_run", 0) * epoch_images
    return 0


def main() -> None:
    space_path, budget = sys.argv[1], int(sys.argv[2])
    space = load_space(space_path)
    setup = StudySetup(Path(space_path).stem, space, {}, space.config_for({}), None, tracking.setup())
    storage_url = default_storage()
    study, created = open_study(setup, storage_url)
    parent_run_id = parent_run(study, setup, created, storage_url)
    if created and space.baseline_values():
        study.enqueue_trial(space.baseline_values(), user_attrs={"baseline": True})  # as `mnist-lab sweep` does
    objective = Objective(setup, parent_run_id, Halt())
    epoch_images = space.config_for({}).data.train_count()
    spent = 0
    while spent < budget:
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
        trials = study.get_trials(deepcopy=False)
        if len(trials) >= 5 and all(t.state.name == "FAIL" for t in trials[-5:]):  # failures spend nothing: no end
            sys.exit(f"search_study: 5 trials in a row failed: {trials[-1].user_attrs.get('fail_reason')}")
        spent = sum(images_seen(t, epoch_images) for t in trials)
    print(f"{len(study.trials)} trials, {spent:,} training images seen", flush=True)


if __name__ == "__main__":
    main()
