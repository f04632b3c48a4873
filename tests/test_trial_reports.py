"""What the pruner is fed inside a trial (mnist_lab/sweep/objective.py: ReportProgress), on real MNIST,
a real Keras model, a real Optuna study and a real MLflow run: the README's "seven times on a fixed,
stratified slice of 1,000 validation images, then on the whole validation set", and "the baseline
(trial 0) reports its curve like any trial but is never pruned"."""

import keras
import mlflow
import numpy as np
import optuna
import pytest

from mnist_lab import data, tracking
from mnist_lab.config import load_config
from mnist_lab.model import build_model
from mnist_lab.sweep.budget import Halt
from mnist_lab.sweep.objective import ReportProgress, validation_slice

# 2,000 training images at batch 32, one step per call: 63 steps, a report every 7 (63 // 8) steps.
SMALL = ["data.train_size=2000", "data.validation_size=5000", "train.epochs=1", "train.steps_per_execution=1",
         "train.loss=sparse_categorical_crossentropy"]
IN_EPOCH_STEPS = [7 * k * 32 for k in range(1, 8)]  # images seen at the seven reports inside the epoch


class AlwaysPrune(optuna.pruners.BasePruner):
    """A pruner that wants every trial stopped at its first report (a real Optuna pruner, not a stand-in)."""

    def prune(self, study, trial) -> bool:
        return True


def fit_reporting(config, split, model, trial, epochs=1):
    """Fit `model` with the sweep's reporting callback, inside an MLflow run as the objective does."""
    watcher = ReportProgress(trial, config, "val_accuracy", None, Halt())
    tracking.setup()
    with mlflow.start_run():
        history = model.fit(data.to_model_input(split.x_train), split.y_train, batch_size=config.train.batch_size,
                            epochs=epochs, validation_data=(data.to_model_input(split.x_val), split.y_val),
                            callbacks=[watcher], verbose=0)
    return watcher, history


def test_validation_slice_is_the_same_1000_stratified_validation_images_for_every_trial(mnist_dir):
    config = load_config(None, SMALL)
    split = data.load_split(config.data)
    x, y = validation_slice(config, None)
    assert x.shape == (1000, 28, 28, 1) and len(y) == 1000
    # stratified: each digit in its share of the validation set (to within one image)
    share = np.bincount(split.y_val, minlength=10) / len(split.y_val)
    assert np.all(np.abs(np.bincount(y, minlength=10) - 1000 * share) <= 1)
    # validation images only, never a training image
    val_rows = {row.tobytes() for row in data.to_model_input(split.x_val)}
    train_rows = {row.tobytes() for row in data.to_model_input(split.x_train)}
    assert all(row.tobytes() in val_rows and row.tobytes() not in train_rows for row in x)
    # the same images for a trial with another model, batch and training set size (same split)
    other = load_config(None, SMALL + ["model.dropout=0.1", "train.batch_size=64", "model.dense=[64]", "data.train_size=3000"])
    x2, y2 = validation_slice(other, None)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_in_epoch_reports_score_the_fixed_slice_and_the_epoch_end_the_whole_validation_set(store):
    config = load_config(None, SMALL)
    split = data.load_split(config.data)
    model = build_model(config)
    keras.utils.set_random_seed(0)
    model.fit(data.to_model_input(split.x_train), split.y_train, batch_size=32, epochs=1, verbose=0)  # a model that reads digits
    # Weights frozen (learning rate 0) while the callback reports: every report inside the epoch then
    # scores the same model, so it must give the same score; a new draw of images per report would not.
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=1)
    trial = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner()).ask()
    watcher, history = fit_reporting(config, split, model, trial)

    reports = trial.study.trials[0].intermediate_values
    assert sorted(reports) == IN_EPOCH_STEPS + [2000]  # seven inside the epoch, at images seen, then its end
    x, y = validation_slice(config, None)
    on_slice = float(np.mean(model.predict(x, verbose=0).argmax(axis=1) == y))
    assert 0.5 < on_slice < 1 and on_slice * 1000 == pytest.approx(round(on_slice * 1000))  # k of 1,000 images
    assert [reports[s] for s in IN_EPOCH_STEPS] == pytest.approx([on_slice] * 7, abs=1e-9)
    on_all = float(np.mean(model.predict(data.to_model_input(split.x_val), verbose=0).argmax(axis=1) == split.y_val))
    assert reports[2000] == pytest.approx(history.history["val_accuracy"][-1]) == pytest.approx(on_all, abs=1e-6)
    assert reports[2000] != pytest.approx(on_slice, abs=1e-9)  # the whole set (5,000 images), not the slice
    assert watcher.pruned_at is None


@pytest.mark.parametrize("baseline", [True, False])
def test_the_baseline_reports_its_curve_but_is_never_pruned(store, baseline):
    config = load_config(None, SMALL)
    split = data.load_split(config.data)
    trial = optuna.create_study(direction="maximize", pruner=AlwaysPrune()).ask()
    if baseline:
        trial.set_user_attr("baseline", True)  # as the sweep enqueues trial 0 (optuna_engine.py)
    watcher, history = fit_reporting(config, split, build_model(config), trial, epochs=2)
    reports = trial.study.trials[0].intermediate_values
    if baseline:  # every report made, both epochs trained
        assert watcher.pruned_at is None and len(history.epoch) == 2
        assert sorted(reports) == IN_EPOCH_STEPS + [2000] + [2000 + s for s in IN_EPOCH_STEPS] + [4000]
    else:  # the same trial without the mark stops at its first report
        assert watcher.pruned_at == IN_EPOCH_STEPS[0] and len(history.epoch) == 1 and sorted(reports) == [IN_EPOCH_STEPS[0]]
