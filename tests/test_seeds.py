"""mnist_lab/report/seeds.py on its own: which seeds a configuration has, the confirmation table, the
tests between configurations (p-values from SciPy, computed here) and the study's answer."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mnist_lab.report import runs, seeds


def study_of(configs: dict, trials: dict, champion=None, parent_tags=None, extra_confirm=()):
    """configs: label -> (source run, rank, {seed: score}); trials: run id -> (trial, val, test, train seed)."""
    trial_runs = pd.DataFrame([{"run_id": r, "trial": t, "state": "COMPLETE", "metrics.val_accuracy": v,
                                "metrics.test_accuracy": test, "params.train.seed": seed} for r, (t, v, test, seed) in trials.items()])
    rows = [{"status": "FINISHED", "tags.source_run_id": source, "tags.config_rank": str(rank), "tags.seed": str(seed),
             "tags.source_label": label, "tags.source_trial": label.split()[-1], "metrics.val_accuracy": score}
            for label, (source, rank, scores) in configs.items() for seed, score in scores.items()]
    parent = SimpleNamespace(data=SimpleNamespace(tags=parent_tags)) if parent_tags is not None else None
    return runs.Study(name="s", parent=parent, space=None, objective="val_accuracy", maximize=True, runs=trial_runs,
                      history=runs._empty_history(), confirm=pd.DataFrame(rows + list(extra_confirm)), champion=champion)


def one_sided(a, b):
    return stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue


def two_sided(a, b):
    return stats.ttest_ind(a, b, equal_var=False)


def test_a_configuration_s_seeds_are_its_finished_confirmation_runs_and_its_trial_run():
    extra = [{"status": "FAILED", "tags.source_run_id": "r7", "tags.config_rank": "1", "tags.seed": "3", "tags.source_label": "trial 7",
              "tags.source_trial": "7", "metrics.val_accuracy": 0.5},  # a killed seed counts for nothing
             {"status": "FINISHED", "tags.source_run_id": "r7", "tags.config_rank": "1", "tags.seed": "1", "tags.source_label": "trial 7",
              "tags.source_trial": "7", "metrics.val_accuracy": 0.1},  # the same seed twice: the first counts
             {"status": "FINISHED", "tags.source_run_id": "r3", "tags.config_rank": "2", "tags.seed": "2", "tags.source_label": None,
              "tags.source_trial": "3", "metrics.val_accuracy": float("nan")}]  # no score: no seed
    study = study_of({"trial 7": ("r7", 1, {1: 0.991, 2: 0.993}), "trial 3": ("r3", 2, {1: 0.990})},
                     {"r7": (7, 0.992, 0.9931, "0"), "r3": (3, 0.989, float("nan"), "5")}, extra_confirm=extra)
    study.confirm.loc[study.confirm["tags.source_run_id"] == "r3", "tags.source_label"] = None
    c7, c3 = seeds.configurations(study)
    assert (c7.label, c7.source_run_id, c7.scores, c7.sweep_score, c7.test) == ("trial 7", "r7", {0: 0.992, 1: 0.991, 2: 0.993}, 0.992, 0.9931)
    assert (c3.label, c3.scores, c3.sweep_score, c3.test) == ("trial 3", {1: 0.990, 5: 0.989}, 0.989, None)
    assert c7.values.tolist() == [0.992, 0.991, 0.993] and c7.mean == pytest.approx(0.992)
    assert seeds.configurations(study_of({}, {})) == []


def test_the_confirmation_table_tests_and_verdicts():
    t7, t3, base = [0.9950, 0.9940, 0.9960], [0.9960, 0.9930, 0.9920], [0.9880, 0.9900, 0.9890]
    study = study_of({"trial 7": ("r7", 1, {1: t7[1], 2: t7[2]}), "trial 3": ("r3", 2, {1: t3[1], 2: t3[2]}),
                      "baseline": ("r0", 3, {1: base[1], 2: base[2]})},
                     {"r7": (7, t7[0], 0.9951, "0"), "r3": (3, t3[0], float("nan"), "0"), "r0": (0, base[0], float("nan"), "0")})
    table, tests, verdicts = seeds.confirmation(study)
    half = stats.t.ppf(0.975, 2) * np.std(t7, ddof=1) / np.sqrt(3)
    assert table.to_dict("records")[0] == {"configuration": "trial 7", "seeds": 3, "sweep val_accuracy": "0.9950",
                                           "val_accuracy": f"{np.mean(t7):.4f} ± {half:.4f}", "test_accuracy": "0.9951"}
    assert "test_accuracy" not in table.to_dict("records")[1] or pd.isna(table.to_dict("records")[1]["test_accuracy"])
    assert tests.pair.tolist() == ["trial 7 vs trial 3", "trial 7 vs baseline", "trial 3 vs baseline"]
    t, p = two_sided(t7, t3)
    assert tests.iloc[0].to_dict() == {"pair": "trial 7 vs trial 3", "difference in val_accuracy": f"{np.mean(t7) - np.mean(t3):+.4f}",
                                       "Welch t": f"{t:.2f}", "p (two-sided)": f"{p:.3g}", "p (one-sided, the sweep's gate)": ""}
    gate = one_sided(t7, base)
    assert tests.iloc[1]["p (one-sided, the sweep's gate)"] == f"{gate:.3g}"
    assert verdicts[0] == (f"rank reversal: trial 3 beat trial 7 in the search (0.9960 against 0.9950), but over seeds its "
                           f"mean is lower ({np.mean(t3):.4f} against {np.mean(t7):.4f})")
    assert verdicts[1] == f"trial 7 and trial 3 are tied within noise (two-sided p = {p:.2f}, 3 and 3 seeds)"
    assert verdicts[2] == (f"trial 7 beats baseline on validation (one-sided p = {gate:.3g}, the sweep's gate; two-sided p = "
                           f"{two_sided(t7, base)[1]:.2g})")
    gate3 = one_sided(t3, base)
    assert verdicts[3] == (f"trial 3 beats baseline on validation (one-sided p = {gate3:.3g}, the sweep's gate; two-sided p = "
                           f"{two_sided(t3, base)[1]:.2g})" if gate3 < 0.05 else
                           f"trial 3 does not beat baseline with confidence (one-sided p = {gate3:.2f}, 3 and 3 seeds)")
    assert len(verdicts) == 4


def test_compare_seeds_judges_a_trial_by_the_gate_whichever_side_it_is_on():
    trial, held = np.array([0.991, 0.990, 0.992]), np.array([0.990, 0.991, 0.989])
    row, verdict = seeds.compare_seeds("current champion (version 2)", held, "trial 4", trial)
    gate = one_sided(trial, held)
    assert verdict == f"trial 4 does not beat current champion (version 2) with confidence (one-sided p = {gate:.2f}, 3 and 3 seeds)"
    assert row["p (one-sided, the sweep's gate)"] == f"{gate:.3g}" and row["pair"] == "current champion (version 2) vs trial 4"
    apart = np.array([0.980, 0.981, 0.979])
    row, verdict = seeds.compare_seeds("trial 1", apart, "trial 2", trial)
    t, p = two_sided(apart, trial)
    assert verdict == f"trial 2 beats trial 1 on validation (two-sided p = {p:.3g})" and row["difference in val_accuracy"] == "-0.0110"
    _, verdict = seeds.compare_seeds("trial 2", trial, "trial 1", apart)
    assert verdict == f"trial 2 beats trial 1 on validation (two-sided p = {p:.3g})"
    _, verdict = seeds.compare_seeds("baseline", held, "current champion (version 1)", trial)  # two incumbents: no side
    assert verdict.startswith("baseline and current champion (version 1) are tied within noise")


def test_the_answer_against_two_incumbents_and_a_crown_that_moved_on():
    won, base, champ = [0.9950, 0.9940, 0.9960], [0.9880, 0.9900, 0.9890], [0.9945, 0.9955, 0.9950]
    configs = {"trial 7": ("r7", 1, {1: won[1], 2: won[2]}), "trial 2": ("r2", 2, {1: 0.90}),
               "baseline": ("r0", 3, {1: base[1], 2: base[2]}), "current champion (version 2)": ("rc", 4, {0: champ[0], 1: champ[1], 2: champ[2]})}
    trials = {"r7": (7, won[0], 0.9951, "0"), "r2": (2, 0.999, float("nan"), "0"), "r0": (0, base[0], float("nan"), "0")}
    said = seeds.answer(study_of(configs, trials, champion={"version": "3", "source_run_id": "elsewhere"},
                                 parent_tags={"confirmation": "trial 7 beats the baseline and current champion (version 2)"}))
    pb, pc = one_sided(won, base), one_sided(won, champ)
    diff_b, diff_c = 100 * (np.mean(won) - np.mean(base)), 100 * (np.mean(won) - np.mean(champ))
    assert said == (f"trial 7 does not beat the baseline and current champion (version 2) with confidence: "
                    f"{diff_b:+.2f} points of validation accuracy over the baseline ({np.mean(won):.4f} against {np.mean(base):.4f}, "
                    f"means over 3 and 3 seeds; one-sided Welch p = {pb:.2g}); {diff_c:+.2f} points of validation accuracy over "
                    f"current champion (version 2) ({np.mean(won):.4f} against {np.mean(champ):.4f}, means over 3 and 3 seeds; "
                    f"one-sided Welch p = {pc:.2g}). It was crowned, and mnist-cnn@champion has since moved on to version 3; "
                    "its one test-set evaluation: 0.9951.")
    alone = seeds.answer(study_of({"trial 7": ("r7", 1, {1: 0.99})}, {"r7": (7, float("nan"), float("nan"), "0")}))
    assert alone == ("trial 7 scores 0.9900 validation accuracy over 1 seed; no baseline or champion was confirmed over "
                     "2 seeds or more to compare it with. Nothing was crowned.")
    moved = seeds.answer(study_of({"trial 7": ("r7", 1, {1: 0.99})}, {"r7": (7, float("nan"), float("nan"), "0")},
                                  parent_tags={"confirmation": "trial 7 beats the baseline"}))
    assert moved.endswith("It was crowned, and mnist-cnn@champion has since moved on.")


def confirm_rows(source, trial, rank, scores):
    """A configuration's confirmation runs without a source_label tag (the label falls back to its trial)."""
    return [{"status": "FINISHED", "tags.source_run_id": source, "tags.config_rank": str(rank), "tags.seed": str(seed),
             "tags.source_trial": str(trial), "metrics.val_accuracy": v} for seed, v in scores.items()]


