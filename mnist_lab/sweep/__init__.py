"""The sweep driver: check the request once, then hand it to an engine.

    mnist-lab sweep experiments/sweep.yaml                          # Optuna, resumes if run again
    mnist-lab sweep experiments/smoke.yaml --engine keras-tuner

The rooms of a sweep: `space` (the space file), `records` (the study in MLflow), `objective` (a
trial), `pruning`, `budget` (counts, time, why it stopped), `recovery` (dead and interrupted
trials), `optuna_study` (storage, sampler), `workers`, `display`, and the two engines side by side,
`optuna_engine` and `keras_tuner_engine`. Everything heavy is imported inside `run`, so a bad space
file or override is refused in half a second, before MLflow or TensorFlow load.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist_lab.config import parse_overrides
from mnist_lab.errors import MnistLabError
from mnist_lab.sweep.space import load_space


@dataclass(frozen=True)
class SweepRequest:
    """What was asked on the command line."""

    space_path: str
    n_trials: int | None = None
    timeout: float | None = None
    workers: int | None = None  # None: the space's `workers`
    study: str | None = None
    storage: str | None = None
    engine: str = "optuna"
    overrides: list[str] = field(default_factory=list)
    data_dir: str | None = None
    seed: int | None = None  # the sampler's; None: the space file's


def run(request: SweepRequest) -> dict[str, Any]:
    """Validate everything, run the study, crown the champion; returns a summary."""
    space = load_space(request.space_path, request.n_trials, request.timeout, request.seed)
    overrides = parse_overrides(request.overrides)
    base = space.config_for({}, overrides)  # a bad override fails here, before any trial
    if request.workers is not None and request.workers < 1:
        raise MnistLabError(f"--workers {request.workers}: must be at least 1")
    if request.engine == "keras-tuner" and (request.workers not in (None, 1) or request.storage):
        raise MnistLabError("--workers and --storage are for the optuna engine; KerasTuner runs one worker here")
    workers = request.workers or space.space.workers
    if workers == "auto":
        workers = max(1, min(len(os.sched_getaffinity(0)), 4))
    # The data and both stores are checked before TensorFlow loads: a missing dataset or a wrong
    # URL costs seconds, not a trial that fails for a reason no configuration can change.
    from mnist_lab import data, tracking
    from mnist_lab.startup import import_tensorflow
    from mnist_lab.sweep.records import StudySetup

    data.load_split(base.data, request.data_dir)
    # The engine is in the default name: `make sweep ENGINE=keras-tuner` after `make sweep` starts
    # its own study instead of mixing its trials, counts and champion into Optuna's.
    # So does a sampler seed other than the file's: `make sweep SEED=1` is a search of its own.
    # A name given with --study must be a safe folder name; one made from the file name is made safe.
    other_seed = f"-seed{request.seed}" if request.seed is not None and request.seed != load_space(request.space_path).space.seed else ""
    name = (tracking.check_study_name(request.study) if request.study
            else re.sub(r"[^A-Za-z0-9._-]+", "-", f"{Path(request.space_path).stem}-{request.engine}{other_seed}").strip(".-"))
    setup = StudySetup(name, space, overrides, base, request.data_dir, tracking.setup())
    if request.engine == "keras-tuner":
        import_tensorflow()
        from mnist_lab.sweep import keras_tuner_engine

        return keras_tuner_engine.run(setup)
    from mnist_lab.sweep.optuna_study import default_storage, make_storage

    storage_url = request.storage or default_storage()
    make_storage(storage_url)
    import_tensorflow()  # here, once, rather than in a worker thread in the middle of the live display
    from mnist_lab.sweep import optuna_engine

    return optuna_engine.run(setup, storage_url, workers)
