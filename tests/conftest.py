"""Shared fixtures: real MNIST, a real MLflow store in a temporary folder, tiny real configs."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

# A few seconds of real training: enough for the digits to be learnt, small enough for CI.
TINY = ["data.train_size=2000", "data.validation_size=500", "train.epochs=1"]


def as_in_a_terminal() -> None:
    """`preexec_fn` for a process the test will signal as a terminal would (Ctrl-C, a closed window):
    SIGINT and SIGHUP back to their defaults. A shell script's background job (`&`, as CI may start
    one) inherits SIGINT ignored and `nohup` SIGHUP, and Python then never sees them."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    folder = os.environ.get("MNIST_LAB_DATA") or REPO.parent / "shared" / "data" / "mnist"
    folder = Path(folder)
    if not (folder / "train-images-idx3-ubyte.gz").exists() and not (folder / "train-images-idx3-ubyte").exists():
        pytest.fail(f"MNIST not found at {folder}: set MNIST_LAB_DATA to the folder with the four IDX files")
    os.environ["MNIST_LAB_DATA"] = str(folder.resolve())
    return folder.resolve()


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An empty MLflow database, made once by MLflow itself (its ~50 schema migrations take 4 s)."""
    from mnist_lab import tracking

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    tracking.create_sqlite_atomically(f"sqlite:///{path}", tracking._init_mlflow_db)
    return path


@pytest.fixture
def bare_store(tmp_path, monkeypatch, mnist_dir) -> Path:
    """Run in an empty folder: the default store sqlite:///mlruns/mlflow.db is created there."""
    import mlflow

    _use_store(monkeypatch, tmp_path)
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def store(bare_store, empty_mlflow_db) -> Path:
    """The same with mlruns/mlflow.db already created (a copy of one empty database per session):
    the tests that watch the store being created use `bare_store`."""
    (bare_store / "mlruns").mkdir()
    shutil.copy(empty_mlflow_db, bare_store / "mlruns" / "mlflow.db")
    return bare_store


SMOKE = str(REPO / "experiments" / "smoke.yaml")


def crownable_smoke(folder: Path) -> str:
    """experiments/smoke.yaml with a baseline its trials can be shown to beat, written to
    folder/smoke.yaml (so its studies are still smoke-optuna and smoke-keras-tuner). Its baseline
    (the base config at a learning rate of 1e-5) barely learns in one epoch of 1,000 images; trials
    at 1e-3 or 2e-3 reach 50-70%. A minute's model is far under the lab's floor of 0.9, so the space
    states its own (0.3), as a space may: smoke.yaml itself crowns nothing."""
    text = (REPO / "experiments" / "smoke.yaml").read_text()
    for old, new in (("base: baseline.yaml", f"base: {REPO / 'experiments' / 'baseline.yaml'}"),
                     ("  train.epochs: 1\n", "  train.epochs: 1\n  train.learning_rate: 1.0e-5\n"),
                     ("confirm: {top: 1, seeds: 2}", "confirm: {top: 1, seeds: 2, min_val_accuracy: 0.3}")):
        assert old in text, old
        text = text.replace(old, new)
    path = folder / "smoke.yaml"
    path.write_text(text + "  train.learning_rate: {choices: [0.001, 0.002]}\n")
    return str(path)


def _use_store(mp: pytest.MonkeyPatch, folder: Path) -> None:
    mp.chdir(folder)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    mp.setenv("CI", "true")


@pytest.fixture(scope="session")
def smoke_studies(tmp_path_factory, empty_mlflow_db, mnist_dir) -> Path:
    """`crownable_smoke` (folder/smoke.yaml) swept by both engines under their default study names
    (smoke-optuna, then smoke-keras-tuner) in one store, once per session: the tests that read two finished
    studies share it (they add confirmations and reports to it, never remove anything)."""
    import mlflow

    from mnist_lab.cli import main

    folder = tmp_path_factory.mktemp("smoke-studies")
    (folder / "mlruns").mkdir()
    shutil.copy(empty_mlflow_db, folder / "mlruns" / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        _use_store(mp, folder)
        space = crownable_smoke(folder)
        assert main(["sweep", space]) == 0
        assert main(["sweep", space, "--engine", "keras-tuner"]) == 0
        while mlflow.active_run():
            mlflow.end_run()
    return folder


@pytest.fixture
def in_smoke_studies(smoke_studies, monkeypatch) -> Path:
    """Run in the folder of `smoke_studies`: its mlruns/ is the default store."""
    _use_store(monkeypatch, smoke_studies)
    return smoke_studies


@pytest.fixture(scope="session")
def test_digits(mnist_dir) -> tuple[np.ndarray, np.ndarray]:
    """The first 16 MNIST test images and labels, read straight from the IDX files."""
    images = np.frombuffer(gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes()), np.uint8, offset=16)
    labels = np.frombuffer(gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()), np.uint8, offset=8)
    return images.reshape(-1, 28, 28)[:16], labels[:16].astype(int)


def save_png(array: np.ndarray, path: Path, mode: str = "L") -> Path:
    Image.fromarray(array.astype(np.uint8)).convert(mode).save(path)
    return path


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the marks to group the tests
def pytest_collection_modifyitems(items):
    # `make test` runs `pytest -n 2 --dist loadgroup`: most tests wait on the subprocesses they start,
    # so two workers halve the wall time. A session or module fixture is built once per worker
    # process, so the tests sharing an expensive one (a smoke study, a trained model) stay on one worker.
    for item in items:
        for fixture in ("smoke_studies", "model_file"):
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(fixture))
                break
