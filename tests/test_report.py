"""The report, on real runs: a real sweep, real confirmations, real overfitting, checked in Chromium."""

import pandas as pd
import pytest
from mlflow import MlflowClient

from mnist_lab import report, tracking
from mnist_lab.cli import main
from mnist_lab.config import load_config
from mnist_lab.train import train

from browser import chromium, inspect_page
from conftest import REPO

SMOKE = str(REPO / "experiments" / "smoke.yaml")
SMALL_NET = ["model.conv_blocks=[{filters: 8}, {filters: 16}]", "data.validation_size=1000"]


def history_of(result) -> pd.DataFrame:
    return pd.DataFrame({"epoch": range(1, result.epochs_run + 1),
                         **{k: result.history[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}})


def test_overfitting_verdict_on_real_runs(store):
    tracking.setup()
    # Made to overfit: 300 images, a wide dense layer on a 7x7 map (same padding), no dropout, many epochs.
    overfit = train(load_config(None, SMALL_NET + ["model.padding=same", "data.train_size=300", "model.dense=[512]", "model.dropout=0", "train.epochs=14"]), log_model=False)
    checks = report.fit_checks(history_of(overfit))
    assert checks["overfit_from"] is not None and checks["verdict"] == f"overfitting from epoch {checks['overfit_from']}"
    assert checks["gap_last"] > 0.05 and checks["loss_gap_last"] > 0.1
    # Not made to overfit: 20 times the data, dropout, few epochs.
    fine = train(load_config(None, SMALL_NET + ["data.train_size=6000", "model.dense=[64]", "model.dropout=0.5", "train.epochs=4"]), log_model=False)
    checks = report.fit_checks(history_of(fine))
    assert checks["overfit_from"] is None and "overfitting" not in checks["verdict"]
    assert checks["min_val_loss_epoch"] >= 3  # still improving late in the run


def test_fit_checks_rules():
    rising = pd.DataFrame({"epoch": [1, 2, 3, 4, 5], "loss": [1.0, 0.5, 0.3, 0.2, 0.1], "accuracy": [0.7, 0.8, 0.9, 0.95, 0.99],
                           "val_loss": [0.9, 0.6, 0.5, 0.55, 0.6], "val_accuracy": [0.7, 0.8, 0.85, 0.84, 0.84]})
    assert report.fit_checks(rising)["verdict"] == "overfitting from epoch 4"
    one_bump = rising.assign(val_loss=[0.9, 0.6, 0.5, 0.55, 0.45])  # a single noisy rise is not overfitting
    assert report.fit_checks(one_bump)["overfit_from"] is None


def test_sweep_confirm_report_end_to_end_in_chromium(store, tmp_path, capsys):
    assert main(["sweep", SMOKE]) == 0
    assert main(["sweep", SMOKE, "--study", "smoke-tpe", "--engine", "keras-tuner"]) == 0
    assert main(["confirm", "--study", "smoke-optuna", "--top", "2", "--seeds", "2"]) == 0
    assert main(["confirm", "--study", "smoke-optuna", "--top", "2", "--seeds", "2"]) == 0  # resumable: nothing redone
    capsys.readouterr()
    assert main(["report", "--study", "smoke-optuna"]) == 0
    out = store / "reports" / "smoke-optuna"
    for name in ("index.html", "report.md", "runs.csv"):
        assert (out / name).stat().st_size > 0, name
    csv = pd.read_csv(out / "runs.csv")
    assert len(csv) == 3 and {"verdict", "gap_last", "metrics.val_accuracy"} <= set(csv.columns)
    md = (out / "report.md").read_text()
    assert "## Leaderboard" in md and "## Confirmation over seeds" in md

    experiment_id = tracking.setup()
    client = MlflowClient()
    confirms = client.search_runs([experiment_id], "tags.`mnist_lab.kind` = 'confirm' and tags.study = 'smoke-optuna'")
    # seed 1 of the best trial from the sweep's own confirmation (validation only), then seed 2 of it
    # and seeds 1-2 of the second from `mnist-lab confirm` (with their test evaluations)
    assert len(confirms) == 4 and sum("test_accuracy" in r.data.metrics for r in confirms) == 3
    parent = client.search_runs([experiment_id], "tags.`mnist_lab.kind` = 'study' and tags.study = 'smoke-optuna'")[0]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {
        "report/index.html", "report/report.md", "report/runs.csv"}
    # The summary carries the sweep's own verdict and why its search stopped; each confirmed
    # configuration counts its trial's run as a seed (seed 0, then 1 and 2 from the confirmations).
    assert f"**confirmation over seeds:** {parent.data.tags['confirmation']}" in md
    assert f"search: {parent.data.tags['stopped']}" in md
    table, _, _ = report.confirmation(report.load_study(client, [experiment_id], "smoke-optuna"))
    assert list(table.seeds) == [3, 3] and all(table.configuration.str.startswith("trial "))

    if not chromium():
        pytest.fail("Chromium is not installed: apt-get install chromium (.ci/run does)")
    page = inspect_page(out / "index.html")
    assert page["sections"] == ["summary", "leaderboard", "curves", "overfitting", "effects", "confirmation"]
    assert len(page["images"]) >= 4 and all(i["loaded"] for i in page["images"]), page["images"]
    assert not page["overflowing"]  # reads on a laptop screen without sideways scrolling

    # Two studies side by side (Optuna against KerasTuner): the comparison section appears.
    assert main(["report", "--study", "smoke-optuna", "--study", "smoke-tpe"]) == 0
    both = inspect_page(store / "reports" / "smoke-optuna-vs-smoke-tpe" / "index.html")
    assert "comparison" in both["sections"] and all(i["loaded"] for i in both["images"])
    assert any(i["alt"] == "best so far against compute" for i in both["images"])


def test_report_errors_are_one_line(store, capsys):
    assert main(["report"]) == 2
    assert main(["report", "--study", "nope"]) == 2
    assert main(["report", "--runs", "0123456789abcdef0123456789abcdef"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "make sweep" in err[0] and "no such study" in err[1] and "no such run" in err[2]
