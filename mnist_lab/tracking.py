"""Where MLflow writes, and the provenance every run carries.

Default store: sqlite:///mlruns/mlflow.db with artifacts under mlruns/artifacts, both
relative to the directory you run from. MLFLOW_TRACKING_URI (e.g. a shared tracking
server, http://host:5000) overrides it; MLFLOW_EXPERIMENT_NAME picks the experiment.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sqlite3
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from mnist_lab.errors import MnistLabError

DEFAULT_EXPERIMENT = "mnist-lab"
MODEL_NAME = "mnist-cnn"  # the registered model; its alias `champion` is what predict uses
CHAMPION_ALIAS = "champion"
UI_URL = "http://127.0.0.1:5000"  # where `mnist-lab ui` serves a local store: MLflow's own default
# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces), not on its runs.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"  # what MLflow's UI shows as a run's description


def default_store() -> tuple[str, str]:
    root = Path("mlruns").resolve()
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


# user:password@ in a URL (storage, tracking server); the user name is kept, it helps and is not secret.
_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<secret>[^@\s]*)@")
# ?password=... style query parameters, as some database URLs carry them.
_SECRET_PARAM = re.compile(r"(?i)(?P<key>[?&](?:password|passwd|pwd|token|secret|key|api_key)=)[^&\s]*")


def redact(text: str) -> str:
    """`postgresql://lab:s3cret@db/optuna` -> `postgresql://lab:***@db/optuna`, wherever it occurs in text."""
    text = _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}***", text)


def current_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_store()[0]


def check_store() -> None:
    """Fail in seconds, with one line, when the tracking store cannot be used: before any training.

    MLflow itself would retry an unreachable server for minutes and then print a traceback, and
    only notice a read-only mlruns/ when the first run is written."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as e:
            if isinstance(e, requests.Timeout):
                reason = "no answer within 5 s"
            elif isinstance(e, requests.HTTPError):
                reason = f"HTTP {e.response.status_code} from /health"
            else:
                reason = "cannot connect"
            raise MnistLabError(
                f"MLFLOW_TRACKING_URI={redact(uri)}: the tracking server does not answer ({reason}); "
                "start it, or unset MLFLOW_TRACKING_URI to track in mlruns/"
            ) from None
        return
    if not uri:
        folder = Path("mlruns")
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
    elif uri.startswith(("file://", "/")):
        folder = Path(uri.removeprefix("file://"))
    else:
        return  # a database server (postgresql://, mysql://): MLflow's connection error is made one line below
    what = f"MLFLOW_TRACKING_URI={redact(uri)}" if uri else "mlruns/ (the default tracking store)"
    if folder.exists() and not folder.is_dir():
        raise MnistLabError(f"{folder}: is a file, not a folder, so {what} cannot live there; move the file away")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
        database = folder / "mlflow.db"
        if not uri and database.exists() and not os.access(database, os.W_OK):
            raise PermissionError(f"{database} is read-only")
    except OSError as e:
        raise MnistLabError(
            f"{folder}: cannot write the tracking store there ({e.strerror or e}); "
            "run from a folder you can write to, or set MLFLOW_TRACKING_URI"
        ) from None


