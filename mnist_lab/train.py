"""The one function that trains a model from a config and records it as an MLflow run.

Single runs (`mnist-lab train`), sweep trials, seed confirmations and benchmarks all call
`train()`. Run it with:

    mnist-lab train experiments/baseline.yaml train.epochs=1 data.train_size=2000
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras
import mlflow
import mlflow.keras
import numpy as np
import yaml

from mnist_lab import data, plots, provenance, tracking
from mnist_lab.config import Config
from mnist_lab.errors import MnistLabError, check_save_path
from mnist_lab.model import build_model


class TrainingDiverged(MnistLabError):
    """The loss became NaN or infinite: the run is recorded as failed, with this reason."""


@dataclass
class TrainResult:
    run_id: str
    history: dict[str, list[float]]  # Keras' History.history: loss, accuracy, val_loss, val_accuracy per epoch
    val_accuracy: float  # of the model as returned (last epoch, or best if early stopping restored it)
    val_loss: float
    param_count: int
    train_seconds: float
    model: keras.Model = field(repr=False)
    test_accuracy: float | None = None
    test_loss: float | None = None

    @property
    def epochs_run(self) -> int:
        return len(self.history.get("loss", []))


class MlflowEpochLogger(keras.callbacks.Callback):
    """Per-epoch metrics with step = epoch (1-based), and how fast the epoch trained."""

    def __init__(self, train_images: int):
        super().__init__()
        self.train_images = train_images
        self.train_seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._val_seconds = 0.0

    def on_test_begin(self, logs=None):
        self._val_start = time.perf_counter()

    def on_test_end(self, logs=None):
        self._val_seconds += time.perf_counter() - self._val_start

    def on_epoch_end(self, epoch, logs=None):
        epoch_seconds = time.perf_counter() - self._start
        fit_seconds = max(epoch_seconds - self._val_seconds, 1e-9)  # validation excluded from throughput
        self.train_seconds += epoch_seconds
        metrics = {k: float(v) for k, v in (logs or {}).items() if k in ("loss", "accuracy", "val_loss", "val_accuracy")}
        # MLflow rejects NaN in some stores; the divergence itself is reported as the failure reason.
        metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
        metrics |= {"epoch_seconds": epoch_seconds, "images_per_second": self.train_images / fit_seconds}
        mlflow.log_metrics(metrics, step=epoch + 1)


class _KerasFlavor:
    """mlflow.keras, creating the model folder before MLflow writes the input example into it.

    mlflow.keras.log_model(..., input_example=...) fails with FileNotFoundError on
    .../model/input_example.json (mlflow/mlflow#16183, still open in MLflow 3.17).
    """

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path, **kwargs):
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def _log_keras_model(model: keras.Model, example: np.ndarray, probs: np.ndarray) -> None:
    # pip_requirements: MLflow would otherwise infer them by re-importing the model in a subprocess,
    # for every model logged: 9-14 s a run on 2 cores (more than a small trial's training).
    mlflow.models.Model.log(artifact_path=None, name="model", flavor=_KerasFlavor, model=model,
                            signature=mlflow.models.infer_signature(example, probs), input_example=example,
                            pip_requirements=model_requirements())


@functools.lru_cache(maxsize=1)
def model_requirements() -> list[str]:
    """What loading the logged model needs, pinned to the installed versions; read once per process."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in ("mlflow", "keras", "tensorflow", "numpy"):
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:  # e.g. tensorflow-cpu or tf-nightly instead of tensorflow
            pass
    return pins


def resolve_precision(config: Config) -> Config:
    """`precision: auto` -> mixed_bfloat16 where the hardware computes in bfloat16, else float32."""
    if config.precision != "auto":
        return config
    return config.model_copy(update={"precision": "mixed_bfloat16" if bfloat16_hardware() else "float32"})


@functools.lru_cache(maxsize=1)
def bfloat16_hardware() -> bool:
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        if capability >= (8, 0):  # Ampere and newer have bfloat16 tensor cores
            return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


# A sweep builds a new model per trial; TensorFlow then warns about "retracing" each time.
logging.getLogger("tensorflow").setLevel(logging.ERROR)


def keras_verbosity() -> int:  # a progress bar for people at a terminal; nothing in CI logs or pipes
    return 1 if sys.stdout.isatty() and not os.environ.get("CI") else 0


def train(
    config: Config,
    *,
    data_dir: str | Path | None = None,
    evaluate_test: bool = False,
    save: str | Path | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    callbacks: list[keras.callbacks.Callback] = (),
    log_model: bool | Callable[[], bool] = True,
    log_plots: bool | Callable[[], bool] = True,
    parent_run_id: str | None = None,
    progress: bool = True,
    warm_start: tuple[keras.Model, int] | None = None,
) -> TrainResult:
    """Train `config` on MNIST, tracked as one MLflow run (nested under an active run, if any).

    `callbacks` lets a caller watch or stop the fit (a sweep's pruner); `parent_run_id`
    nests the run under a study's run. The test set is touched only with `evaluate_test=True`.
    `log_model` and `log_plots` may be functions asked after the fit (a sweep: no model and no
    plots for a pruned trial, whose curves, config and environment are still logged).
    `progress=False` keeps Keras' per-batch bar off (a sweep draws its own display).
    `warm_start=(model, epochs_done)` continues a shorter run of the same architecture (KerasTuner's
    Hyperband): its weights are loaded and training resumes at epoch `epochs_done + 1`, with the
    learning-rate schedule where this config's schedule is after that many epochs.
    """
    save = check_save_path(save)
    config = resolve_precision(config)
    split = data.load_split(config.data, data_dir)

    keras.utils.set_random_seed(config.train.seed)
    # A sweep builds many models in one process; its gc after each trial frees their memory, so
    # the full collection clear_session would add here (0.3-0.5 s a run) is skipped.
    keras.backend.clear_session(free_memory=False)
    model = build_model(config)
    initial_epoch = 0
    if warm_start is not None:
        previous, initial_epoch = warm_start
        model.set_weights(previous.get_weights())
        # The optimizer's step count drives the schedule; Adam's moments start afresh.
        model.optimizer.iterations.assign(initial_epoch * config.train.steps_per_epoch(config.data.train_count()))

    run_tags = provenance.provenance_tags() | {"command": tracking.command_line()} | {"data_digest": split.digest, "seed": str(config.train.seed)} | (tags or {})
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_name=run_name, nested=nested, parent_run_id=parent_run_id, tags=run_tags) as run:
        try:
            return _fit_and_log(config, model, split, run.info.run_id, data_dir, evaluate_test, save, callbacks, log_model,
                                log_plots, verbose=keras_verbosity() if progress else 0, initial_epoch=initial_epoch)
        except Exception as e:
            # The run ends as FAILED (MLflow's context manager); say why on the run itself.
            reason = str(e) if isinstance(e, MnistLabError) else f"{type(e).__name__}: {e}"
            mlflow.set_tag("failure_reason", reason[:5000])
            raise


