"""Tracked training end to end: the real CLI, a real MLflow store, real MNIST digits."""

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from mnist_lab import tracking
from mnist_lab.cli import main
from mnist_lab.config import load_config
from mnist_lab.train import TrainingDiverged, model_requirements, train

from conftest import REPO, TINY


def only_run(client):
    runs = client.search_runs([tracking.setup()])  # the test has already set the store up
    assert len(runs) == 1
    return runs[0]


def test_train_logs_params_curves_tags_and_artifacts(bare_store):
    store = bare_store
    assert main(["train", str(REPO / "experiments/baseline.yaml"), *TINY, "train.epochs=2"]) == 0
    client = MlflowClient()
    run = only_run(client)
    assert run.info.status == "FINISHED"
    assert (store / "mlruns" / "mlflow.db").exists()
    # params: the flattened resolved config
    assert run.data.params["model.conv_blocks.1.filters"] == "64" and run.data.params["train.epochs"] == "2"
    assert run.data.params["data.train_size"] == "2000"
    assert run.data.params["param_count"] == "1111946"  # the tutorial's network
    # precision: auto is resolved from the hardware and the run records what it trained with
    # (read from the CPU's own flags here, not from the lab's detector)
    flags = Path("/proc/cpuinfo").read_text().split()
    assert run.data.params["precision"] == ("mixed_bfloat16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "float32")
    # per-epoch curves, step = epoch
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds", "images_per_second"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2], metric
    assert run.data.metrics["val_accuracy"] > 0.85  # 2,000 images, 2 epochs
    assert "test_accuracy" not in run.data.metrics  # the test set is only for explicit final evaluations
    tags = run.data.tags
    import keras
    import tensorflow as tf

    assert re.fullmatch(r"[0-9a-f]{40}|unknown", tags["git_commit"]) and tags["git_dirty"] in ("true", "false")
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", tags["data_digest"]) and tags["seed"] == "0"
    assert tags["command"] == " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])  # this process's command line
    assert (tags["tensorflow_version"], tags["keras_version"]) == (tf.__version__, keras.__version__)
    assert tags["cpu_model"] in Path("/proc/cpuinfo").read_text()
    assert tags["tensorflow_threads"] == str(len(os.sched_getaffinity(0)))  # one process: TensorFlow's default, every core
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "plots")
    } | {a.path for a in client.list_artifacts(run.info.run_id, "environment")}
    assert {"config.yaml", "plots/learning_curves.png", "plots/confusion_matrix.png", "plots/misclassified.png",
            "environment/requirements.txt"} <= artifacts
    assert (store / "mlruns" / "artifacts").is_dir()  # artifacts live under mlruns/
    model = mlflow.keras.load_model(f"runs:/{run.info.run_id}/model")
    assert model.output_shape == (None, 10)
    logged = client.search_logged_models([run.info.experiment_id])
    info = mlflow.models.get_model_info(f"models:/{logged[0].model_id}")
    assert "keras" in info.flavors and info.signature is not None and info.saved_input_example_info is not None
    # pinned from the installed distributions, not inferred by a subprocess per model
    requirements = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{logged[0].model_id}")).read_text().split()
    assert set(model_requirements()) <= set(requirements) and any(r.startswith("tensorflow==") for r in requirements)


