"""Where MLflow writes, and the provenance every run carries.

Default store: sqlite:///mlruns/mlflow.db with artifacts under mlruns/artifacts, both
relative to the directory you run from. MLFLOW_TRACKING_URI (e.g. a shared tracking
server, http://host:5000) overrides it; MLFLOW_EXPERIMENT_NAME picks the experiment.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

DEFAULT_EXPERIMENT = "mnist-lab"
MODEL_NAME = "mnist-cnn"  # the registered model; its alias `champion` is what predict uses
CHAMPION_ALIAS = "champion"


def default_store() -> tuple[str, str]:
    root = Path("mlruns").resolve()
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def setup(experiment: str | None = None) -> str:
    """Point MLflow at the store and experiment; returns the experiment id. Safe to call again."""
    # Per-file download bars when loading a model are noise between our own output lines.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow announces creating and migrating its tables on stderr; that is not news to a person.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    artifact_location = None
    if os.environ.get("MLFLOW_TRACKING_URI"):
        # Set it explicitly too: an earlier set_tracking_uri in this process would win over the variable.
        uri = os.environ["MLFLOW_TRACKING_URI"]
    else:
        uri, artifact_location = default_store()
        Path("mlruns").mkdir(exist_ok=True)
    mlflow.set_tracking_uri(uri)
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    if (uri, name) in _experiments:
        # Once per process and store: a sweep calls this for every trial.
        mlflow.set_experiment(experiment_id=_experiments[uri, name])
        return _experiments[uri, name]
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        try:
            experiment_id = mlflow.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:
            # Another worker created it between our look-up and create: use theirs.
            experiment_id = mlflow.get_experiment_by_name(name).experiment_id
    else:
        experiment_id = found.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    _experiments[uri, name] = experiment_id
    return experiment_id


_experiments: dict[tuple[str, str], str] = {}  # (tracking URI, experiment name) -> id, set up in this process


@lru_cache(maxsize=1)
def model_uri(run_id: str) -> str:
    """The models:/ URI of the model a run logged (MLflow 3 keeps models apart from run artifacts)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    run = client.get_run(run_id)
    found = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'", max_results=1)
    return f"models:/{found[0].model_id}" if found else f"runs:/{run_id}/model"


@lru_cache(maxsize=1)
def git_state() -> tuple[str, bool]:
    """(commit, dirty) of the checkout the code runs from; ('unknown', False) outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, check=True
        ).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def provenance_tags() -> dict[str, str]:
    """Tags that let anyone tell whether two runs are comparable, and rerun one."""
    import keras
    import tensorflow as tf

    commit, dirty = git_state()
    return {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "command": command_line(),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "cpu_model": cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "python_version": platform.python_version(),
    }


@lru_cache(maxsize=1)
def pip_freeze() -> str:
    from importlib.metadata import distributions

    lines = set()
    for d in distributions():
        meta = d.metadata  # parsed once per distribution: name and version both come from it
        if meta["Name"]:
            lines.add(f"{meta['Name']}=={meta['Version']}")
    return "\n".join(sorted(lines, key=str.lower)) + "\n"
