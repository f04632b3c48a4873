"""The confirmation gate: a configuration is crowned only when it beats every incumbent over seeds."""

import pytest

from mnist_lab.config import Config
from mnist_lab.champion import Contender, judge
from mnist_lab.stats import ALPHA, welch_greater

SPLIT = ("sha256:abc", "5000", "0")


def contender(label, scores, split=SPLIT):
    return Contender(label, 1, f"run-{label}", Config(), split, dict(enumerate(scores)))


def test_welch_one_sided():
    assert welch_greater([0.995, 0.994, 0.996], [0.990, 0.991, 0.989]) < 0.01
    assert welch_greater([0.990, 0.991, 0.989], [0.995, 0.994, 0.996]) > 0.99  # the other way round
    assert 0.2 < welch_greater([0.991, 0.993, 0.989], [0.990, 0.992, 0.990]) < 0.8  # overlapping: noise
    assert welch_greater([0.99, 0.99], [0.98, 0.98]) == 0.0 and welch_greater([0.99, 0.99], [0.99, 0.99]) == 1.0
    with pytest.raises(ValueError, match="^Welch's t-test needs at least two seeds on each side$"):
        welch_greater([0.99], [0.98, 0.97])
    with pytest.raises(ValueError):
        welch_greater([0.99, 0.98], [0.98])


def test_welch_with_one_constant_side_is_scipy_s_test_and_the_two_sided_one_too():
    """Only both sides constant is a special case: one constant side still has a t-statistic."""
    import numpy as np
    from scipy import stats as scipy_stats

    from mnist_lab.stats import mean_ci, welch_two_sided

    a, b = [0.99, 0.99, 0.99], [0.97, 0.975, 0.965]
    assert welch_greater(a, b) == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
    assert 0 < welch_greater(a, b) < 0.05
    t, p = welch_two_sided(np.array(b), np.array(a))
    expected = scipy_stats.ttest_ind(b, a, equal_var=False)
    assert (t, p) == pytest.approx((expected.statistic, expected.pvalue)) and t < 0
    # a seed mean's 95% interval: the t-interval, by SciPy's own interval function
    x = np.array([0.990, 0.994, 0.992, 0.996])
    low, high = scipy_stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=scipy_stats.sem(x))
    assert mean_ci(x) == pytest.approx((x.mean(), (high - low) / 2))
    pair = np.array([0.990, 0.994])
    assert mean_ci(pair) == pytest.approx((0.992, scipy_stats.t.ppf(0.975, 1) * pair.std(ddof=1) / np.sqrt(2)))
    assert welch_greater([0.99] * 3, [0.98] * 3) == 0.0 and welch_greater([0.98] * 3, [0.98] * 3) == 1.0
    mean, half = mean_ci(np.array([0.99]))
    assert mean == 0.99 and np.isnan(half)
    mean, half = mean_ci(np.array([]))
    assert np.isnan(mean) and np.isnan(half)


def test_a_clear_winner_is_crowned():
    best = contender("trial 7", [0.9945, 0.9941, 0.9948])
    promoted, reason, p = judge(best, [contender("baseline", [0.9900, 0.9896, 0.9905])])
    assert promoted and p["baseline"] < ALPHA
    assert reason == f"trial 7 beats baseline (0.9945 over 3 seeds; baseline: p = {p['baseline']:.3g})"


def test_a_configuration_that_is_not_better_is_not_crowned():
    # The sweep's best by one lucky seed: its mean is no better than the baseline's.
    best = contender("trial 2", [0.9910, 0.9894, 0.9902])
    promoted, reason, p = judge(best, [contender("baseline", [0.9900, 0.9914, 0.9904])])
    assert not promoted and p["baseline"] >= ALPHA
    assert reason.startswith("no confirmed improvement") and "baseline" in reason