def setup(experiment: str | None = None) -> str:
    """Point MLflow at the store and experiment; returns the experiment id.

    Called once by each command (and by each worker process of a sweep); everything after it
    runs on MLflow's active experiment, or reads the experiment id off the runs it holds."""
    # Per-file download bars when loading a model are noise between our own output lines.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow announces creating and migrating its tables on stderr, and logs a database error with its
    # traceback before raising it: the lab says both in its own words (a lost store: one paragraph).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    artifact_location = None
    if os.environ.get("MLFLOW_TRACKING_URI"):
        # Set it explicitly too: an earlier set_tracking_uri in this process would win over the variable.
        uri = os.environ["MLFLOW_TRACKING_URI"]
        if uri.startswith("sqlite:///"):  # artifacts beside the database, not in ./mlruns of whatever folder runs first
            artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    else:
        uri, artifact_location = default_store()
    mlflow.set_tracking_uri(uri)
    if not os.environ.get("MLFLOW_TRACKING_URI") or uri == default_store()[0]:
        # MLflow also writes the URI into MLFLOW_TRACKING_URI; left there, a default store (mlruns/ of the
        # folder this ran in) would pass for one the person chose, in this process and every later setup.
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    experiment_id = open_experiment(uri, experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT,
                                    artifact_location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@lru_cache(maxsize=None)
def open_experiment(uri: str, name: str, artifact_location: str | None) -> str:
    """The experiment's id, the store checked and the experiment created on first use (once per
    process and store: the checks cost a second against a tracking server)."""
    check_store()
    try:
        if uri.startswith("sqlite:///"):
            create_sqlite_atomically(uri, _init_mlflow_db)
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            try:
                return mlflow.create_experiment(name, artifact_location=artifact_location,
                                                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except MlflowException:
                # Another worker created it between our look-up and create: use theirs.
                return mlflow.get_experiment_by_name(name).experiment_id
        if not found.tags.get(EXPERIMENT_KIND_TAG):  # made by an older mnist-lab, or by hand
            mlflow.MlflowClient().set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return found.experiment_id
    except MlflowException as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MnistLabError(f"tracking store {redact(uri)}: {redact(first)[:200]}") from None
    except (SQLAlchemyError, sqlite3.DatabaseError) as e:  # a truncated or overwritten database file
        cause = str(getattr(e, "orig", None) or e).strip().splitlines()[0][:120]
        raise MnistLabError(f"tracking store {redact(uri)}: cannot be read ({cause}); the file is damaged: move it away "
                            "to start a new store there, or restore it from a backup") from None


STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a file name too: reports/<study>/, mlruns/keras_tuner/<study>/


def check_study_name(name: str) -> str:
    """A study's name becomes a folder name and a value in MLflow's filters: letters, digits, '.', '_', '-'."""
    if not STUDY_NAME.fullmatch(name) or ".." in name:
        raise MnistLabError(f"--study {name!r}: a study name is letters, digits, '.', '_' and '-' (up to 100, no '..'), "
                            "since it names folders and MLflow tags; e.g. --study sweep-wide")
    return name


def latest_study(client, experiment_id: str) -> str:
    """The name of the study whose run started last."""
    parents = client.search_runs([experiment_id], "tags.`mnist_lab.kind` = 'study'", order_by=["attributes.start_time DESC"],
                                 max_results=1)
    if not parents:
        raise MnistLabError("no study in the MLflow store yet: run `make sweep` first")
    return parents[0].data.tags["study"]


def study_run(client, experiment_id: str, name: str):
    """The study's own MLflow run (the newest, if a name was reused)."""
    parents = client.search_runs([experiment_id], f"tags.`mnist_lab.kind` = 'study' and tags.study = '{name}'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        known = sorted({r.data.tags["study"] for r in client.search_runs([experiment_id], "tags.`mnist_lab.kind` = 'study'")})
        raise MnistLabError(f"--study {name}: no such study in the MLflow store (known: {', '.join(known) or 'none'})")
    return parents[0]


def worker_id(pid: int | None = None) -> str:
    """host:pid of this process (or of its child `pid`): written on every trial and confirmation run it starts."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def worker_is_dead(worker: str | None) -> bool:
    """True only for a worker on this machine whose process is gone (SIGKILL, OOM, power cut).

    What it left RUNNING can be ended at once instead of after the heartbeat grace period;
    workers on other machines are judged by their heartbeats alone."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def ui_url() -> str:
    """The MLflow UI that shows the store in use: the tracking server itself, else the address a
    `mnist-lab ui` over this store serves now, else the one it serves by default."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith(("http://", "https://")):
        return redact(uri.rstrip("/"))
    record = ui_record()
    try:
        served = json.loads(record.read_text()) if record else None
    except (OSError, ValueError):
        served = None
    if served and served.get("store") == current_uri() and not worker_is_dead(served.get("worker")):
        return served["url"]
    return UI_URL


def ui_record() -> Path | None:
    """Where `mnist-lab ui` writes the address it serves a local store on (beside the store's database)."""
    uri = current_uri()
    return Path(uri.removeprefix("sqlite:///")).parent / "ui.json" if uri.startswith("sqlite:///") else None


# MLflow 3 opens a page in its GenAI view (traces, judges) unless the link asks for the model-training one.
VIEW = "workflowType=machine_learning"


def runs_link(experiment_id: str, study: str | None = None, base: str | None = None) -> str:
    """A link that opens the experiment's runs table in the model-training view, filtered to `study`."""
    from urllib.parse import urlencode

    query = {"workflowType": "machine_learning"}
    if study:
        query["searchFilter"] = f"tags.study = '{study}'"
    return f"{base or ui_url()}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def run_link(experiment_id: str, run_id: str, base: str | None = None) -> str:
    return f"{base or ui_url()}/#/experiments/{experiment_id}/runs/{run_id}?{VIEW}"


def run_config(run_id: str):
    """The resolved config a run trained with (its config.yaml artifact)."""
    import yaml

    from mnist_lab.config import Config

    return Config.model_validate(yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")))


def create_sqlite_atomically(uri: str, init) -> None:
    """Create the SQLite database at `uri` whole or not at all.

    MLflow (and Optuna) build their schema in many steps; a process killed half-way leaves a
    database no later run can open ("table _alembic_tmp_experiments already exists"). The schema
    is built under a temporary name and linked into place only when complete."""
    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists():
        return
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed while building
        pid = stale.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        init(f"sqlite:///{tmp}")
        try:
            os.link(tmp, path)  # atomic, and never over a database another process finished first
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def _init_mlflow_db(uri: str) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(uri, default_store()[1]).engine.dispose()


@lru_cache(maxsize=1)
def model_uri(run_id: str) -> str:
    """The models:/ URI of the model a run logged (MLflow 3 keeps models apart from run artifacts)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    run = client.get_run(run_id)
    found = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'", max_results=1)
    return f"models:/{found[0].model_id}" if found else f"runs:/{run_id}/model"


def command_line() -> str:
    """The command as typed, passwords masked: it is stored on runs and printed as the way to resume."""
    return redact(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))


def resume_command() -> str:
    """The command line that resumes this one, with the tracking store it logged to (password masked)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")  # MLflow sets it too, to the default store: that one goes without saying
    return (f"MLFLOW_TRACKING_URI={redact(uri)} " if uri and uri != default_store()[0] else "") + command_line()