def test_without_a_label_tag_a_configuration_is_named_by_its_trial_and_an_unrecorded_train_seed_is_seed_0():
    confirm = pd.DataFrame(confirm_rows("r7", 7, 1, {1: 0.991}) + confirm_rows("r3", 3, 2, {1: 0.990, 2: 0.989}))
    no_seed_param = pd.DataFrame({"run_id": ["r7"], "trial": [7], "state": ["COMPLETE"], "metrics.val_accuracy": [0.992]})
    study = runs.Study(name="s", parent=None, space=None, objective="val_accuracy", maximize=True, runs=no_seed_param,
                       history=runs._empty_history(), confirm=confirm)
    c7, c3 = seeds.configurations(study)
    assert (c7.label, c7.scores, c7.sweep_score) == ("trial 7", {0: 0.992, 1: 0.991}, 0.992)
    assert (c3.label, c3.scores, c3.sweep_score) == ("trial 3", {1: 0.990, 2: 0.989}, None)
    # The param recorded as missing (None, as MLflow's search gives it): seed 0 as well.
    study.runs = no_seed_param.assign(**{"params.train.seed": [None]})
    assert seeds.configurations(study)[0].scores == {0: 0.992, 1: 0.991}


def test_the_confirmation_table_with_one_two_seed_configurations_and_a_champion_of_one_seed():
    # The champion's run is not a trial of this study: no search score, one seed, no interval, no test.
    t7, t3 = [0.9950, 0.9930], [0.9900, 0.9905]
    study = study_of({"trial 7": ("r7", 1, {1: t7[1]}), "trial 3": ("r3", 2, {1: t3[1]}),
                      "current champion (version 2)": ("rc", 3, {1: 0.9912})},
                     {"r7": (7, t7[0], float("nan"), "0"), "r3": (3, t3[0], float("nan"), "0")})
    table, tests, verdicts = seeds.confirmation(study)

    def half(x):  # the 95% t-interval's half-width, one degree of freedom for two seeds
        return stats.t.ppf(0.975, 1) * np.std(x, ddof=1) / np.sqrt(2)

    assert table.to_dict("records") == [
        {"configuration": "trial 7", "seeds": 2, "sweep val_accuracy": "0.9950", "val_accuracy": f"{np.mean(t7):.4f} ± {half(t7):.4f}"},
        {"configuration": "trial 3", "seeds": 2, "sweep val_accuracy": "0.9900", "val_accuracy": f"{np.mean(t3):.4f} ± {half(t3):.4f}"},
        {"configuration": "current champion (version 2)", "seeds": 1, "sweep val_accuracy": "", "val_accuracy": "0.9912"}]
    # Only the two trials have two seeds each to test; the search and the seeds agree on their order.
    assert tests.pair.tolist() == ["trial 7 vs trial 3"]
    p = two_sided(t7, t3)[1]
    assert p > 0.05 and verdicts == [f"trial 7 and trial 3 are tied within noise (two-sided p = {p:.2f}, 2 and 2 seeds)"]