def test_it_must_beat_the_current_champion_too():
    best = contender("trial 7", [0.9945, 0.9941, 0.9948])
    incumbents = [contender("baseline", [0.9900, 0.9896, 0.9905]), contender("current champion (version 2)", [0.9946, 0.9940, 0.9950])]
    promoted, reason, p = judge(best, incumbents)
    assert not promoted and p["baseline"] < ALPHA <= p["current champion (version 2)"]
    assert reason == ("no confirmed improvement: trial 7 (0.9945) does not beat current champion (version 2) with p < 0.05 "
                      f"(baseline: p = {p['baseline']:.3g}, current champion (version 2): p = {p['current champion (version 2)']:.3g})")
    # Beating both: both are named.
    promoted, reason, p = judge(contender("trial 8", [0.9990, 0.9991, 0.9992]), incumbents)
    assert promoted and reason.startswith("trial 8 beats baseline and current champion (version 2) (0.9991 over 3 seeds; baseline: p = ")
    # Beaten by both: both are named.
    promoted, reason, p = judge(contender("trial 9", [0.9800, 0.9801, 0.9802]), incumbents)
    assert not promoted and "does not beat baseline and current champion (version 2) with p" in reason


def test_runs_on_other_validation_images_are_not_compared():
    best = contender("trial 7", [0.9945, 0.9941, 0.9948])
    other = contender("current champion (version 1)", [0.90, 0.91, 0.90], split=("sha256:abc", "0.3", "0"))
    promoted, reason, p = judge(best, [other])
    assert not promoted and not p
    assert reason == ("no confirmed improvement: current champion (version 1) was scored on other validation images (data "
                      "digest, validation_size, data.seed ('sha256:abc', '0.3', '0') against ('sha256:abc', '5000', '0')); "
                      "retrain it on this split, or remove its alias, to crown anew")


def test_one_seed_is_not_evidence():
    promoted, reason, _ = judge(contender("trial 7", [0.999]), [contender("baseline", [0.98, 0.981])])
    assert not promoted and reason == ("no confirmed improvement: trial 7 has 1 and baseline 2 seeds; confirmation needs at "
                                       "least 2 each (the time budget ran out)")
    promoted, reason, _ = judge(contender("trial 7", [0.999, 0.998]), [contender("baseline", [0.98])])
    assert not promoted and "trial 7 has 2 and baseline 1 seeds" in reason
    # Two each is enough.
    promoted, _, p = judge(contender("trial 7", [0.999, 0.998]), [contender("baseline", [0.980, 0.981])])
    assert promoted and p["baseline"] < ALPHA


def test_the_search_stops_when_the_next_trial_and_the_confirmation_no_longer_fit(tmp_path):
    # A real Optuna study with finished trials of known durations: the baseline took 120 s, the two
    # best trials 60 and 30 s, a pruned one 10 s. Confirming to 3 seeds then costs 2 x (60 + 30 + 120).
    import datetime
    import time

    import optuna

    from mnist_lab.sweep.budget import confirmation_seconds, search_time_left
    from mnist_lab.sweep.space import load_space

    space_file = tmp_path / "s.yaml"
    space_file.write_text("params: {train.epochs: {low: 1, high: 3}}\nconfirm: {top: 2, seeds: 3, reserve: 0.05}\n"
                          "budget: {n_trials: 10, timeout: 1000}\n")
    space = load_space(space_file)
    study = optuna.create_study(direction="maximize")
    now = datetime.datetime.now()
    for value, seconds, state, attrs in ((0.990, 120, "COMPLETE", {"baseline": True}), (0.995, 60, "COMPLETE", {}),
                                         (0.993, 30, "COMPLETE", {}), (0.980, 40, "COMPLETE", {}), (None, 10, "PRUNED", {})):
        study.add_trial(optuna.trial.FrozenTrial(
            number=0, trial_id=0, state=optuna.trial.TrialState[state], value=value, values=None,
            datetime_start=now - datetime.timedelta(seconds=seconds), datetime_complete=now,
            params={"train.epochs": 2}, distributions={"train.epochs": optuna.distributions.IntDistribution(1, 3)},
            user_attrs=attrs, system_attrs={}, intermediate_values={}))
    assert confirmation_seconds(study, space) == pytest.approx(2 * (60 + 30 + 120), abs=1)
    # the next trial is assumed as long as the 75th percentile of finished ones (60 s here)
    assert search_time_left(study, space, end=time.time() + 420 + 60 + 30)
    assert not search_time_left(study, space, end=time.time() + 420 + 60 - 30)
    assert search_time_left(study, space, end=None)