def _fit_and_log(config, model, split, run_id, data_dir, evaluate_test, save, callbacks, log_model, log_plots, verbose,
                 initial_epoch: int = 0) -> TrainResult:
    x_train, x_val = data.to_model_input(split.x_train), data.to_model_input(split.x_val)
    y_train, y_val = split.y_train, split.y_val
    if config.train.loss == "categorical_crossentropy":
        y_train_fit, y_val_fit = keras.utils.to_categorical(y_train, 10), keras.utils.to_categorical(y_val, 10)
    else:
        y_train_fit, y_val_fit = y_train, y_val
    resumed = {"initial_epoch": initial_epoch} if initial_epoch else {}
    mlflow.log_params(config.flat() | {"param_count": model.count_params(), "train_images": len(x_train),
                                       "validation_images": len(x_val)} | resumed)
    _log_datasets(config, split, data_dir)
    logger = MlflowEpochLogger(len(x_train))
    fit_callbacks = [logger, keras.callbacks.TerminateOnNaN(), *callbacks]
    if config.train.early_stopping_patience is not None:
        fit_callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=config.train.early_stopping_patience, restore_best_weights=True
            )
        )
    batch = config.train.batch_size
    history = model.fit(data.batches(x_train, y_train_fit, batch, shuffle_seed=config.train.seed), epochs=config.train.epochs,
                        initial_epoch=initial_epoch, validation_data=data.batches(x_val, y_val_fit, batch),
                        callbacks=fit_callbacks, shuffle=False, verbose=verbose).history  # the pipeline shuffles

    losses = history.get("loss", [])
    if any(not math.isfinite(v) for v in losses + history.get("val_loss", [])):
        epoch = next(i for i, v in enumerate(losses, 1) if not math.isfinite(v)) if losses else 0
        raise TrainingDiverged(f"loss became {losses[epoch - 1] if epoch else 'nan'} in epoch {epoch}")

    with_plots = log_plots() if callable(log_plots) else log_plots
    if with_plots or config.train.early_stopping_patience is not None:
        # One pass over the validation images gives the confusion matrix and the final scores (which
        # differ from the last epoch's when early stopping restored the best weights).
        probs = model.predict(x_val, batch_size=1024, verbose=0)
        y_pred = probs.argmax(axis=1)
        val_accuracy, val_loss = scores(y_val, probs)
    else:
        # Nothing to plot (a pruned trial): the last epoch's validation scores are of these weights.
        probs = y_pred = None
        val_accuracy, val_loss = history["val_accuracy"][-1], history["val_loss"][-1]
    best = int(np.argmax(history["val_accuracy"]))
    mlflow.log_metrics({"best_val_accuracy": history["val_accuracy"][best], "best_epoch": initial_epoch + best + 1,
                        "final_val_accuracy": float(val_accuracy), "final_val_loss": float(val_loss),
                        "train_seconds": logger.train_seconds})

    result = TrainResult(
        run_id=run_id,
        history={k: [float(v) for v in vs] for k, vs in history.items()},
        val_accuracy=float(val_accuracy),
        val_loss=float(val_loss),
        param_count=model.count_params(),
        train_seconds=logger.train_seconds,
        model=model,
    )
    if evaluate_test:
        result.test_accuracy, result.test_loss = evaluate_test_set(model, run_id, data_dir)

    _log_artifacts(config, result, split, y_pred, probs, with_plots=with_plots)
    if log_model() if callable(log_model) else log_model:
        example = x_val[:4]
        # MLflow checks the input example with model.predict, whose progress bar would
        # land in the middle of the command's output.
        with contextlib.redirect_stdout(io.StringIO()):
            _log_keras_model(model, example, probs[:4] if probs is not None else model.predict(example, verbose=0))
    if save:
        save.parent.mkdir(parents=True, exist_ok=True)
        model.save(save)
        mlflow.set_tag("saved_to", str(save.resolve()))
    return result


