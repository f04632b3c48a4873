"""The report, on real runs: a real sweep, real confirmations, real overfitting, checked in Chromium."""

import json

import pandas as pd
import pytest
from mlflow import MlflowClient

from mnist_lab import tracking
from mnist_lab.report import analysis, runs
from mnist_lab.cli import main
from mnist_lab.config import load_config
from mnist_lab.train import train

from browser import chromium, free_port, inspect_page, mlflow_runs_page, serve, toc_in_sandbox
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
    checks = analysis.fit_checks(history_of(overfit))
    assert checks["overfit_from"] is not None and checks["verdict"] == f"overfitting from epoch {checks['overfit_from']}"
    assert checks["gap_last"] > 0.05 and checks["loss_gap_last"] > 0.1
    # Not made to overfit: 20 times the data, dropout, few epochs.
    fine = train(load_config(None, SMALL_NET + ["data.train_size=6000", "model.dense=[64]", "model.dropout=0.5", "train.epochs=4"]), log_model=False)
    checks = analysis.fit_checks(history_of(fine))
    assert checks["overfit_from"] is None and "overfitting" not in checks["verdict"]
    assert checks["min_val_loss_epoch"] >= 3  # still improving late in the run


def test_fit_checks_rules():
    rising = pd.DataFrame({"epoch": [1, 2, 3, 4, 5], "loss": [1.0, 0.5, 0.3, 0.2, 0.1], "accuracy": [0.7, 0.8, 0.9, 0.95, 0.99],
                           "val_loss": [0.9, 0.6, 0.5, 0.55, 0.6], "val_accuracy": [0.7, 0.8, 0.85, 0.84, 0.84]})
    assert analysis.fit_checks(rising)["verdict"] == "overfitting from epoch 4"
    one_bump = rising.assign(val_loss=[0.9, 0.6, 0.5, 0.55, 0.45])  # a single noisy rise is not overfitting
    assert analysis.fit_checks(one_bump)["overfit_from"] is None