def test_the_report_judges_a_trial_against_an_incumbent_by_the_sweeps_gate():
    import numpy as np

    from mnist_lab.report.seeds import compare_seeds

    from scipy import stats

    # The seeds of `make sweep` at 4c73b2a. The p-values are SciPy's Welch tests, computed here, not the lab's.
    trial, baseline = [0.9928, 0.9938, 0.9926], [0.9914, 0.9914, 0.9894]
    one_sided = stats.ttest_ind(trial, baseline, equal_var=False, alternative="greater").pvalue
    two_sided = stats.ttest_ind(trial, baseline, equal_var=False).pvalue
    assert one_sided < ALPHA < two_sided  # the case where the choice of test decides the verdict
    promoted, _, p = judge(contender("trial 7", trial), [contender("baseline", baseline)])
    row, verdict = compare_seeds("trial 7", np.array(trial), "baseline", np.array(baseline))
    assert promoted and p["baseline"] == pytest.approx(one_sided, rel=1e-9)
    assert verdict.startswith("trial 7 beats baseline") and f"one-sided p = {one_sided:.3g}" in verdict
    assert float(row["p (one-sided, the sweep's gate)"]) == pytest.approx(one_sided, rel=1e-2)
    assert float(row["p (two-sided)"]) == pytest.approx(two_sided, rel=1e-2)  # alone, it would have said "tied"
    # either order of the pair, the same verdict; a worse trial is not said to beat anything
    assert compare_seeds("baseline", np.array(baseline), "trial 7", np.array(trial))[1] == verdict
    assert compare_seeds("trial 2", np.array(baseline), "current champion (version 1)", np.array(trial))[1].startswith(
        "trial 2 does not beat current champion (version 1)")
    # two trials: no side was chosen beforehand, so the two-sided test
    other = [0.9918, 0.9936, 0.9930]
    tied = compare_seeds("trial 7", np.array(trial), "trial 18", np.array(other))[1]
    expected = stats.ttest_ind(trial, other, equal_var=False).pvalue
    assert tied.startswith(f"trial 7 and trial 18 are tied within noise (two-sided p = {expected:.2f}")


def test_nothing_is_crowned_under_the_floor_or_without_an_incumbent():
    # Every trial diverged (val 0.10-0.11): the best beats the baseline, which diverged too, but
    # nothing that scores so is a champion.
    low = contender("trial 3", [0.1100, 0.1090, 0.1105])
    promoted, reason, _ = judge(low, [contender("baseline", [0.0980, 0.0990, 0.0985])], floor=0.9)
    assert not promoted and "under the floor confirm.min_val_accuracy = 0.9" in reason
    # A good trial with nothing to compare it with (no baseline confirmed, no champion) is not crowned either.
    promoted, reason, p = judge(contender("trial 3", [0.9930, 0.9940, 0.9935]), [], floor=0.9)
    assert not promoted and p == {} and reason == (
        "no confirmed improvement: trial 3 was compared with nothing (no baseline, no champion on these validation images); "
        "a champion must beat one")
    # Over the floor and beating the baseline: crowned.
    promoted, _, p = judge(contender("trial 3", [0.9930, 0.9940, 0.9935]), [contender("baseline", [0.9900, 0.9896, 0.9905])],
                           floor=0.9)
    assert promoted and p["baseline"] < 0.05
    # A mean exactly at the floor is not under it.
    promoted, _, _ = judge(contender("trial 3", [0.9930, 0.9940, 0.9935]), [contender("baseline", [0.9900, 0.9896, 0.9905])],
                           floor=contender("trial 3", [0.9930, 0.9940, 0.9935]).mean)
    assert promoted