def test_evaluate_test_and_save_then_predict(store, test_digits, tmp_path):
    from conftest import save_png

    saved = tmp_path / "model.keras"
    assert main(["train", str(REPO / "experiments/tutorial_3x3.yaml"), *TINY, "data.train_size=6000", "train.epochs=2", "--evaluate-test", "--save", str(saved)]) == 0
    run = only_run(MlflowClient())
    assert 0.5 < run.data.metrics["test_accuracy"] <= 1 and run.data.metrics["test_loss"] > 0
    images, labels = test_digits
    files = [str(save_png(images[i], tmp_path / f"digit{i}.png")) for i in range(4)]
    # The real console script, in a fresh process, loading the saved .keras file.
    out = subprocess.run(
        [str(REPO / ".venv/bin/mnist-lab"), "predict", *files, "--model", str(saved)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"model: the file {saved}"
    predicted = [int(line.split(": ")[1].split()[0]) for line in out.stdout.splitlines()[1:]]
    assert predicted == [7, 2, 1, 0]


def test_diverging_loss_is_recorded_as_failed(store):
    config = load_config(None, [*TINY, "train.optimizer=sgd", "train.learning_rate=1e9"])
    tracking.setup()
    with pytest.raises(TrainingDiverged, match="loss became"):
        train(config, log_model=False)
    run = only_run(MlflowClient())
    assert run.info.status == "FAILED" and "loss became" in run.data.tags["failure_reason"]


def test_bad_input_is_one_line_with_nonzero_exit(store, capsys):
    assert main(["train", "experiments/missing.yaml"]) == 2
    assert main(["train", str(REPO / "experiments/baseline.yaml"), "train.epochz=1"]) == 2
    assert main(["train", str(REPO / "experiments/baseline.yaml"), *TINY, "--save", "model.h5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "Traceback" not in "".join(err)
    assert "did you mean 'epochs'" in err[1] and ".keras" in err[2]
    experiment_id = tracking.setup()
    assert not MlflowClient().search_runs([experiment_id])  # nothing half-written


def test_help_on_every_subcommand():
    listed = subprocess.run([sys.executable, "-m", "mnist_lab", "--help"], capture_output=True, text=True).stdout
    subcommands = ["train", "predict", "sweep", "report", "confirm", "ui", "dashboard"]
    assert re.findall(r"^    (\w+)\b", listed, re.M) == subcommands, listed  # every one listed, none unlisted
    for sub in subcommands:
        out = subprocess.run([sys.executable, "-m", "mnist_lab", sub, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.startswith(f"usage: mnist-lab {sub}"), sub


def test_warm_start_continues_a_shorter_run(store):
    # KerasTuner's Hyperband promotes a configuration to more epochs: the promoted run starts from
    # the shorter run's weights at its epoch, with the schedule's step count where it would be.
    tracking.setup()
    first = train(load_config(None, [*TINY, "model.dense=[64]"]), log_model=False, progress=False)
    steps = load_config(None, TINY).train.steps_per_epoch(2000)
    # A learning rate too small to move the weights: the continued run scores what it was given.
    frozen = load_config(None, [*TINY, "model.dense=[64]", "train.epochs=2", "train.learning_rate=1e-12"])
    resumed = train(frozen, warm_start=(first.model, 1), log_model=False, progress=False)
    assert first.val_accuracy > 0.8 and abs(resumed.val_accuracy - first.val_accuracy) < 0.005
    assert int(resumed.model.optimizer.iterations.numpy()) == 2 * steps
    client = MlflowClient()
    assert [m.step for m in client.get_metric_history(resumed.run_id, "val_accuracy")] == [2]  # only the new epoch
    assert client.get_run(resumed.run_id).data.params["initial_epoch"] == "1"
    # without the warm start, the same frozen config learns nothing
    assert train(frozen, log_model=False, progress=False).val_accuracy < 0.5


def test_early_stopping_stops_and_keeps_the_best_weights(store):
    """`train.early_stopping_patience`: a run made to overfit (300 images, no dropout) stops once validation
    loss has not improved for that many epochs, and its model is the best epoch's (restored)."""
    tracking.setup()
    config = load_config(None, ["model.conv_blocks=[{filters: 8}, {filters: 16}]", "model.padding=same", "model.dense=[512]",
                                "model.dropout=0", "data.train_size=300", "data.validation_size=1000", "train.epochs=30",
                                "train.early_stopping_patience=2"])
    result = train(config, log_model=False, progress=False)
    losses = result.history["val_loss"]
    best = losses.index(min(losses))
    assert result.epochs_run < 30 and result.epochs_run == best + 1 + 2  # stopped 2 epochs after its best
    assert result.val_loss == pytest.approx(min(losses), rel=1e-2)  # the best epoch's weights, not the last
    assert MlflowClient().get_run(result.run_id).data.metrics["final_val_loss"] == pytest.approx(min(losses), rel=1e-2)


# Another process that logs the same new dataset into the experiment, as a second worker starting a trial does.
SAME_DATASET = """
import mlflow
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mnist_lab import tracking
tracking.setup()
with mlflow.start_run():
    mlflow.log_input(MetaDataset(HTTPDatasetSource("https://example.org/mnist"), name="mnist-training-300",
                                 digest="98bdb4be"), context="training")
"""


def test_a_dataset_another_process_logs_between_mlflow_s_lookup_and_insert_is_linked_not_fatal(store):
    """Two workers or seeds starting at once both find a new dataset missing from the experiment and both
    insert it; the second meets the store's unique key (a parallel confirmation failed so in CI). Here the
    other process's insert lands exactly there, between MLflow's lookup and its insert: the run still
    gets its input, and the experiment keeps one dataset that both runs link."""
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from sqlalchemy import event

    from mnist_lab.train import log_input

    tracking.setup()
    engine = MlflowClient()._tracking_client.store.engine
    raced = []

    def other_process_first(conn, cursor, statement, *args):
        if statement.startswith("INSERT INTO datasets") and not raced:
            raced.append(subprocess.run([sys.executable, "-c", SAME_DATASET], capture_output=True, text=True))

    event.listen(engine, "before_cursor_execute", other_process_first)
    try:
        with mlflow.start_run() as run:
            log_input(MetaDataset(HTTPDatasetSource("https://example.org/mnist"), name="mnist-training-300",
                                  digest="98bdb4be"), "training")
    finally:
        event.remove(engine, "before_cursor_execute", other_process_first)
    assert raced and raced[0].returncode == 0, raced and raced[0].stderr[-2000:]
    runs = MlflowClient().search_runs([tracking.setup()])
    assert len(runs) == 2 and run.info.run_id in {r.info.run_id for r in runs}
    linked = [[(i.dataset.name, i.dataset.digest) for i in r.inputs.dataset_inputs] for r in runs]
    assert linked == [[("mnist-training-300", "98bdb4be")]] * 2