def test_sweep_confirm_report_end_to_end_in_chromium(in_smoke_studies, monkeypatch, capsys, mnist_dir):
    store = in_smoke_studies  # smoke-optuna, then smoke-keras-tuner, both finished
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
    trials = client.search_runs([experiment_id], "tags.study = 'smoke-optuna' and tags.`mnist_lab.kind` = 'trial'")
    # seed 1 of the best trial and seeds 0-1 of the baseline (not in the space) from the sweep's own
    # confirmation, then seed 1 of the second trial from `mnist-lab confirm`: one retraining path,
    # validation only. The test set is evaluated once per configuration, on its trial's own run (the
    # best's by the sweep, the second's by confirm).
    assert len(confirms) == 4 and not any("test_accuracy" in r.data.metrics for r in confirms)
    assert sum("test_accuracy" in r.data.metrics for r in trials) == 2
    parent = client.search_runs([experiment_id], "tags.`mnist_lab.kind` = 'study' and tags.study = 'smoke-optuna'")[0]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {
        "report/index.html", "report/report.md", "report/runs.csv"}
    # The summary carries the sweep's own verdict and why its search stopped; each confirmed
    # configuration counts its trial's run as a seed (seed 0, then seed 1 from a confirmation).
    assert f"**confirmation over seeds:** {parent.data.tags['confirmation']}" in md
    assert f"search: {parent.data.tags['stopped']}" in md
    table, _, _ = analysis.confirmation(runs.load_study(client, experiment_id, "smoke-optuna"))
    assert list(table.seeds) == [2, 2, 2] and sorted(table.configuration.str.split(" ").str[0]) == ["baseline", "trial", "trial"]

    if not chromium():
        pytest.fail("Chromium is not installed: apt-get install chromium (.ci/run does)")
    page = inspect_page(out / "index.html", width=1366)
    assert page["sections"] == ["summary", "leaderboard", "curves", "overfitting", "effects", "confirmation"]
    assert len(page["images"]) >= 5 and all(i["loaded"] for i in page["images"]), page["images"]
    assert any(i["alt"] == "optimisation history" for i in page["images"])
    assert not page["overflowing"] and not page["clipped"]  # a laptop screen shows every column
    # every trial on the leaderboard opens its run in MLflow's UI
    assert sorted(link.rsplit("/", 1)[1] for link in page["run_links"]) == sorted(r.info.run_id for r in trials)
    assert all(link.startswith(f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/") for link in page["run_links"])
    # one-epoch runs cannot show overfitting: said so, not passed in green
    assert "Not judged: 3 of 3 runs are too short to tell" in page["text"] and "runs overfit" not in page["text"]
    # the table of contents works where MLflow shows the report (a sandboxed blob: iframe)
    toc = toc_in_sandbox(out / "index.html", "effects")
    assert toc["before"] > toc["view"] and abs(toc["top"]) < 2 and not toc["errors"], toc

    # MLflow as a team member sees it (the report is logged and described on the study's run).
    parent = client.get_run(parent.info.run_id)
    note = parent.data.tags["mlflow.note.content"]
    assert "trials: 3 complete, 0 pruned, 0 failed" in note and "confirmation over seeds: " in note
    assert f"report: {out.resolve() / 'index.html'}" in note
    assert "study_best_val_accuracy" in parent.data.metrics and "best_val_accuracy" not in parent.data.metrics
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    digests = set()
    for run in trials + confirms:
        inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}  # MLflow's Dataset column
        assert set(inputs) == {"training", "validation"} and inputs["training"].name == "mnist-training-1000"
        assert inputs["training"].source == f'{{"uri": "{mnist_dir}"}}'
        digests.add((inputs["training"].digest, inputs["validation"].digest))
    assert len(digests) == 1 and len(set(*digests)) == 2  # the same images in every run; training is not validation
    assert sorted(r.info.run_name.rsplit(" · ", 1)[0] for r in confirms)[:2] == ["confirm · baseline"] * 2
    assert all(r.info.run_name.startswith(("confirm · trial ", "confirm · baseline · seed ")) for r in confirms)
    assert not [r for r in client.search_runs([experiment_id], "tags.champion = 'true'")]  # the alias is the one record
    version = client.get_model_version_by_alias("mnist-cnn", "champion")
    assert version.tags["study"] in ("smoke-optuna", "smoke-keras-tuner") and version.tags["data_digest"].startswith("sha256:")
    assert "validation accuracy" in version.description and "training seeds" in version.description

    # `make ui` opens on the latest study's runs in the model-training view, not on GenAI traces.
    port = free_port()
    with serve([str(REPO / ".venv" / "bin" / "mnist-lab"), "ui", "--port", str(port)], f"http://127.0.0.1:{port}/health") as ui:
        said = [ui.stdout.readline() for _ in range(2)]
        assert said[0].startswith(f"MLflow UI over sqlite:///{store / 'mlruns' / 'mlflow.db'} on http://127.0.0.1:{port}")
        link = said[1].strip()
        assert "workflowType=machine_learning" in link and "smoke-keras-tuner" in link  # the latest study
        text = mlflow_runs_page(link, "smoke-keras-tuner")
        assert "smoke-keras-tuner-trial-0" in text and "smoke-optuna-trial" not in text  # filtered to the study
        # With a tracking server in MLFLOW_TRACKING_URI it serves nothing itself: it links into that server's UI.
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        capsys.readouterr()
        assert main(["ui"]) == 0
        assert f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?" in capsys.readouterr().out
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
    # Optuna Dashboard (its own app, in this process) names the objective instead of "Objective 0".
    from optuna_dashboard import wsgi

    app = wsgi(f"sqlite:///{store / 'mlruns' / 'optuna.db'}")
    studies = json.loads(call_wsgi(app, "/api/studies"))["study_summaries"]
    one = json.loads(call_wsgi(app, f"/api/studies/{studies[0]['study_id']}"))
    assert one["name"] == "smoke-optuna" and one["objective_names"] == ["val_accuracy"]

    # Two studies side by side (Optuna against KerasTuner): the comparison section appears.
    assert main(["report", "--study", "smoke-optuna", "--study", "smoke-keras-tuner"]) == 0
    both = inspect_page(store / "reports" / "smoke-optuna-vs-smoke-keras-tuner" / "index.html")
    assert "comparison" in both["sections"] and all(i["loaded"] for i in both["images"])
    assert any(i["alt"] == "best so far against compute" for i in both["images"])


def test_values_and_ranges_are_shown_as_they_are():
    from mnist_lab.sweep.space import Space

    space = Space.model_validate({"params": {"train.learning_rate": {"low": 1e-5, "high": 1e-1, "log": True},
                                             "model.dropout": {"low": 0.0, "high": 0.5},
                                             "train.batch_size": {"choices": [32, 64, 128]}}})
    p = space.params
    # 3 significant figures: two learning rates never print alike; whole numbers stay whole
    assert [analysis.value_text(v) for v in (1.12e-4, 1.21e-4, 0.192, 64, "64", 64.0, 60000, "[64]")] == [
        "0.000112", "0.000121", "0.192", "64", "64", "64", "60,000", "[64]"]
    # parallel coordinates place a value within the searched range, not within the values sampled
    assert analysis.range_position(0.192, p["model.dropout"]) == pytest.approx(0.384)
    assert analysis.range_position(1e-3, p["train.learning_rate"]) == pytest.approx(0.5)  # log scale: the middle
    assert [analysis.range_position(v, p["train.batch_size"]) for v in ("32", "64", "128")] == [0, 0.5, 1]
    runs = pd.DataFrame({"state": ["FAIL", "FAIL", "COMPLETE", "FAIL"],
                         "tags.failure_reason": ["loss became nan in epoch 1", "loss became nan in epoch 1\ntraceback", None,
                                                 "kernel 15 larger than the 12x12 feature map"]})
    assert analysis.failure_reasons(runs) == [("loss became nan in epoch 1", 2), ("kernel 15 larger than the 12x12 feature map", 1)]


def call_wsgi(app, path: str) -> bytes:
    from wsgiref.util import setup_testing_defaults

    environ = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (path, status)
    return body


def test_report_errors_are_one_line(store, capsys):
    assert main(["report"]) == 2
    assert main(["report", "--study", "nope"]) == 2
    assert main(["report", "--runs", "0123456789abcdef0123456789abcdef"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "make sweep" in err[0] and "no such study" in err[1] and "no such run" in err[2]
    assert main(["dashboard"]) == 2  # no study yet: nothing to show
    assert "no Optuna storage there yet; run `make sweep` first" in capsys.readouterr().err