def test_a_score_counts_as_a_seed_only_where_it_was_made_in_this_precision_and_cpu(store):
    """The champion gate compares like with like: a run trained in another precision or on another CPU
    (a champion crowned on another machine) is no seed here; its configuration is retrained here."""
    from mlflow import MlflowClient

    from mnist_lab import tracking
    from mnist_lab.champion import add_confirmation_runs, contender, made_here
    from mnist_lab.config import load_config
    from mnist_lab.train import train

    experiment_id = tracking.setup()
    client = MlflowClient()
    result = train(load_config(None, ["data.train_size=500", "data.validation_size=200", "train.epochs=1",
                                      "model.conv_blocks=[{filters: 4}]", "model.dense=[16]"]), log_model=False)
    run = client.get_run(result.run_id)
    here = contender(run, "trial 1", 1)
    assert made_here(run, here.config) and here.scores == {0: run.data.metrics["val_accuracy"]}
    client.set_tag(result.run_id, "cpu_model", "another CPU")
    elsewhere = contender(client.get_run(result.run_id), "current champion (version 1)", 2)
    assert elsewhere.scores == {}  # retrained from seed 0 here before it is compared
    add_confirmation_runs(client, experiment_id, [elsewhere])
    assert elsewhere.scores == {}


def test_a_tracking_uri_with_credentials_is_masked_wherever_the_lab_writes_it(monkeypatch):
    """A tracking server's password (user:password@host, or ?token=) is masked in the resume line, the
    command tag, the UI address and the run links; the rest of the address is kept as it is."""
    import sys

    from mnist_lab import tracking

    uri = "http://alice:s3cr3t-pw@mlflow.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(sys, "argv", ["mnist-lab", "sweep", "experiments/sweep.yaml", "--storage",
                                      "postgresql://lab:pg-pw@db/optuna?sslmode=require&password=also-secret"])
    said = [tracking.resume_command(), tracking.command_line(), tracking.ui_url(), tracking.run_link("1", "abc"),
            tracking.runs_link("1", "sweep")]
    assert not [s for s in said if "s3cr3t-pw" in s or "pg-pw" in s or "also-secret" in s], said
    assert said[0] == ("MLFLOW_TRACKING_URI=http://alice:***@mlflow.example:5000 mnist-lab sweep experiments/sweep.yaml "
                       "--storage postgresql://lab:***@db/optuna?sslmode=require&password=***")
    assert said[2] == "http://alice:***@mlflow.example:5000"


def test_a_bug_s_traceback_masks_a_store_s_password(monkeypatch, capsys):
    """An error nobody foresaw still shows its traceback (it is a bug to report), but MLflow writes
    the server's URL, password included, into its errors: the CLI masks it."""
    from mnist_lab import cli

    def buggy(args):
        raise RuntimeError("API request to http://alice:s3cr3t-pw@127.0.0.1:5055/api/2.0/mlflow/runs/set-tag failed")

    monkeypatch.setattr(cli, "cmd_confirm", buggy)
    assert cli.main(["confirm", "--study", "x"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "http://alice:***@127.0.0.1:5055" in err
    assert "s3cr3t-pw" not in err


def test_no_seeds_have_no_mean_and_numpy_is_not_asked_for_one():
    """An empty sample's mean is NaN without NumPy's "Mean of empty slice" warning on the report's stderr."""
    import warnings

    import numpy as np

    from mnist_lab.stats import mean_ci

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, half = mean_ci(np.array([]))
    assert np.isnan(mean) and np.isnan(half)
