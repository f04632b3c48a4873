"""mnist_lab/report/fits.py on its own: every number of a run's fit checks, the fit table and the
gap correlations, on curves made by hand (the report's verdicts are tested in tests/test_report.py)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mnist_lab.report import fits, runs
from mnist_lab.sweep.space import Space


def history(val_accuracy, val_loss, accuracy, loss, epochs=None):
    return pd.DataFrame({"epoch": epochs or list(range(1, len(val_accuracy) + 1)), "val_accuracy": val_accuracy,
                         "val_loss": val_loss, "accuracy": accuracy, "loss": loss})


def test_every_number_of_a_run_s_fit_checks():
    # Rows out of order and one epoch without validation (a run cut mid-epoch): sorted, then dropped.
    h = history([0.84, 0.7, 0.85, 0.8, float("nan"), 0.84], [0.55, 0.9, 0.5, 0.6, 0.7, 0.6],
                [0.96, 0.90, 0.94, 0.92, 0.97, 0.98], [0.25, 0.40, 0.30, 0.35, 0.22, 0.20], epochs=[4, 1, 3, 2, 6, 5])
    out = fits.fit_checks(h)
    assert out == pytest.approx({"best_epoch": 3, "gap_best": 0.94 - 0.85, "gap_last": 0.98 - 0.84,
                                 "loss_gap_best": 0.5 - 0.30, "loss_gap_last": 0.6 - 0.20, "min_val_loss_epoch": 3,
                                 "overfit_from": 4, "verdict": "overfitting from epoch 4"})
    assert fits.fit_checks(h.iloc[:0]) == {"verdict": "no epochs"}
    assert fits.fit_checks(h.assign(val_accuracy=math.nan)) == {"verdict": "no epochs"}


def test_rising_validation_loss_counts_only_while_training_loss_falls():
    # Validation loss rises twice after its minimum, but training loss rises too: no overfitting by loss.
    both_rise = history([0.80, 0.85, 0.84, 0.83], [0.6, 0.5, 0.55, 0.6], [0.90, 0.92, 0.91, 0.90], [0.4, 0.3, 0.35, 0.4])
    assert fits.fit_checks(both_rise)["overfit_from"] is None
    # Validation loss flat (not rising) after its minimum: no overfitting either.
    flat = history([0.80, 0.85, 0.84, 0.84], [0.6, 0.5, 0.5, 0.5], [0.90, 0.92, 0.93, 0.94], [0.4, 0.3, 0.2, 0.1])
    assert fits.fit_checks(flat)["overfit_from"] is None
    # Once rising before the minimum, once after: not two epochs of it.
    once = history([0.7, 0.75, 0.8, 0.85, 0.84], [0.6, 0.65, 0.55, 0.5, 0.55], [0.9, 0.91, 0.92, 0.93, 0.94],
                   [0.4, 0.35, 0.3, 0.25, 0.2])
    assert fits.fit_checks(once)["overfit_from"] is None
    # Rising twice after the minimum, but back down at the end (the second rise compares with the epoch before it).
    back = history([0.7, 0.85, 0.84, 0.83, 0.84], [0.6, 0.5, 0.52, 0.51, 0.49], [0.9, 0.91, 0.92, 0.93, 0.94],
                   [0.4, 0.35, 0.3, 0.25, 0.2])
    assert fits.fit_checks(back)["overfit_from"] is None
    # Validation accuracy below its best for two epochs while training accuracy only rose: overfitting from
    # the epoch after the best, if validation loss ended above its minimum.
    by_accuracy = history([0.80, 0.85, 0.84, 0.83], [0.6, 0.5, 0.49, 0.52], [0.90, 0.92, 0.93, 0.94], [0.4, 0.3, 0.2, 0.1])
    assert fits.fit_checks(by_accuracy)["overfit_from"] == 3
    # ... not if training accuracy stalled once.
    assert fits.fit_checks(by_accuracy.assign(accuracy=[0.90, 0.92, 0.92, 0.94]))["overfit_from"] is None


def test_still_improving_needs_the_best_epoch_last_and_training_still_rising():
    rising = history([0.95, 0.96, 0.97], [0.2, 0.15, 0.1], [0.90, 0.95, 0.96], [0.4, 0.3, 0.2])
    assert fits.fit_checks(rising)["verdict"] == "still improving: more epochs may help"
    # best last, but training accuracy rose by 0.004 only
    assert fits.fit_checks(rising.assign(accuracy=[0.90, 0.995, 0.999]))["verdict"] == "good fit"
    # training rising fast, but the best epoch is not the last
    late = history([0.95, 0.97, 0.96], [0.2, 0.1, 0.1], [0.90, 0.95, 0.98], [0.4, 0.3, 0.2])
    assert fits.fit_checks(late)["verdict"] == "good fit"
    # a long run whose third-to-last epoch is far below: only the last step counts
    long = history([0.9, 0.95, 0.96, 0.97], [0.3, 0.2, 0.15, 0.1], [0.5, 0.99, 0.992, 0.995], [0.4, 0.3, 0.2, 0.1])
    assert fits.fit_checks(long)["verdict"] == "good fit"


def study_of(runs_table, hist, params=("model.dropout", "train.batch_size", "model.batch_norm")):
    space = Space.model_validate({"params": {p: {"choices": [0, 1]} for p in params}})
    return runs.Study(name="s", parent=None, space=space, objective="val_accuracy", maximize=True, history=hist, runs=runs_table)


def test_the_fit_table_has_a_row_per_run_in_trial_order_verdict_first():
    h = history([0.8, 0.85, 0.86], [0.5, 0.4, 0.35], [0.85, 0.9, 0.95], [0.4, 0.3, 0.2])
    hist = pd.concat([h.assign(run_id="b"), h.head(1).assign(run_id="a")], ignore_index=True)
    study = study_of(pd.DataFrame({"run_id": ["a", "b"], "trial": [2, 1], "state": ["PRUNED", "COMPLETE"]}), hist)
    table = fits.fit_table(study)
    assert table.run_id.tolist() == ["b", "a"] and table.trial.tolist() == [1, 2]
    assert table.columns.tolist()[:4] == ["run_id", "trial", "state", "verdict"]
    assert table.verdict.tolist() == ["still improving: more epochs may help", "too short to tell"]
    assert fits.judged(table).run_id.tolist() == ["b"]
    assert fits.fit_table(study_of(study.runs, hist.iloc[:0])).empty
    assert fits.judged(pd.DataFrame({"run_id": ["x"]})).empty


def test_gap_correlations_are_spearman_s_over_judged_runs_rounded_and_sorted_by_p():
    rng = np.random.default_rng(0)
    n = 8
    dropout = np.linspace(0, 0.5, n)
    batch = rng.permutation([32, 64, 128, 256] * 2).astype(float)
    rows, hists = [], []
    for i in range(n):
        gap = 0.01 + 0.02 * dropout[i] + 0.001 * rng.random()
        hists.append(history([0.95, 0.96, 0.97 - gap], [0.2, 0.1, 0.05], [0.95, 0.97, 0.97], [0.3, 0.2, 0.1]).assign(run_id=f"r{i}"))
        rows.append({"run_id": f"r{i}", "trial": i, "state": "COMPLETE", "params.model.dropout": dropout[i],
                     "params.train.batch_size": str(int(batch[i])), "params.model.batch_norm": str(i % 3 == 0)})
    table_runs = pd.DataFrame(rows)
    study = study_of(table_runs, pd.concat(hists, ignore_index=True))
    table = fits.gap_correlations(study, fits.fit_table(study))
    gaps = fits.fit_table(study).gap_last.to_numpy()
    expected = []
    # batch norm, logged by MLflow as "True"/"False", is ranked as 1/0
    for key, x in (("model.dropout", dropout), ("train.batch_size", batch), ("model.batch_norm", [float(i % 3 == 0) for i in range(n)])):
        rho, p = stats.spearmanr(x, gaps)
        expected.append({"hyperparameter": key, "Spearman rho with the gap": round(rho, 2), "p": round(p, 3), "runs": n})
    expected.sort(key=lambda r: r["p"])
    assert table.to_dict("records") == expected
    assert table["p"].is_monotonic_increasing and table.hyperparameter.iloc[0] == "model.dropout"
    # Three judged runs are too few to correlate; no judged runs, no table.
    few = study_of(table_runs.head(3), pd.concat(hists[:3], ignore_index=True))
    assert fits.gap_correlations(few, fits.fit_table(few)).empty
    assert fits.gap_correlations(study, fits.fit_table(study).assign(verdict="too short to tell")).empty


def test_overfitting_by_validation_loss_alone_while_validation_accuracy_still_rises():
    # Validation accuracy at its best in the last epoch, so only the loss rule can speak: after its
    # minimum, validation loss rose in 2+ epochs in which training loss fell, and ended above the minimum.
    def overfit_from(val_loss, loss):
        n = len(val_loss)
        h = history([0.80 + 0.01 * e for e in range(n)], val_loss, [0.85 + 0.02 * e for e in range(n)], loss)
        return fits.fit_checks(h)["overfit_from"]

    falling = [0.5, 0.4, 0.3, 0.2, 0.1]
    assert overfit_from([0.6, 0.5, 0.4, 0.45, 0.5], falling) == 4  # minimum in epoch 3, rising in epochs 4 and 5
    assert overfit_from([0.6, 0.4, 0.45, 0.5], falling[:4]) == 3  # minimum in epoch 2
    assert overfit_from([0.6, 0.4, 0.45, 0.5, 0.4], falling) is None  # back down to its minimum: not above it
    assert overfit_from([0.6, 0.5, 0.55, 0.45, 0.5], falling) is None  # one rise just before the minimum, one after
    assert overfit_from([0.6, 0.5, 0.5, 0.55], falling[:4]) is None  # flat is not rising: one rise
    assert overfit_from([0.6, 0.5, 0.4, 0.45, 0.5], [0.5, 0.4, 0.3, 0.3, 0.2]) is None  # training loss flat in one rise
    # Training loss up in epoch 5 (though below epoch 3's): each epoch is compared with the one before.
    assert overfit_from([0.6, 0.5, 0.4, 0.45, 0.5], [0.5, 0.4, 0.3, 0.2, 0.25]) is None


def test_gap_correlations_need_four_runs_with_a_value_and_two_values():
    # Five judged runs. Searched: a key no run recorded, dropout (one run without it: four left),
    # batch size (two values), learning rate (one value: nothing to correlate).
    gaps = [0.010, 0.014, 0.012, 0.020, 0.016]
    dropout = ["0.1", "0.3", "0.2", None, "0.4"]
    batch = ["64", "128", "64", "128", "128"]
    hists = [history([0.95, 0.96, 0.97 - g], [0.2, 0.1, 0.05], [0.95, 0.97, 0.97], [0.3, 0.2, 0.1]).assign(run_id=f"r{i}")
             for i, g in enumerate(gaps)]
    table_runs = pd.DataFrame({"run_id": [f"r{i}" for i in range(5)], "trial": range(5), "state": "COMPLETE",
                               "params.model.dropout": dropout, "params.train.batch_size": batch, "params.train.learning_rate": "0.001"})
    study = study_of(table_runs, pd.concat(hists, ignore_index=True),
                     params=("model.dense.1", "model.dropout", "train.batch_size", "train.learning_rate"))
    table = fits.gap_correlations(study, fits.fit_table(study))
    last_gaps = [0.97 - (0.97 - g) for g in gaps]  # training minus validation accuracy in the last epoch
    rho_d, p_d = stats.spearmanr([0.1, 0.3, 0.2, 0.4], [last_gaps[i] for i in (0, 1, 2, 4)])
    rho_b, p_b = stats.spearmanr([64, 128, 64, 128, 128], last_gaps)
    expected = sorted([{"hyperparameter": "model.dropout", "Spearman rho with the gap": round(rho_d, 2), "p": round(p_d, 3), "runs": 4},
                       {"hyperparameter": "train.batch_size", "Spearman rho with the gap": round(rho_b, 2), "p": round(p_b, 3), "runs": 5}],
                      key=lambda r: r["p"])
    assert table.to_dict("records") == expected
