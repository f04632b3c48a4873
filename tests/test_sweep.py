"""Sweeps end to end: real Optuna storages, a real MLflow store, the real CLI, real MNIST."""

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from mnist_lab import tracking
from mnist_lab.cli import main
from mnist_lab.errors import ConfigError
from mnist_lab.sweep.pruning import REPORTS_PER_EPOCH
from mnist_lab.sweep.space import load_space

from conftest import REPO, crownable_smoke

SMOKE = str(REPO / "experiments" / "smoke.yaml")


def runs_of(study_name, kind="trial"):
    experiment_id = tracking.setup()  # before MlflowClient(), which binds to the URI set at that moment
    return MlflowClient().search_runs(
        [experiment_id], f"tags.study = '{study_name}' and tags.`mnist_lab.kind` = '{kind}'", max_results=1000
    )


def load(storage, name):
    return optuna.load_study(study_name=name, storage=storage)


def finished(study):
    return [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


def assert_one_run_per_trial(study_name, study):
    runs = runs_of(study_name)
    per_trial = Counter(r.data.tags["trial_number"] for r in runs)
    assert all(n == 1 for n in per_trial.values()), per_trial  # no duplicate MLflow runs
    for t in finished(study):
        assert per_trial[str(t.number)] == 1, t.number  # none lost
        run = MlflowClient().get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["state"] == t.state.name
        assert run.data.tags["mlflow.parentRunId"] == study.user_attrs["mlflow_parent_run_id"]
    parents = runs_of(study_name, "study")
    assert len(parents) == 1 and parents[0].info.run_id == study.user_attrs["mlflow_parent_run_id"]
    return runs


def test_smoke_sweep_logs_a_parent_and_nested_trials_and_crowns_a_champion(store, capsys):
    space = crownable_smoke(store)
    assert main(["sweep", space]) == 0
    storage = f"sqlite:///{store / 'mlruns' / 'optuna.db'}"
    study = load(storage, "smoke-optuna")
    assert len(finished(study)) == 3
    runs = assert_one_run_per_trial("smoke-optuna", study)
    client = MlflowClient()
    parent = runs_of("smoke-optuna", "study")[0]
    for tag in ("space_file", "space", "engine", "sampler", "pruner", "git_commit", "objective"):
        assert parent.data.tags.get(tag), tag
    assert parent.data.tags["sampler"] == "random" and parent.info.status == "FINISHED"
    assert parent.data.tags["sampler_seed"] == "0" and study.user_attrs["sampler_seed"] == 0  # the space's seed, recorded
    for run in runs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1]
        assert run.data.params["data.train_size"] == "1000"
    # The best trial was evaluated once on the test set and became the champion.
    best = max(runs, key=lambda r: r.data.metrics["val_accuracy"])
    version = client.get_model_version_by_alias("mnist-cnn", "champion")
    assert version.run_id == best.info.run_id and "test_accuracy" in client.get_run(best.info.run_id).data.metrics
    out = capsys.readouterr().out
    assert "registered as mnist-cnn@champion" in out and "top 3 of 3" in out
    # the baseline is not in this space: it was confirmed from its config, beside the winner
    baseline_seeds = [r for r in runs_of("smoke-optuna", "confirm") if r.data.tags["source_label"] == "baseline"]
    assert sorted(r.data.tags["seed"] for r in baseline_seeds) == ["0", "1"]
    assert {r.data.params["train.learning_rate"] for r in baseline_seeds} == {"1e-05"}
    assert float(version.tags["p_vs_baseline"]) < 0.05

    # Running the same command again continues the study: nothing is rerun, nothing duplicated.
    assert main(["sweep", space]) == 0
    assert len(load(storage, "smoke-optuna").trials) == 3 and len(runs_of("smoke-optuna")) == 3
    # ...and a bigger budget adds trials to the same study, under the same parent run.
    assert main(["sweep", space, "--n-trials", "4"]) == 0
    study = load(storage, "smoke-optuna")
    assert len(finished(study)) == 4
    # The resumed sampler did not replay its sequence: trial 3 is not trial 0 again.
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == 4, params
    assert_one_run_per_trial("smoke-optuna", study)


def sweep_cmd(*args):
    return [str(REPO / ".venv" / "bin" / "mnist-lab"), "sweep", SMOKE, *args]