def _log_datasets(config: Config, split: data.Split, data_dir: str | Path | None) -> None:
    """MLflow's Dataset column: which images trained and validated the run. The digests name the
    MNIST content and the split settings, so runs with equal digests saw the same images."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    folder = data.data_dir(data_dir)
    with warnings.catch_warnings():  # a local path matches MLflow's local source twice; either is right
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(folder) if folder else data.DOWNLOAD_URL)
    d = config.data
    for context, settings, images in (("training", (d.validation_size, d.seed, d.train_size), len(split.y_train)),
                                      ("validation", (d.validation_size, d.seed), len(split.y_val))):
        digest = hashlib.sha256(repr((split.digest, context, settings)).encode()).hexdigest()[:8]
        log_input(MetaDataset(source, name=f"mnist-{context}-{images}", digest=digest), context)


def log_input(dataset, context: str) -> None:
    """mlflow.log_input, tried once more when a run in another process logged the same new dataset
    between the store's lookup and its insert (two workers or seeds starting at once): MLflow then
    fails on the store's unique key, and the second try finds that dataset and links it."""
    try:
        mlflow.log_input(dataset, context=context)
    except mlflow.exceptions.MlflowException as e:
        if not any(w in str(e).lower() for w in ("unique constraint", "duplicate")):  # SQLite, PostgreSQL; MySQL
            raise
        mlflow.log_input(dataset, context=context)


def scores(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """(accuracy, cross-entropy) of softmax outputs, as Keras computes them (probabilities clipped at 1e-7)."""
    picked = np.clip(probs[np.arange(len(labels)), labels].astype(np.float64), 1e-7, 1.0)
    return float(np.mean(probs.argmax(axis=1) == labels)), float(-np.mean(np.log(picked)))


def evaluate_test_set(model: keras.Model, run_id: str, data_dir: str | Path | None = None) -> tuple[float, float]:
    """The final evaluation on the 10,000 test images, logged on `run_id` as test_accuracy and test_loss."""
    x_test, y_test = data.load_test(data_dir)
    probs = model.predict(data.to_model_input(x_test), batch_size=1024, verbose=0)
    accuracy, loss = scores(y_test, probs)
    mlflow.MlflowClient().log_batch(
        run_id, metrics=[mlflow.entities.Metric(k, v, int(time.time() * 1000), 0) for k, v in (("test_accuracy", accuracy), ("test_loss", loss))]
    )
    return accuracy, loss


def _log_artifacts(config: Config, result: TrainResult, split: data.Split, y_pred: np.ndarray, probs: np.ndarray,
                   with_plots: bool = True) -> None:
    drawn = {} if not with_plots else {
        "learning_curves.png": plots.learning_curves(result.history, title=f"val_accuracy {result.val_accuracy:.4f}"),
        "confusion_matrix.png": plots.confusion_matrix(split.y_val, y_pred),
        "misclassified.png": plots.misclassified_grid(split.x_val, split.y_val, y_pred, probs),
    }
    for name, figure in drawn.items():
        mlflow.log_figure(figure, f"plots/{name}")
        plots.plt.close(figure)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
        (Path(tmp) / "requirements.txt").write_text(provenance.pip_freeze())
        mlflow.log_artifact(str(Path(tmp) / "config.yaml"))
        mlflow.log_artifact(str(Path(tmp) / "requirements.txt"), artifact_path="environment")