def test_a_rank_reversal_needs_a_higher_search_score_and_a_lower_seed_mean():
    def reversals(seven, three):
        study = study_of({"trial 7": ("r7", 1, {1: seven[1]}), "trial 3": ("r3", 2, {1: three[1]})},
                         {"r7": (7, seven[0], float("nan"), "0"), "r3": (3, three[0], float("nan"), "0")})
        return [v for v in seeds.confirmation(study)[2] if v.startswith("rank reversal")]

    assert reversals([0.9950, 0.9900], [0.9950, 0.9960]) == []  # tied in the search
    assert reversals([0.9950, 0.9900], [0.9900, 0.9950]) == []  # the same two scores: equal means
    assert len(reversals([0.9950, 0.9900], [0.9940, 0.9960])) == 1


def test_the_answer_when_two_seeds_beat_two_incumbents_of_two_seeds_each_and_it_was_crowned():
    won, base, champ = [0.9950, 0.9960], [0.9800, 0.9810], [0.9850, 0.9860]
    configs = {"trial 7": ("r7", 1, {1: won[1]}), "baseline": ("r0", 2, {1: base[0], 2: base[1]}),
               "current champion (version 2)": ("rc", 3, {1: champ[0], 2: champ[1]})}
    said = seeds.answer(study_of(configs, {"r7": (7, won[0], float("nan"), "0")}, champion={"version": "3", "source_run_id": "r7"}))
    pb, pc = one_sided(won, base), one_sided(won, champ)
    assert pb < 0.05 and pc < 0.05
    assert said == (f"trial 7 beats the baseline by {100 * (np.mean(won) - np.mean(base)):+.2f} points of validation accuracy "
                    f"({np.mean(won):.4f} against {np.mean(base):.4f}, means over 2 and 2 seeds; one-sided Welch p = {pb:.2g}) and "
                    f"current champion (version 2) by {100 * (np.mean(won) - np.mean(champ)):+.2f} points of validation accuracy "
                    f"({np.mean(won):.4f} against {np.mean(champ):.4f}, means over 2 and 2 seeds; one-sided Welch p = {pc:.2g}). "
                    "It is mnist-cnn@champion (version 3).")
