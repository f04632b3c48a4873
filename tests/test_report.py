"""The report, on real runs: a real sweep, real confirmations, real overfitting, checked in Chromium."""

import json
import signal

import pandas as pd
import pytest
from mlflow import MlflowClient

from mnist_lab import tracking
from mnist_lab.report import analysis, fits, runs, seeds
from mnist_lab.cli import main
from mnist_lab.config import load_config
from mnist_lab.train import train

from browser import (chromium, free_port, inspect_page, mlflow_page_text, mlflow_runs_page, read_lines, serve, shown_after,
                     toc_in_sandbox)
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
    checks = fits.fit_checks(history_of(overfit))
    assert checks["overfit_from"] is not None and checks["verdict"] == f"overfitting from epoch {checks['overfit_from']}"
    assert checks["gap_last"] > 0.05 and checks["loss_gap_last"] > 0.1
    # Not made to overfit: 20 times the data, dropout, few epochs.
    fine = train(load_config(None, SMALL_NET + ["data.train_size=6000", "model.dense=[64]", "model.dropout=0.5", "train.epochs=4"]), log_model=False)
    checks = fits.fit_checks(history_of(fine))
    assert checks["overfit_from"] is None and "overfitting" not in checks["verdict"]
    assert checks["min_val_loss_epoch"] >= 3  # still improving late in the run


def curves(val_accuracy, val_loss, accuracy=None, loss=None) -> pd.DataFrame:
    n = len(val_accuracy)
    return pd.DataFrame({"epoch": range(1, n + 1), "val_accuracy": val_accuracy, "val_loss": val_loss,
                         "accuracy": accuracy or [0.90 + 0.02 * i for i in range(n)],  # training: better every epoch
                         "loss": loss or [0.40 - 0.05 * i for i in range(n)]})


def test_fit_verdicts_agree_with_crafted_curves():
    # Validation loss rising for 2 epochs after its minimum while training loss falls.
    rising = curves([0.7, 0.8, 0.85, 0.84, 0.84], [0.9, 0.6, 0.5, 0.55, 0.6])
    assert fits.fit_checks(rising)["verdict"] == "overfitting from epoch 4"
    # A single noisy rise, validation loss back at a new minimum: not overfitting.
    assert fits.fit_checks(rising.assign(val_loss=[0.9, 0.6, 0.5, 0.55, 0.45]))["overfit_from"] is None
    # The report's trial 4: validation accuracy fell every epoch, validation loss rose at the last one,
    # training accuracy rose by more than 0.5 points an epoch. Overfitting, not "still improving".
    falling = curves([0.9778, 0.9766, 0.9756], [0.075, 0.073, 0.079], accuracy=[0.95, 0.975, 0.985])
    assert fits.fit_checks(falling)["verdict"] == "overfitting from epoch 2"
    # Best in the last epoch, training accuracy still rising fast: more epochs may help.
    climbing = curves([0.97, 0.98, 0.985, 0.99], [0.10, 0.07, 0.05, 0.04], accuracy=[0.9, 0.95, 0.97, 0.98])
    assert fits.fit_checks(climbing)["verdict"] == "still improving: more epochs may help"
    # Flat at the top: a good fit.
    flat = curves([0.985, 0.99, 0.991, 0.9905], [0.05, 0.035, 0.033, 0.034], accuracy=[0.98, 0.99, 0.992, 0.993])
    assert fits.fit_checks(flat)["verdict"] == "good fit"
    # Runs under 3 epochs are not judged, whatever their curves look like (README: "not judged").
    for short in (falling.head(2), climbing.head(2), rising.head(1)):
        assert fits.fit_checks(short)["verdict"] == "too short to tell", short
        assert fits.fit_checks(short)["gap_last"] == pytest.approx(short.accuracy.iloc[-1] - short.val_accuracy.iloc[-1])