def test_four_local_workers_share_one_sqlite_study(store):
    out = subprocess.run(sweep_cmd("--n-trials", "5", "--workers", "4", "data.train_size=500", "data.validation_size=200"),
                         env=os.environ | {"CI": "true"}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "locked" not in out.stderr + out.stdout and "Traceback" not in out.stderr
    # Off a terminal (output captured, as in CI or a log file) the live display draws nothing: lines only.
    assert "\x1b" not in out.stdout + out.stderr
    study = load(f"sqlite:///{store / 'mlruns' / 'optuna.db'}", "smoke-optuna")
    others = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in study.trials
              if t.state != optuna.trial.TrialState.COMPLETE and not t.user_attrs.get("surplus")]
    assert len(finished(study)) == 5 and not others, (others, out.stderr[-3000:])
    runs = assert_one_run_per_trial("smoke-optuna", study)  # no trial run twice, none lost
    assert len(runs) == len([t for t in study.trials if "mlflow_run_id" in t.user_attrs]) == 5  # the counts agree
    assert len({r.data.tags["worker"] for r in runs}) >= 3  # the workers shared the trials
    # each worker trained with TensorFlow's pool sized to its share of the cores
    assert {r.data.tags["tensorflow_threads"] for r in runs} == {str(max(1, os.cpu_count() // 4))}


# A worker as it starts: opens the study and asks for its first trial, when told to.
ASK_AT_ONCE = """
import sys
import optuna
from mnist_lab.sweep.optuna_study import make_storage
study = optuna.load_study(study_name="s", storage=make_storage(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
print(study.ask().number, flush=True)
"""


def test_two_workers_asking_at_the_same_moment_never_both_start_the_queued_trial(tmp_path):
    """A sweep's first trial is the enqueued baseline, and its workers start together. On SQLite both
    read it WAITING and both ran it (20 rounds of 20 before make_storage's write-locked transactions),
    and the second's result then failed its worker ("Cannot tell a COMPLETE trial"): the study went on
    with one worker. Now one takes it, the other gets a trial of its own."""
    for r in range(3):
        url = f"sqlite:///{tmp_path / f'study-{r}.db'}"
        optuna.create_study(study_name="s", storage=url).enqueue_trial({})
        workers = [subprocess.Popen([sys.executable, "-c", ASK_AT_ONCE, url], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
        for w in workers:
            assert w.stdout.readline().strip() == "ready"
        for w in workers:
            w.stdin.write("go\n")
            w.stdin.flush()
        assert sorted(int(w.communicate()[0]) for w in workers) == [0, 1]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("params: {model.dropot: {low: 0, high: 0.5}}", "'model.dropot'"),
        # the key is named in every message
        ("params: {model.dropout: {low: 0.5, high: 0.1}}", "params: model.dropout: low (0.5) > high (0.1)"),
        ("params: {train.batch_size: {choices: []}}", "params: train.batch_size: choices: List should have at least 1 item"),
        ("params: {train.epochs: {low: 1, hihg: 3}}", "params: train.epochs: unknown key 'hihg' (allowed: low, high, step, log)"),
        # a step of 0 would fail every trial inside Optuna, not here
        ("params: {train.epochs: {low: 1, high: 3, step: 0}}", "params: train.epochs: step: Input should be greater than 0"),
        ("params: {model.dropout: {low: 0.1, high: 0.5, step: -0.1}}", "params: model.dropout: step: Input should be greater than 0"),
        ("params: {train.epochs: {low: 1, high: 3}}\nsampler: bayes", "sampler"),
        ("params: {train.epochs: {low: 1, high: 3}}\nbudgt: {n_trials: 3}", "unknown key 'budgt' (did you mean 'budget'?)"),
        ("params: {train.epochs: {low: 1, high: 3}}\nfixed: {train.epochs: 0}", "train.epochs"),
        ("params: {}", "params"),
    ],
)
def test_invalid_spaces_fail_before_any_trial(tmp_path, text, expected):
    path = tmp_path / "space.yaml"
    path.write_text(f"base: {REPO / 'experiments' / 'baseline.yaml'}\n{text}\n")
    with pytest.raises(ConfigError) as e:
        load_space(path)
    assert str(e.value).startswith(str(path)) and expected in str(e.value) and "\n" not in str(e.value)


def test_cli_reports_a_bad_space_in_one_line(store, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("params: {model.dense.3: {choices: [8]}}\n")
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "out of range" in err and len(err.splitlines()) == 1
    assert not (store / "mlruns" / "optuna.db").exists()  # refused before any storage was opened


def test_impossible_and_diverging_trials_are_recorded_as_failed_and_the_sweep_goes_on(store, tmp_path, capsys):
    space = tmp_path / "risky.yaml"
    space.write_text(
        f"base: {REPO / 'experiments' / 'baseline.yaml'}\n"
        "fixed: {data.train_size: 1000, data.validation_size: 500, train.epochs: 1, model.dense: [32], train.optimizer: sgd}\n"
        "sampler: grid\npruner: none\nbudget: {n_trials: 2}\nconfirm: {top: 1, seeds: 2}\n"
        # a 15x15 kernel cannot see the 12x12 feature map; a learning rate of 1e9 blows the loss up
        "params:\n  model.conv_blocks.1.kernel_size: {choices: [3, 5, 15]}\n  train.learning_rate: {choices: [1.0e+9, 0.01]}\n"
    )
    assert main(["sweep", str(space)]) == 0  # failures are the space's answers, not the end of the study
    study = load(f"sqlite:///{store / 'mlruns' / 'optuna.db'}", "risky-optuna")
    assert len(finished(study)) == 2  # it went on to its budget
    runs = {r.data.tags["trial_number"]: r for r in runs_of("risky-optuna")}
    kinds = set()
    for t in study.trials:
        if t.state != optuna.trial.TrialState.FAIL:
            assert t.params["model.conv_blocks.1.kernel_size"] != 15 and t.params["train.learning_rate"] == 0.01
            continue
        run = runs[str(t.number)]
        assert run.info.status == "FAILED" and run.data.tags["state"] == "FAIL"
        assert run.info.run_name == f"trial {t.number} failed · risky-optuna"  # told apart in MLflow's run list, first thing
        assert run.data.tags["failure_reason"][:500] == t.user_attrs["fail_reason"]
        if t.params["model.conv_blocks.1.kernel_size"] == 15:
            assert "larger than the 12x12 feature map" in t.user_attrs["fail_reason"]
            kinds.add("impossible")
        else:
            assert "loss became" in t.user_attrs["fail_reason"]
            kinds.add("diverged")
    assert kinds == {"impossible", "diverged"}
    assert runs_of("risky-optuna", "study")[0].data.tags["trials"].endswith(f"{len(study.trials) - 2} failed, 0 lost to kills")


def test_keras_tuner_engine_logs_the_same_shape_as_optuna_in_its_own_study(in_smoke_studies, monkeypatch, capsys, tmp_path):
    # The same space, both engines, default study names: two studies that never mix.
    store = in_smoke_studies
    tracking.setup()  # before MlflowClient(), which binds to the store set at that moment
    client = MlflowClient()

    def shape(study):
        runs = runs_of(study)
        assert len(runs) == 3 and all(r.info.status == "FINISHED" and r.data.tags["state"] == "COMPLETE" for r in runs)
        parent = runs_of(study, "study")
        assert len(parent) == 1 and {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent[0].info.run_id}
        # Union over the study's runs: each study evaluates its best run on the test set once;
        # only the study whose best beats the other becomes the champion.
        params, metrics, tags, artifacts = set(), set(), set(), set()
        for run in runs:
            params |= set(run.data.params)
            metrics |= set(run.data.metrics)
            tags |= set(run.data.tags) - {"mlflow.runName", "champion"}
            artifacts |= {a.path for a in client.list_artifacts(run.info.run_id)}
        return params, metrics, tags, artifacts, set(parent[0].data.tags)

    assert shape("smoke-optuna") == shape("smoke-keras-tuner")
    kt_parent = runs_of("smoke-keras-tuner", "study")[0]
    assert kt_parent.data.tags["engine"] == "keras-tuner" and kt_parent.data.tags["sampler"] == "random"
    assert {r.data.tags["engine"] for r in runs_of("smoke-optuna")} == {"optuna"}
    assert {r.data.tags["engine"] for r in runs_of("smoke-keras-tuner")} == {"keras-tuner"}
    # KerasTuner runs no baseline trial: the baseline is confirmed from its config, seeds 0 and 1, its runs
    # filed under the study's own run.
    baseline = [r for r in runs_of("smoke-keras-tuner", "confirm") if r.data.tags["source_label"] == "baseline"]
    assert sorted(r.data.tags["seed"] for r in baseline) == ["0", "1"]
    assert {r.data.tags["source_run_id"] for r in baseline} == {kt_parent.info.run_id}
    # Rerunning resumes the KerasTuner study too, with its time budget: run again with a budget its first
    # run already spent (and room for 3 more trials), it starts no trial and says why; the Optuna study is untouched.
    capsys.readouterr()
    assert main(["sweep", str(store / "smoke.yaml"), "--engine", "keras-tuner", "--n-trials", "6", "--timeout", "1"]) == 0
    assert "stopped: the study's time budget (1 s) has room only for the confirmation, after 3 complete trials" in capsys.readouterr().out
    assert len(runs_of("smoke-keras-tuner")) == 3 and len(runs_of("smoke-keras-tuner", "study")) == 1
    assert len(runs_of("smoke-optuna")) == 3 and len(load(f"sqlite:///{store / 'mlruns' / 'optuna.db'}", "smoke-optuna").trials) == 3

    # Both studies' search state names the store they log to: pointed at another store, neither
    # starts a trial under a parent run that is not there; one line says what happened and what to do.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'other.db'}")
    capsys.readouterr()
    for engine in ("optuna", "keras-tuner"):
        assert main(["sweep", str(store / "smoke.yaml"), "--n-trials", "4", "--engine", engine]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"study smoke-{engine}: its MLflow run" in err and f"not in the tracking store sqlite:///{store / 'other.db'}" in err
        assert f"(it logged to sqlite:///{store / 'mlruns' / 'mlflow.db'})" in err and "--study NAME" in err
    assert not runs_of("smoke-optuna") and not runs_of("smoke-keras-tuner")  # nothing logged in the other store

    # The default store again, in a copy of this folder without mlruns/mlflow.db (the runs wiped, the
    # search state kept; a copy, since other tests share these studies): refused the same way.
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    wiped = tmp_path / "wiped"
    shutil.copytree(store, wiped, ignore=shutil.ignore_patterns("mlflow.db", "artifacts", "other.db"))
    monkeypatch.chdir(wiped)
    capsys.readouterr()
    for engine in ("optuna", "keras-tuner"):
        assert main(["sweep", str(wiped / "smoke.yaml"), "--n-trials", "4", "--engine", engine]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"study smoke-{engine}: its MLflow run" in err and "mlruns/mlflow.db" in err and "switched or wiped" in err
    assert not runs_of("smoke-optuna") and not runs_of("smoke-keras-tuner")
    assert len(load(f"sqlite:///{wiped / 'mlruns' / 'optuna.db'}", "smoke-optuna").trials) == 3  # the search state untouched


def test_multi_objective_study_with_nsga2_reports_a_pareto_front(store, tmp_path, capsys):
    space = tmp_path / "pareto.yaml"
    space.write_text(Path(crownable_smoke(tmp_path)).read_text()
                     .replace("objective: val_accuracy", "objective: [val_accuracy, latency_ms]")
                     .replace("sampler: random", "sampler: nsga2"))
    assert main(["sweep", str(space)]) == 0
    study = load(f"sqlite:///{store / 'mlruns' / 'optuna.db'}", "pareto-optuna")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert len(finished(study)) == 3 and study.best_trials  # the Pareto front
    champion = MlflowClient().get_model_version_by_alias("mnist-cnn", "champion")
    front_runs = {t.user_attrs["mlflow_run_id"] for t in study.best_trials}
    assert champion.run_id in front_runs
    assert all(MlflowClient().get_run(r).data.metrics["latency_ms"] > 0 for r in front_runs)


def test_a_hopeless_trial_is_pruned_within_its_first_epoch(store, tmp_path, capsys):
    # Trial 0 is the base config (learning rate 1e-3); the grid then tries 1e-3 and 1e-6 (which learns
    # nothing) in either order. Successive halving compares each against the trials before it after a
    # quarter epoch of images, on the validation slice.
    space = tmp_path / "hopeless.yaml"
    space.write_text(f"base: {REPO / 'experiments' / 'baseline.yaml'}\n"
                     "fixed: {data.validation_size: 500, train.epochs: 2}\n"
                     "sampler: grid\npruner: sha\nbudget: {n_trials: 3}\nconfirm: {top: 1, seeds: 2}\n"
                     "params: {train.learning_rate: {choices: [0.001, 1.0e-6]}}\n")
    # The training set is cut on the command line, not in the space: the pruner's rungs and the live
    # display count epochs of these 2,000 images (with the default 55,000 the first rung, 6,875 images,
    # would lie beyond this whole 4,000-image run, and nothing would be pruned).
    assert main(["sweep", str(space), "data.train_size=2000"]) == 0
    study = load(f"sqlite:///{store / 'mlruns' / 'optuna.db'}", "hopeless-optuna")
    good = study.trials[0]
    hopeless = next(t for t in study.trials if t.params["train.learning_rate"] == 1e-6)
    assert good.state == optuna.trial.TrialState.COMPLETE and good.params["train.learning_rate"] == 0.001
    assert hopeless.state == optuna.trial.TrialState.PRUNED
    # the floor holds a trial only to trials of its batch size (mnist_lab/sweep/pruning.py): the objective says which
    assert good.user_attrs["batch_size"] == hopeless.user_attrs["batch_size"] == 32
    # Reports at images seen, at the first compiled call past each eighth of the epoch, and at its end.
    # A 2,000-image epoch at batch 32 is 63 steps, compiled 16 at a time: 4 calls, so 3 reports inside
    # each epoch and one at its end (a 55,000-image epoch has 8: README).
    assert sorted(good.intermediate_values) == [512, 1024, 1536, 2000, 2512, 3024, 3536, 4000]
    assert min(hopeless.intermediate_values) < 2000  # it was stopped inside its first epoch
    assert f"pruned at epoch {hopeless.last_step / 2000:.2f}" in capsys.readouterr().err
    run = MlflowClient().get_run(hopeless.user_attrs["mlflow_run_id"])
    assert run.data.tags["state"] == "PRUNED" and int(run.data.tags["pruned_at_images"]) < 2000
    assert run.info.run_name == f"trial {hopeless.number} pruned · hopeless-optuna"
    assert run.data.tags["mlflow.note.content"].startswith(
        f"Trial {hopeless.number} of study hopeless-optuna, pruned at epoch {int(run.data.tags['pruned_at_images']) / 2000:.2f} (")
    good_run = MlflowClient().get_run(good.user_attrs["mlflow_run_id"])
    assert good_run.data.tags["mlflow.note.content"] == (
        f"Trial {good.number} of study hopeless-optuna, complete: val_accuracy {good.value:.4f} after 2 epochs of 2,000 images "
        f"({good_run.data.params['precision']}, {int(good_run.data.params['param_count']):,} parameters).")
    # the pruned trial keeps its partial curve: the interrupted epoch is logged; its config too,
    # but no plots and no model of a fraction of a run
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")] == [1]
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts and "plots" not in artifacts
    assert not MlflowClient().search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert MlflowClient().search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{good.user_attrs['mlflow_run_id']}'")


@pytest.mark.parametrize("sampler, pruner", [("tpe", "median"), ("random", "hyperband"), ("random", "sha"), ("random", "sha-pooled"),
                                            ("qmc", "none"), ("grid", "none")])
def test_every_sampler_and_pruner_can_be_built(tmp_path, sampler, pruner):
    from mnist_lab.sweep.optuna_study import make_sampler
    from mnist_lab.sweep.pruning import make_pruner

    params = "{model.dropout: {choices: [0.1, 0.5]}, train.epochs: {choices: [1, 4]}}"
    path = tmp_path / "s.yaml"
    path.write_text(f"base: {REPO / 'experiments' / 'baseline.yaml'}\nsampler: {sampler}\npruner: {pruner}\nparams: {params}\n")
    space = load_space(path)
    assert type(make_sampler(space)).__name__.lower().startswith(sampler[:3])
    base = space.config_for({})
    built = make_pruner(space.space.pruner, base, space.max_epochs(base))
    assert {"median": "MedianPruner", "hyperband": "HyperbandPruner", "sha": "ScheduleAwareHalving",
            "sha-pooled": "SuccessiveHalvingPruner", "none": "NopPruner"}[pruner] == type(built).__name__
    if pruner == "hyperband":
        # training images seen: the largest epoch count in the space times 55,000 images per epoch
        assert built._max_resource == 4 * 55_000 and built._min_resource == 55_000 // REPORTS_PER_EPOCH


def test_halving_ranks_an_annealed_trial_only_against_trials_at_the_same_point_of_its_schedule(tmp_path):
    """The measured failure (study of 4c73b2a): a one-cycle trial, still warming up in its first
    epoch, scored below the constant-rate trials there and was pruned before its rate decayed."""
    from mnist_lab.sweep.pruning import RUN_ATTR, SCHEDULE_ATTR, ScheduleAwareHalving

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    epoch = 55_000
    rung = epoch // REPORTS_PER_EPOCH
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    study = optuna.create_study(storage=storage, direction="maximize", pruner=ScheduleAwareHalving(min_resource=rung, reduction_factor=3))

    def run(schedule: str, epochs: int, curve: list[float]) -> bool:
        """Reports `curve` an eighth of an epoch apart; True if the pruner stopped it there."""
        trial = study.ask()
        trial.set_user_attr(SCHEDULE_ATTR, schedule)
        trial.set_user_attr(RUN_ATTR, epochs * epoch)
        for i, v in enumerate(curve, start=1):
            trial.report(v, i * rung)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return True
        study.tell(trial, curve[-1])
        return False

    # The measured curves: trial 25 (batch 32, constant rate) and the trial later crowned,
    # trial 7 (batch 128, one-cycle over 3 epochs, still warming up here).
    constant_curve = [0.962, 0.971, 0.977, 0.984, 0.981, 0.991, 0.984, 0.987, 0.985]
    one_cycle_curve = [0.955, 0.947, 0.956, 0.965, 0.947, 0.977, 0.962, 0.973, 0.981]
    for epochs in (2, 3, 4, 2, 3, 4):  # constant rate: ranked together at equal images, whatever their epochs
        assert not run("constant", epochs, constant_curve)
    assert run("constant", 5, [v - 0.01 for v in constant_curve])
    # The one-cycle trial, below them at every rung, is not pruned while it has no rival...
    assert not run("one_cycle", 3, one_cycle_curve)
    # ...nor is a worse one while fewer than 3 of their schedule are at a rung (only the floor then)...
    worse = [v - 0.002 for v in one_cycle_curve]
    assert not run("one_cycle", 3, worse)
    # ...and from the third on they are ranked: one better is kept, one worse than both is pruned.
    better = [v + 0.002 for v in one_cycle_curve]
    assert not run("one_cycle", 3, better)
    assert run("one_cycle", 3, [v - 0.003 for v in one_cycle_curve])
    # A one-cycle run over 6 epochs is at the same point of its schedule after twice the images of
    # a 3-epoch one. Slower, it is not pruned for it: the best 3-epoch curve stretched twofold (a
    # hair better) is kept, though at equal images (3/8 of an epoch: 0.953 against 0.958) it would
    # be behind; at its first rung it has no rival (the 3-epoch runs had not reported that early).
    stretched = np.interp(np.arange(1, 10) / 2, np.arange(1, 10), better) + 1e-4
    assert not run("one_cycle", 6, list(stretched))
    # A diverged trial without a rival still stops at once: its error is over twice the median error.
    assert run("cosine", 2, [0.11])
    # Optuna's own pruner, ranking everything together, stops the crowned trial at the first rung.
    study = optuna.create_study(storage=storage, direction="maximize", pruner=optuna.pruners.SuccessiveHalvingPruner(rung, 3))
    for _ in range(6):
        assert not run("constant", 3, constant_curve)
    assert run("one_cycle", 3, one_cycle_curve)
    assert len(study.trials[-1].intermediate_values) == 1


def test_keras_tuner_hyperband_continues_promoted_trials_instead_of_retraining(store, tmp_path):
    space = tmp_path / "kt_hyperband.yaml"
    space.write_text(f"base: {REPO / 'experiments' / 'baseline.yaml'}\n"
                     "fixed: {data.train_size: 300, data.validation_size: 100, model.conv_blocks.0.filters: 8,"
                     " model.conv_blocks.1.filters: 16}\n"
                     "pruner: hyperband\nconfirm: {top: 1, seeds: 2}\n"
                     "params: {model.dense.0: {choices: [16, 32]}, train.epochs: {low: 1, high: 3}}\n")
    assert main(["sweep", str(space), "--engine", "keras-tuner"]) == 0
    client = MlflowClient()
    runs = runs_of("kt_hyperband-keras-tuner")
    resumed = [r for r in runs if "resumed_from_trial" in r.data.tags]
    assert resumed, "Hyperband promoted no trial"  # 3 brackets of max_epochs 3: the 1-epoch one promotes
    for run in resumed:
        start = int(run.data.params["initial_epoch"])
        assert start >= 1 and int(run.data.params["train.epochs"]) > start
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch_seconds")]
        assert steps == list(range(start + 1, int(run.data.params["train.epochs"]) + 1))  # only the new epochs trained
        source = [r for r in runs if r.data.tags["trial_number"] == run.data.tags["resumed_from_trial"]]
        assert len(source) == 1 and source[0].data.params["model.dense"] == run.data.params["model.dense"]


def test_the_same_seeded_study_twice_gives_the_same_record(tmp_path, mnist_dir):
    """A seeded study is reproducible on one machine, digit for digit: every trial's parameters,
    state and value, the confirmation's seed scores, the verdict and the test accuracy
    (benchmarks/study_record.py; a refactor of the sweep is checked with the same script)."""
    records = []
    for i in (1, 2):
        out = tmp_path / f"record-{i}.json"
        subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(REPO / "benchmarks" / "study_record.py"), "--out", str(out),
                        "--", "--n-trials", "2", "data.train_size=500", "data.validation_size=200"],
                       check=True, capture_output=True, timeout=300)
        records.append(json.loads(out.read_text()))
    assert records[0] == records[1]
    assert len(records[0]["trials"]) == 2 and records[0]["confirmation_seeds"]
    # smoke.yaml's minute-long models (50-60%) are under the floor: nothing crowned, the test set untouched
    assert records[0]["verdict"].startswith("no confirmed improvement") and records[0]["test_accuracy"] == []
    assert {label for label, _, _ in records[0]["confirmation_seeds"]} >= {"baseline"}  # confirmed from its config


def test_diverging_trials_crown_nothing_and_spend_no_test_evaluation(store, tmp_path, capsys):
    """Every trial diverges (learning rates 10-100) in a space that does not contain the baseline,
    on a store with no champion: the baseline is confirmed from its config beside the best trial,
    nothing is crowned, and the test set is not spent on a failed-looking model."""
    space = tmp_path / "diverging.yaml"
    space.write_text(f"base: {REPO / 'experiments' / 'baseline.yaml'}\n"
                     "fixed: {data.train_size: 500, data.validation_size: 200, train.epochs: 1, model.dense: [32]}\n"
                     "sampler: random\npruner: none\nbudget: {n_trials: 2, max_consecutive_failures: 3}\n"
                     "confirm: {top: 1, seeds: 2}\nparams: {train.learning_rate: {low: 10.0, high: 100.0, log: true}}\n")
    assert main(["sweep", str(space)]) == 0
    out = capsys.readouterr()
    client = MlflowClient()
    assert not client.search_registered_models()
    every = client.search_runs([tracking.setup()], "", max_results=1000)
    assert not [r for r in every if "test_accuracy" in r.data.metrics]
    parent = runs_of("diverging-optuna", "study")[0]
    complete = [r for r in runs_of("diverging-optuna") if r.data.tags["state"] == "COMPLETE"]
    if complete:  # a diverged run that still ended with finite losses (chance level): judged, and refused
        assert parent.data.tags["confirmation"].startswith("no confirmed improvement"), parent.data.tags["confirmation"]
        assert "mnist-cnn@champion stays as it is" in out.out
        baseline = [r for r in runs_of("diverging-optuna", "confirm") if r.data.tags["source_label"] == "baseline"]
        assert sorted(r.data.tags["seed"] for r in baseline) == ["0", "1"]  # confirmed from its config, beside the best
    else:  # every trial's loss became NaN: failures, recorded with their reason
        assert all("loss became" in r.data.tags.get("failure_reason", "") for r in runs_of("diverging-optuna"))


@pytest.mark.slow  # about a minute: a sweep that runs until its time budget; `make test-all` runs it
def test_a_sweep_stops_at_its_time_budget_and_says_so(store):
    """No trial starts unless it and the confirmation fit in budget.timeout; the sweep then confirms,
    and says the time budget stopped it (not the trial budget, which is far away)."""
    timeout = 40
    out = subprocess.run(sweep_cmd("--n-trials", "1000", "--timeout", str(timeout), "data.train_size=500", "data.validation_size=200"),
                         env=os.environ | {"CI": "true"}, capture_output=True, text=True, timeout=600)
    said = out.stdout + out.stderr
    assert out.returncode == 0 and "Traceback" not in out.stderr, said[-3000:]
    study = load(f"sqlite:///{store / 'mlruns' / 'optuna.db'}", "smoke-optuna")
    done = finished(study)
    assert 1 <= len(done) < 1000
    assert f"stopped: the study's time budget ({timeout} s) has room only for the confirmation, after {len(done)} finished trials" in said
    # Every trial started inside the budget, counted from the study's run (the sweep's start).
    [parent] = runs_of("smoke-optuna", "study")
    began = parent.info.start_time / 1000
    assert all(t.datetime_start.timestamp() < began + timeout for t in study.trials), [t.datetime_start for t in study.trials]
    assert runs_of("smoke-optuna", "confirm")  # and it went on to its confirmation


def test_another_sampler_seed_draws_other_trials_in_a_study_of_its_own_and_a_study_keeps_its_seed(store, capsys):
    from mnist_lab.sweep.optuna_study import make_sampler

    def first_draws(seed, worker=0, trials_so_far=0):
        study = optuna.create_study(sampler=make_sampler(load_space(SMOKE, seed=seed), worker, trials_so_far))
        return tuple(study.ask().suggest_float("x", 0, 1) for _ in range(3))

    assert first_draws(0) == first_draws(0) and first_draws(1) != first_draws(0)
    # Every (seed, worker, resume point) draws its own trials: no worker of one seed replays another
    # seed's worker (seed + worker did: seed 0's worker 1 drew what seed 1's worker 0 drew).
    streams = [first_draws(seed, worker, after) for seed in range(3) for worker in range(4) for after in (0, 1, 1000)]
    assert len(set(streams)) == len(streams)
    # `--seed 1` (the file says 0) is a study of its own, smoke-optuna-seed1; `--seed 0` is the file's
    # own study. A study is continued only with the seed it started with: here both were started (by
    # hand) with seed 5, so both commands are refused, before any trial, in one line naming the study.
    storage = f"sqlite:///{store / 'mlruns' / 'optuna.db'}"
    for name in ("smoke-optuna-seed1", "smoke-optuna"):
        optuna.create_study(study_name=name, storage=storage, direction="maximize").set_user_attr("sampler_seed", 5)
    for seed, name in (("1", "smoke-optuna-seed1"), ("0", "smoke-optuna")):
        assert main(["sweep", SMOKE, "--seed", seed]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"mnist-lab sweep: error: study '{name}' was started with sampler seed 5, and this command asks for "
                       f"{seed}; resume it with --seed 5, or pick another --study name"), err
        assert not load(storage, name).trials


def test_a_keras_tuner_study_out_of_time_before_its_first_trial_trains_nothing(store, capsys):
    # KerasTuner reads a max_trials of 0 as no cap at all: the engine's stop must say -1 then. The study
    # has already run 50 s (its spans, as a killed first invocation leaves them) of a 10 s budget.
    project = store / "mlruns" / "keras_tuner" / "smoke-keras-tuner"
    project.mkdir(parents=True)
    now = time.time()
    (project / "time_spans.json").write_text(json.dumps({"time_span host:1:1": [now - 100, now - 50]}))
    assert main(["sweep", SMOKE, "--engine", "keras-tuner", "--timeout", "10"]) == 0
    out = capsys.readouterr().out
    assert "stopped: the study's time budget (10 s) has room only for the confirmation, after 0 complete trials" in out
    assert not runs_of("smoke-keras-tuner")


def test_keras_tuner_stops_when_plateau_trials_completed_after_the_best_without_beating_it():
    import keras_tuner as kt

    from mnist_lab.sweep.keras_tuner_engine import plateaued

    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("val_accuracy", "max"), max_trials=10)

    def add(trial_id, status, score=None):
        oracle.trials[trial_id] = kt.engine.trial.Trial(kt.HyperParameters(), trial_id=trial_id, status=status)
        oracle.trials[trial_id].score = score

    assert plateaued(oracle, 1) is None  # nothing complete yet
    add("03", "COMPLETED", 0.95)  # a resume loads trials in any order
    add("00", "COMPLETED", 0.90)
    add("01", "COMPLETED", 0.95)  # the best: tied with 03, and earlier
    add("02", "FAILED")
    add("04", "RUNNING")
    assert plateaued(oracle, None) is None and plateaued(oracle, 2) is None  # failed and running ones do not count
    assert plateaued(oracle, 1) == 1
    add("05", "COMPLETED", 0.94)
    assert plateaued(oracle, 2) == 1


def test_tpe_models_after_five_random_trials_and_fewer_in_a_short_study():
    """The default study finishes 20-29 trials in its 27 minutes: with Optuna's ten random start-up trials every
    champion of section j at 8b7cb41 was a random draw. A study capped at 6 trials draws 2 at random."""
    from mnist_lab.sweep.optuna_study import make_sampler

    assert make_sampler(load_space(REPO / "experiments" / "sweep.yaml"))._n_startup_trials == 5
    assert make_sampler(load_space(REPO / "experiments" / "sweep.yaml", n_trials=6))._n_startup_trials == 2