def test_gap_correlations_leave_out_runs_too_short_to_judge():
    from mnist_lab.sweep.space import Space

    # Six judged runs where the gap grows with dropout; six pruned ones whose early gaps would say the opposite.
    judged = [(f"j{i}", curves([0.95, 0.96, 0.97 - 0.01 * i], [0.1, 0.09, 0.08], accuracy=[0.95, 0.97, 0.98])) for i in range(6)]
    short = [(f"s{i}", curves([0.5 + 0.05 * i], [1.0])) for i in range(6)]
    history = pd.concat([h.assign(run_id=r) for r, h in judged + short], ignore_index=True)
    dropout = [0.05 * i for i in range(6)] * 2
    study = runs.Study(name="s", parent=None, space=Space.model_validate({"params": {"model.dropout": {"low": 0.0, "high": 0.5}}}),
                       objective="val_accuracy", maximize=True, history=history,
                       runs=pd.DataFrame({"run_id": [r for r, _ in judged + short], "trial": range(12),
                                          "state": ["COMPLETE"] * 6 + ["PRUNED"] * 6, "params.model.dropout": dropout}))
    table = fits.gap_correlations(study, fits.fit_table(study))
    assert table.runs.tolist() == [6] and table["Spearman rho with the gap"].iloc[0] == pytest.approx(1.0)


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
    table, _, _ = seeds.confirmation(runs.load_study(client, experiment_id, "smoke-optuna"))
    assert list(table.seeds) == [2, 2, 2] and sorted(table.configuration.str.split(" ").str[0]) == ["baseline", "trial", "trial"]

    if not chromium():
        pytest.fail("Chromium is not installed: apt-get install chromium (.ci/run does)")
    page = inspect_page(out / "index.html", width=1366)
    assert page["sections"] == ["summary", "leaderboard", "curves", "overfitting", "effects", "confirmation"]
    assert len(page["images"]) >= 5 and all(i["loaded"] for i in page["images"]), page["images"]
    assert any(i["alt"] == "optimisation history" for i in page["images"])
    assert not page["overflowing"] and not page["clipped"]  # a laptop screen shows every column
    # The summary leads with the answer: what won, by how much over the baseline, how sure, crowned or not.
    answer = page["text"].split("Summary: smoke-optuna\n", 1)[1].strip().splitlines()[0]
    assert answer.startswith("trial ") and " points of validation accuracy (" in answer and "one-sided Welch p = " in answer, answer
    assert answer.endswith(("Nothing was crowned.", ".")) and ("crowned" in answer or "mnist-cnn@champion" in answer), answer
    assert f"**{answer}**" in md
    # every trial on the leaderboard opens its run in MLflow's UI
    assert sorted(link.rsplit("/", 1)[1].split("?")[0] for link in page["run_links"]) == sorted(r.info.run_id for r in trials)
    # MLflow's default address (no UI runs now: the page says how to start one), in the model-training view
    assert all(link.startswith(f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/") for link in page["run_links"])
    assert all(link.endswith("?workflowType=machine_learning") for link in page["run_links"])
    assert shown_after(out / "index.html", ".no-ui")
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
    # what a confirmation run retrains comes first in its name (MLflow's run list cuts names short)
    assert sorted(r.info.run_name for r in confirms)[:2] == ["baseline seed 0 · confirm", "baseline seed 1 · confirm"]
    assert all(r.info.run_name == f"{r.data.tags['source_label']} seed {r.data.tags['seed']} · confirm" for r in confirms)
    assert not [r for r in client.search_runs([experiment_id], "tags.champion = 'true'")]  # the alias is the one record
    version = client.get_model_version_by_alias("mnist-cnn", "champion")
    # the champion is the study whose sweep last said its winner beats the incumbents (smoke-keras-tuner ran second)
    verdicts = {s: client.search_runs([experiment_id], f"tags.`mnist_lab.kind` = 'study' and tags.study = '{s}'")[0]
                .data.tags.get("confirmation", "") for s in ("smoke-optuna", "smoke-keras-tuner")}
    crowned = [s for s, said in verdicts.items() if said.startswith(f"trial {version.tags['trial']} beats")]
    assert version.tags["study"] == crowned[-1] and version.tags["data_digest"].startswith("sha256:"), verdicts
    assert "validation accuracy" in version.description and "training seeds" in version.description

    # `make ui` opens on the latest study's runs in the model-training view, not on GenAI traces.
    port = free_port()
    with serve([str(REPO / ".venv" / "bin" / "mnist-lab"), "ui", "--port", str(port)], f"http://127.0.0.1:{port}/health") as ui:
        said = read_lines(ui.stdout, 3)
        assert said[0].startswith(f"MLflow UI over sqlite:///{store / 'mlruns' / 'mlflow.db'} on http://127.0.0.1:{port}: starting")
        assert said[1].startswith("ready (Ctrl-C stops it)")  # said once the server answers, not before
        link = said[2].strip()
        assert "workflowType=machine_learning" in link and "smoke-keras-tuner" in link  # the latest study
        text = mlflow_runs_page(link, "smoke-keras-tuner")
        assert "trial 0 · smoke-keras-tuner" in text and "· smoke-optuna" not in text  # filtered to the study
        # A report made now links to the port this UI serves; a run link opens the run in the model-training view.
        assert main(["report", "--study", "smoke-optuna", "--out", str(store / "with-ui")]) == 0
        served = inspect_page(store / "with-ui" / "smoke-optuna" / "index.html")["run_links"]
        assert served and all(link.startswith(f"http://127.0.0.1:{port}/#/experiments/") for link in served), served
        assert not shown_after(store / "with-ui" / "smoke-optuna" / "index.html", ".no-ui", within_ms=3000)
        best = runs.load_study(MlflowClient(), experiment_id, "smoke-optuna").runs.sort_values("trial").iloc[0]
        run_page = mlflow_page_text(next(link for link in served if best.run_id in link), "val_accuracy")
        assert best["tags.mlflow.runName"] in run_page and "Judges" not in run_page, run_page[:1500]
        # With a tracking server in MLFLOW_TRACKING_URI it serves nothing itself: it links into that server's UI.
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        capsys.readouterr()
        assert main(["ui"]) == 0
        assert f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?" in capsys.readouterr().out
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
    # Ctrl-C stops the UI with one line (MLflow's server gets it from `mnist-lab ui`, not from the terminal).
    with serve([str(REPO / ".venv" / "bin" / "mnist-lab"), "ui", "--port", str(port)], f"http://127.0.0.1:{port}/health") as ui:
        ui.send_signal(signal.SIGINT)
        out_text, err_text = ui.communicate(timeout=30)
        assert ui.returncode == 0 and out_text.splitlines()[-1] == "MLflow UI stopped." and err_text == "", (out_text, err_text)
        assert "GET /" not in out_text and not (store / "mlruns" / "ui.json").exists()
    # Optuna Dashboard (its own app, in this process) names the objective instead of "Objective 0".
    from optuna_dashboard import wsgi

    app = wsgi(f"sqlite:///{store / 'mlruns' / 'optuna.db'}")
    studies = json.loads(call_wsgi(app, "/api/studies"))["study_summaries"]
    one = json.loads(call_wsgi(app, f"/api/studies/{studies[0]['study_id']}"))
    assert one["name"] == "smoke-optuna" and one["objective_names"] == ["val_accuracy"]

    # Two studies side by side (Optuna against KerasTuner): one comparison page, in its own folder,
    # logged beside each study's own report, overwriting nothing.
    own = {a.path: a.file_size for a in client.list_artifacts(parent.info.run_id, "report")}
    note = client.get_run(parent.info.run_id).data.tags["mlflow.note.content"]
    assert main(["report", "--study", "smoke-optuna", "--study", "smoke-keras-tuner"]) == 0
    both = inspect_page(store / "reports" / "smoke-optuna-vs-smoke-keras-tuner" / "index.html", width=1366)
    assert both["sections"] == ["answers", "side-by-side", "compute"] and all(i["loaded"] for i in both["images"])
    assert {i["alt"] for i in both["images"]} == {"best so far against compute", "best trials' curves on shared axes"}
    assert not both["overflowing"] and not both["clipped"]
    table = both["text"].split("Side by side", 1)[1]
    assert "smoke-optuna\tsmoke-keras-tuner" in table and "validation images\t500\t500" in table, table[:800]
    assert "The studies scored on the same validation images" in both["text"]  # same data settings: nothing to warn of
    assert {a.path: a.file_size for a in client.list_artifacts(parent.info.run_id, "report")} == own
    assert client.get_run(parent.info.run_id).data.tags["mlflow.note.content"] == note
    for study in ("smoke-optuna", "smoke-keras-tuner"):
        logged = client.search_runs([experiment_id], f"tags.`mnist_lab.kind` = 'study' and tags.study = '{study}'")[0]
        assert {a.path for a in client.list_artifacts(logged.info.run_id, "comparisons/smoke-optuna-vs-smoke-keras-tuner")} == {
            f"comparisons/smoke-optuna-vs-smoke-keras-tuner/{f}" for f in ("index.html", "report.md", "runs.csv")}


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


def confirmed_study(trial_seeds, baseline_seeds, crowned: bool, test=0.9946) -> runs.Study:
    """A study whose trial 7 and baseline (trial 0) were confirmed over seeds 1.., their trial runs being seed 0."""
    trial_runs = pd.DataFrame({"run_id": ["r7", "r0"], "trial": [7, 0], "state": ["COMPLETE"] * 2,
                               "metrics.val_accuracy": [trial_seeds[0], baseline_seeds[0]], "metrics.test_accuracy": [test, float("nan")],
                               "params.train.seed": ["0", "0"]})
    confirm = pd.DataFrame([{"status": "FINISHED", "tags.source_run_id": source, "tags.config_rank": str(rank), "tags.seed": str(seed),
                             "tags.source_label": label, "metrics.val_accuracy": score}
                            for source, rank, label, scores in (("r7", 1, "trial 7", trial_seeds), ("r0", 2, "baseline", baseline_seeds))
                            for seed, score in enumerate(scores) if seed > 0])
    return runs.Study(name="s", parent=None, space=None, objective="val_accuracy", maximize=True, runs=trial_runs,
                      history=runs._empty_history(), confirm=confirm,
                      champion={"version": "1", "source_run_id": "r7"} if crowned else None)


def test_the_answer_says_what_won_by_how_much_how_sure_crowned_and_its_test_accuracy():
    from scipy import stats

    won, base = [0.9940, 0.9956, 0.9938], [0.9882, 0.9905, 0.9904]
    p = stats.ttest_ind(won, base, equal_var=False, alternative="greater").pvalue  # SciPy's, not the lab's
    said = seeds.answer(confirmed_study(won, base, crowned=True))
    assert said == (f"trial 7 beats the baseline by +{100 * (sum(won) - sum(base)) / 3:.2f} points of validation accuracy "
                    f"({sum(won) / 3:.4f} against {sum(base) / 3:.4f}, means over 3 and 3 seeds; one-sided Welch p = {p:.2g}). "
                    "It is mnist-cnn@champion (version 1); its one test-set evaluation: 0.9946."), said
    assert "+0.48 points" in said
    tied = seeds.answer(confirmed_study([0.990, 0.985, 0.992], [0.989, 0.990, 0.986], crowned=False, test=float("nan")))
    assert tied.startswith("trial 7 does not beat the baseline with confidence: +0.07 points") and tied.endswith("Nothing was crowned."), tied
    alone = seeds.answer(confirmed_study([0.99, 0.992], [0.98], crowned=False))
    assert alone.startswith("trial 7 scores 0.9910 validation accuracy over 2 seeds; no baseline or champion was confirmed"), alone
    assert seeds.answer(runs.Study("s", None, None, "val_accuracy", True, pd.DataFrame(), runs._empty_history())).startswith("No answer yet")


def test_the_leaderboard_of_the_default_space_fits_a_laptop_screen(tmp_path):
    """All 15 hyperparameters of experiments/sweep.yaml, ten trials with long values, baseline and champion
    marked: no sideways scroll at 1366 px in Chromium, and one order (complete by score, then pruned)."""
    import random

    import yaml

    from mnist_lab.report import page
    import optuna

    from mnist_lab.sweep.space import Space, distributions

    space = Space.model_validate(yaml.safe_load((REPO / "experiments" / "sweep.yaml").read_text()))
    rng = random.Random(0)
    rows = []
    for n in range(12):
        values = {f"params.{k}": rng.choice(d.choices) if isinstance(d, optuna.distributions.CategoricalDistribution)
                  else rng.randrange(d.low, d.high + 1, d.step) if isinstance(d, optuna.distributions.IntDistribution)
                  else rng.uniform(d.low, d.high) for k, d in distributions(space).items()}
        rows.append({"run_id": f"{n:032x}", "trial": n, "state": "PRUNED" if n % 3 == 2 else "COMPLETE", "experiment_id": "1",
                     "metrics.val_accuracy": 0.98 + rng.random() / 100, "metrics.train_seconds": 123.456 + n,
                     "params.param_count": str(1_234_567 + n), "tags.pruned_at_epoch": "0.12", **values})
    rows[0]["metrics.test_accuracy"] = 0.9946
    study = runs.Study(name="wide", parent=None, space=space, objective="val_accuracy", maximize=True, runs=pd.DataFrame(rows),
                       history=runs._empty_history(), champion={"version": "3", "source_run_id": rows[0]["run_id"]})
    board = analysis.leaderboard(study)
    states = [study.runs.set_index("trial").state[int(t.split()[1])] for t in board.trial]
    assert states == sorted(states)  # COMPLETE before PRUNED
    complete = board[board.trial.map(lambda t: "pruned" not in t)]
    assert list(complete.val_accuracy) == sorted(complete.val_accuracy, reverse=True)
    paths = page.build([study], tmp_path / "report")
    seen = inspect_page(paths["html"], width=1366)
    assert not seen["overflowing"] and not seen["clipped"], seen["clipped"]
    board_text = seen["text"].split("\nLeaderboard\n", 1)[1]
    assert "trial 0 champion" in board_text.split("Optimisation history")[0], board_text[:1000]


def test_studies_that_cannot_be_compared_as_they_stand_are_warned_of():
    from mnist_lab.report import compare

    def study(name, validation, per_epoch, precision):
        frame = pd.DataFrame({"run_id": [f"{name}{i}" for i in range(2)], "trial": [0, 1], "state": ["COMPLETE"] * 2,
                              "metrics.val_accuracy": [0.98, 0.97], "params.validation_images": [str(validation)] * 2,
                              "params.train_images": [str(per_epoch)] * 2, "params.data.seed": ["0"] * 2,
                              "params.precision": [precision] * 2, "tags.cpu_model": ["AMD EPYC"] * 2})
        return runs.Study(name, None, None, "val_accuracy", True, frame, runs._empty_history())

    same = compare.warnings([study("a", 5000, 55000, "float32"), study("b", 5000, 55000, "float32")])
    assert same == []
    said = compare.warnings([study("a", 500, 1000, "float32"), study("b", 5000, 55000, "mixed_bfloat16")])
    assert len(said) == 3, said
    assert said[0].startswith("The studies differ in validation images (a: 500; b: 5000)")
    assert said[1].startswith("The studies differ in training images per epoch (a: 1000; b: 55,000)")
    assert "float32 on AMD EPYC" in said[2] and "mixed_bfloat16 on AMD EPYC" in said[2]
    table = compare.side_by_side([study("a", 500, 1000, "float32"), study("b", 5000, 55000, "float32")])
    assert list(table.columns) == ["", "a", "b"] and table.set_index("").loc["validation images"].tolist() == ["500", "5000"]


def test_edges_reversals_importance_parallel_coordinates_and_pareto_on_a_crafted_study(tmp_path):
    """The report's warnings and sections the README promises, on a study made here (no training):
    a best value at the edge of its range, a rank reversal over seeds, the importance caveat under
    20 complete trials, parallel coordinates, and the Pareto front of a two-objective study."""
    from mnist_lab.report import figures, page
    from mnist_lab.sweep.space import Space

    space = Space.model_validate({"objective": ["val_accuracy", "latency_ms"],
                                  "params": {"model.dropout": {"low": 0.0, "high": 0.5},
                                             "train.batch_size": {"choices": [32, 64, 128, 256]},
                                             "train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}})
    rows = [{"run_id": f"r{i}", "trial": i, "state": "COMPLETE", "experiment_id": "1",
             "metrics.val_accuracy": 0.98 + 0.001 * i, "metrics.latency_ms": 5.0 - 0.3 * i + (0.5 if i % 2 else 0),
             "params.model.dropout": str(0.055 * i), "params.train.batch_size": str([32, 64, 128, 256][i % 4]),
             "params.train.learning_rate": str(1e-4 * (1.6 ** i))} for i in range(10)]
    # The best (trial 9): dropout 0.495 (within 5% of 0.5: an edge), batch 64 (inside), lr 6.9e-3 (inside).
    runs_frame = pd.DataFrame(rows)
    confirm = pd.DataFrame([{"status": "FINISHED", "tags.source_run_id": src, "tags.config_rank": str(rank), "tags.seed": str(seed),
                             "tags.source_label": label, "metrics.val_accuracy": v}
                            for src, rank, label, scores in (("r9", 1, "trial 9", [0.980, 0.981]), ("r8", 2, "trial 8", [0.990, 0.991]))
                            for seed, v in enumerate(scores, 1)])
    study = runs.Study(name="crafted", parent=None, space=space, objective="val_accuracy", maximize=True, runs=runs_frame,
                       history=runs._empty_history(), confirm=confirm)
    best = analysis.summarize(study)["best"]
    assert int(best.trial) == 9
    assert analysis.edge_warnings(study, best) == ["model.dropout = 0.495 is at the edge of [0, 0.5]: widen the range"]
    _, _, verdicts = seeds.confirmation(study)
    assert any(v.startswith("rank reversal: trial 9 beat trial 8 in the search (0.9890 against 0.9880), but over seeds")
               for v in verdicts), verdicts
    assert analysis.importances(study) and len(runs_frame) < analysis.MIN_IMPORTANCE_TRIALS
    assert figures.parallel_coordinates(study) and figures.pareto_plot(study)
    text = inspect_page(page.build([study], tmp_path / "r")["html"], width=1366)["text"]
    assert "edge of the searched range for 1 hyperparameter" in text and "rank reversal: trial 9" in text
    assert "Rough: with fewer than 20 complete trials" in text
    alts = {i["alt"] for i in inspect_page(tmp_path / "r" / "index.html")["images"]}
    assert {"parallel coordinates", "Pareto front", "axis plots"} <= alts, alts
