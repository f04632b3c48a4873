"""mnist_lab/report/analysis.py on its own: the summary, leaderboard, rankings, roles, warnings and
value formatting, on a study made by hand (the page is tested in tests/test_report.py)."""

import shlex
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mnist_lab.report import analysis, runs
from mnist_lab.sweep.space import Space

SPACE = Space.model_validate({"base": "baseline.yaml", "fixed": {"train.epochs": 2}, "params": {
    "model.dense.0": {"choices": [128, 256, 512]}, "train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
    "model.dropout": {"low": 0.0, "high": 0.5}, "model.batch_norm": {"choices": [False, True]}}})


def run(run_id, trial, state, val=None, **extra):
    return {"run_id": run_id, "trial": trial, "state": state, "metrics.val_accuracy": val, **extra}


def study_of(rows, history=None, confirm=None, champion=None, tags=None, space=SPACE, maximize=True):
    parent = SimpleNamespace(data=SimpleNamespace(tags=tags or {}), info=SimpleNamespace(run_id="parent1"))
    return runs.Study(name="s", parent=parent, space=space, objective="val_accuracy", maximize=maximize,
                      runs=pd.DataFrame(rows), history=history if history is not None else runs._empty_history(),
                      confirm=confirm if confirm is not None else pd.DataFrame(), champion=champion)


PARAMS = {"params.model.dense.0": "256", "params.train.learning_rate": "0.001", "params.model.dropout": "0.25",
          "params.model.batch_norm": "True"}
ROWS = [
    run("r0", 0, "COMPLETE", 0.98, **PARAMS, **{"tags.baseline": "true", "metrics.train_seconds": 10.0, "params.param_count": "1663370",
                                                 "tags.git_commit": "a" * 40, "params.precision": "float32", "tags.cpu_model": "EPYC"}),
    run("r1", 1, "COMPLETE", 0.99, **(PARAMS | {"params.model.dense.0": "512"}), **{"metrics.train_seconds": 20.0, "params.param_count": "52000",
                                                 "tags.git_commit": "b" * 40, "tags.git_dirty": "true", "metrics.test_accuracy": 0.991,
                                                 "params.precision": "float32", "tags.cpu_model": "EPYC"}),
    run("r2", 2, "PRUNED", 0.70, **PARAMS, **{"tags.pruned_at_epoch": "0.12", "metrics.train_seconds": 1.5}),
    run("r3", 3, "PRUNED", 0.90, **PARAMS, **{"tags.pruned_at_epoch": "0.38"}),
    run("r4", 4, "FAIL", None, **{"tags.failure_reason": "kernel larger than the map\nmore"}),
    run("r5", 5, "FAIL", None, **{"tags.failure_reason": "kernel larger than the map"}),
    run("r6", 6, "FAIL", None, **{"tags.failure_reason": "loss diverged"}),
    run("r7", 7, "RUNNING", None),
]


def test_one_order_everywhere_complete_by_the_objective_then_pruned_by_their_last_score():
    study = study_of(ROWS)
    assert analysis.ranked(study).run_id.tolist() == ["r1", "r0", "r3", "r2"]
    assert analysis.ranked(study_of(ROWS, maximize=False)).run_id.tolist() == ["r0", "r1", "r2", "r3"]
    no_metric = study_of([{"run_id": "x", "trial": 0, "state": "COMPLETE"}])
    assert analysis.ranked(no_metric).run_id.tolist() == ["x"]


def test_the_leaderboard_row_by_row():
    study = study_of(ROWS, champion={"version": "2", "source_run_id": "r1"})
    table = analysis.leaderboard(study, k=3)
    assert table.columns.tolist() == ["trial", "role", "run_id", "dense.0", "learning_rate", "dropout", "batch_norm", "val_accuracy",
                                      "params", "train s", "test_accuracy"]
    rows = table.to_dict("records")
    assert rows[0] | {"test_accuracy": 0} == {"trial": "trial 1", "role": "champion", "run_id": "r1", "dense.0": "512", "learning_rate": "0.001",
                                               "dropout": "0.25", "batch_norm": "True", "val_accuracy": 0.99, "params": "52k",
                                               "train s": 20.0, "test_accuracy": 0}
    assert rows[0]["test_accuracy"] == 0.991 and np.isnan(rows[1]["test_accuracy"])
    assert (rows[1]["trial"], rows[1]["role"], rows[1]["params"]) == ("trial 0", "baseline", "1.66M")
    assert (rows[2]["trial"], rows[2]["role"], rows[2]["params"]) == ("trial 3 (pruned@0.38)", "", "")
    assert analysis.leaderboard(study_of([run("r7", 7, "RUNNING")])).empty


def test_roles_labels_and_values_as_people_read_them():
    confirm = pd.DataFrame({"tags.source_label": ["baseline", "trial 1"], "tags.source_run_id": ["r9", "r1"]})
    assert analysis.roles(study_of(ROWS, confirm=confirm, champion={"version": "1", "source_run_id": "r3"})) == {
        "r0": "baseline", "r9": "baseline", "r3": "champion"}
    assert analysis.roles(study_of([run("a", 0, "COMPLETE", 0.9)])) == {}
    assert analysis.label(pd.Series({"trial": 4.0, "state": "PRUNED", "run_id": "abc"})) == "trial 4 (pruned@?)"
    assert analysis.label(pd.Series({"trial": np.nan, "state": "COMPLETE", "run_id": "0123456789ab"})) == "01234567"
    assert analysis.label(pd.Series({"trial": None, "state": "COMPLETE", "run_id": "0123456789ab"})) == "01234567"
    cases = {True: "True", np.bool_(False): "False", "adam": "adam", "3": "3", 3: "3", 2.0: "2", 12345: "12,345",
             "12345.0": "12,345", 0.000112: "0.000112", "1.21e-04": "0.000121", 0.5: "0.5", None: "None", 123456.7: "1.23e+05"}
    assert {str(k): analysis.value_text(k) for k in cases} == {str(k): v for k, v in cases.items()}


def test_where_a_value_lies_in_its_range():
    p = SPACE.params
    assert analysis.range_position("512", p["model.dense.0"]) == 1.0 and analysis.range_position(128, p["model.dense.0"]) == 0.0
    assert analysis.range_position("256", p["model.dense.0"]) == 0.5 and np.isnan(analysis.range_position("64", p["model.dense.0"]))
    assert analysis.range_position("0.001", p["train.learning_rate"]) == pytest.approx(0.5)  # the middle on a log scale
    assert analysis.range_position(0.125, p["model.dropout"]) == 0.25
    flat = Space.model_validate({"params": {"model.dropout": {"low": 0.2, "high": 0.2}, "x.y": {"choices": [1]}}}).params
    assert analysis.range_position(0.2, flat["model.dropout"]) == 0.0 and analysis.range_position(1, flat["x.y"]) == 0.0


def test_edge_warnings_name_the_range_to_widen():
    best = pd.Series({"params.model.dense.0": "512", "params.train.learning_rate": "0.0099", "params.model.dropout": "0.25",
                      "params.model.batch_norm": "True"})
    assert analysis.edge_warnings(study_of(ROWS), best) == [
        "model.dense.0 = 512 is at the edge of the choices [128, 256, 512]",
        "train.learning_rate = 0.0099 is at the edge of [0.0001, 0.01]: widen the range"]
    inside = best.copy()
    inside["params.model.dense.0"], inside["params.train.learning_rate"], inside["params.model.dropout"] = "256", "0.001", np.nan
    assert analysis.edge_warnings(study_of(ROWS), inside) == []
    low = pd.Series({"params.model.dropout": "0.02"})
    assert analysis.edge_warnings(study_of(ROWS), low) == ["model.dropout = 0.02 is at the edge of [0, 0.5]: widen the range"]
    assert analysis.edge_warnings(study_of(ROWS), pd.Series({"params.model.dropout": "0.03"})) == []
    assert analysis.edge_warnings(study_of(ROWS, space=None), best) == []


def test_the_summary_of_a_study():
    history = pd.DataFrame({"run_id": ["r0", "r0", "r1", "r1", "r1"], "epoch": [1, 2, 1, 2, 3]})
    confirm = pd.DataFrame({"params.precision": ["mixed_bfloat16"], "tags.cpu_model": ["EPYC"]})
    tags = {"space_file": "experiments/sweep.yaml", "engine": "optuna", "sampler": "tpe", "pruner": "sha", "command": "mnist-lab sweep x",
            "confirmation": "trial 1 beats the baseline", "stopped": "stopped: budget"}
    rows = ROWS + [run("r8", 8, "COMPLETE", 0.95, **{"tags.data_digest": "sha256:1"}), run("r9", 9, "COMPLETE", 0.94, **{"tags.data_digest": "sha256:2"})]
    s = analysis.summarize(study_of(rows, history=history, confirm=confirm, tags=tags))
    assert s["best"].run_id == "r1" and s["best_value"] == 0.99
    assert {k: v for k, v in s.items() if k != "best"} == {
        "study": "s", "space_file": "experiments/sweep.yaml", "engine": "optuna", "sampler": "tpe", "pruner": "sha",
        "objective": "val_accuracy", "states": {"COMPLETE": 4, "FAIL": 3, "PRUNED": 2, "RUNNING": 1}, "runs": 10, "epochs": 5,
        "train_seconds": 31.5, "best_value": 0.99, "study_command": "mnist-lab sweep x",
        "reproduce": ("mnist-lab train experiments/baseline.yaml train.epochs=2 model.dense.0=512 train.learning_rate=0.001 "
                      "model.dropout=0.25 model.batch_norm=True"),
        "commits": ["a" * 12, "b" * 12], "digests": ["sha256:1", "sha256:2"],
        "warnings": ["the compared runs come from 2 code commits: aaaaaaaaaa, bbbbbbbbbb",
                     "1 runs were made from a checkout with uncommitted changes",
                     "the compared runs were trained on 2 different data sets: sha256:1, sha256:2",
                     "the compared scores were made in different precisions or on different CPUs (2 runs in float32 on EPYC; "
                     "1 runs in mixed_bfloat16 on EPYC): compare like with like"],
        "parent_run_id": "parent1", "confirmation": "trial 1 beats the baseline", "stopped": "stopped: budget",
        "failures": [("kernel larger than the map", 2), ("loss diverged", 1)],
        "trained_in": [("float32 on EPYC", 2), ("mixed_bfloat16 on EPYC", 1)]}
    bare = analysis.summarize(runs.Study("b", None, None, "val_accuracy", True, pd.DataFrame({"state": ["FAIL"], "run_id": ["x"]}),
                                         runs._empty_history()))
    assert (bare["best"], bare["reproduce"], bare["parent_run_id"], bare["engine"], bare["warnings"], bare["epochs"]) == (
        None, None, None, "-", [], 0)
    lists = study_of([run("a", 0, "COMPLETE", 0.9, **{"params.model.dense.0": "[128, 64]"})], space=Space.model_validate(
        {"params": {"model.dense.0": {"choices": [128]}}}))
    # quoted for a shell (unquoted, [128,64] is a glob pattern bash may expand), and split back as it was
    assert analysis.summarize(lists)["reproduce"] == "mnist-lab train 'model.dense.0=[128,64]'"
    assert shlex.split(analysis.summarize(lists)["reproduce"]) == ["mnist-lab", "train", "model.dense.0=[128,64]"]


def test_importances_need_four_complete_trials_and_a_space():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        dropout = float(rng.uniform(0, 0.5))
        rows.append(run(f"r{i}", i, "COMPLETE", 0.99 - 0.1 * dropout, **{"params.model.dropout": str(dropout),
                        "params.model.dense.0": str([128, 256, 512][i % 3]), "params.train.learning_rate": "0.001",
                        "params.model.batch_norm": ["True", "False"][i % 2]}))
    found = analysis.importances(study_of(rows))
    assert set(found) <= set(SPACE.params) and max(found, key=found.get) == "model.dropout"
    assert sum(found.values()) == pytest.approx(1.0)
    assert analysis.importances(study_of(rows[:3])) == {} and analysis.importances(study_of(rows, space=None)) == {}


def test_what_the_summary_and_leaderboard_say_when_a_study_recorded_little():
    rows = [run("a", 0, "COMPLETE", 0.9, **{"params.model.dropout": "0.1", "tags.git_commit": "c" * 40, "tags.data_digest": "sha256:1",
                                             "params.param_count": "1000000", "params.precision": "float32"}),
            run("b", 1, "COMPLETE", 0.8, **{"params.model.dropout": None, "tags.git_commit": "c" * 40, "tags.data_digest": "sha256:1",
                                             "params.param_count": "1500", "params.precision": "float32"})]
    space = Space.model_validate({"base": "baseline.yaml", "params": {"model.dropout": {"low": 0.0, "high": 0.5}}})
    confirm = pd.DataFrame({"params.precision": ["float32"], "tags.source_run_id": ["a"]})
    s = analysis.summarize(study_of(rows, space=space, confirm=confirm, tags={}))
    assert {k: s[k] for k in ("space_file", "engine", "sampler", "pruner", "objective", "study_command", "warnings", "epochs",
                              "train_seconds", "commits", "digests", "trained_in")} == {
        "space_file": "-", "engine": "-", "sampler": "-", "pruner": "-", "objective": "val_accuracy", "study_command": "-",
        "warnings": [], "epochs": 0, "train_seconds": 0.0, "commits": ["c" * 12], "digests": ["sha256:1"],
        "trained_in": [("float32 on ?", 3)]}
    assert s["reproduce"] == "mnist-lab train experiments/baseline.yaml model.dropout=0.1"
    table = analysis.leaderboard(study_of(rows, space=space), k=1)
    record = table.to_dict("records")
    assert len(record) == 1 and np.isnan(record[0].pop("test_accuracy"))
    assert record == [{"trial": "trial 0", "role": "", "run_id": "a", "dropout": "0.1", "val_accuracy": 0.9, "params": "1.00M",
                       "train s": None}]
    both = analysis.leaderboard(study_of(rows, space=space))
    assert both.params.tolist() == ["1.00M", "2k"] and both.dropout.tolist() == ["0.1", ""]
    bare = analysis.leaderboard(study_of([run("a", 0, "COMPLETE", 0.9)], space=space))
    assert bare.dropout.tolist() == [""] and bare.params.tolist() == [""] and list(bare.columns)[-1] == "test_accuracy"
    assert analysis.leaderboard(study_of([run(f"r{i}", i, "COMPLETE", 0.9) for i in range(12)], space=space)).shape[0] == 10


def test_an_edge_is_the_outer_5_percent_of_the_range_as_its_axis_draws_it():
    space = Space.model_validate({"params": {"train.epochs": {"low": 10, "high": 30},
                                             "train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
                                             "model.dropout": {"low": 0.2, "high": 0.2},
                                             "model.dense.0": {"choices": [128, 256, 512]}}})

    def edges(key, value):
        return analysis.edge_warnings(study_of([], space=space), pd.Series({f"params.{key}": value}))
    # 5% of [10, 30] is one epoch: 11 and 29 are at the edge, 12 and 28 are not
    assert edges("train.epochs", "11") == ["train.epochs = 11 is at the edge of [10, 30]: widen the range"]
    assert edges("train.epochs", "29") == ["train.epochs = 29 is at the edge of [10, 30]: widen the range"]
    assert edges("train.epochs", "12") == edges("train.epochs", "28") == []
    # on a log scale 5e-4 lies a third of the way from 1e-4 to 1e-2 (log10: -3.3 of -4..-2); 1.2e-4 and 9.5e-3 are at its ends
    assert edges("train.learning_rate", "0.0005") == []
    assert edges("train.learning_rate", "0.00012") == ["train.learning_rate = 0.00012 is at the edge of [0.0001, 0.01]: widen the range"]
    assert edges("train.learning_rate", "0.0095") == ["train.learning_rate = 0.0095 is at the edge of [0.0001, 0.01]: widen the range"]
    assert edges("model.dropout", "0.2") == []  # a range of one value has no edge to widen
    assert edges("model.dense.0", "128") == ["model.dense.0 = 128 is at the edge of the choices [128, 256, 512]"]


def test_where_a_value_lies_in_a_range_that_does_not_start_at_zero_or_has_two_choices():
    p = Space.model_validate({"params": {"model.dropout": {"low": 0.1, "high": 0.5}, "model.batch_norm": {"choices": [False, True]}}}).params
    assert analysis.range_position("0.3", p["model.dropout"]) == pytest.approx(0.5)
    assert analysis.range_position("True", p["model.batch_norm"]) == 1.0 and analysis.range_position(False, p["model.batch_norm"]) == 0.0


def test_values_written_in_scientific_notation_or_as_long_integers():
    assert [analysis.value_text(v) for v in ("2e3", "1e-4", 10_000, 9_999, "12345678901234567891")] == [
        "2000", "0.0001", "10,000", "9999", "12,345,678,901,234,567,891"]  # integers stay exact, however long


IMPORTANCE_SPACE = Space.model_validate({"params": {
    "model.dense.0": {"choices": [128, 256, 512]}, "model.batch_norm": {"choices": [False, True]},
    "model.conv_blocks.0.filters": {"low": 16, "high": 64, "step": 16}, "model.dropout": {"low": 0.0, "high": 0.5}}})


def importance_rows(n, score):
    """`n` complete trials over IMPORTANCE_SPACE, spread evenly, scored by `score(dense, batch_norm, filters, dropout)`."""
    rows = []
    for i in range(n):
        values = ([128, 256, 512][i % 3], [False, True][i // 3 % 2], [16, 32, 48, 64][i % 4], 0.5 * ((7 * i) % n) / n)
        rows.append(run(f"r{i}", i, "COMPLETE", score(*values), **{
            f"params.{k}": str(v) for k, v in zip(IMPORTANCE_SPACE.params, values)}))
    return rows


def test_importances_read_choices_by_their_text_and_integers_as_integers():
    # The width of the dense layer alone decides the score: MLflow's "512" must be read as the choice 512.
    rows = importance_rows(24, lambda dense, bn, filters, dropout: 0.9 + dense / 10_000)
    found = analysis.importances(study_of(rows, space=IMPORTANCE_SPACE))
    assert set(found) == set(IMPORTANCE_SPACE.params) and max(found, key=found.get) == "model.dense.0"
    found = analysis.importances(study_of(importance_rows(24, lambda dense, bn, filters, dropout: 0.9 + filters / 1000),
                                          space=IMPORTANCE_SPACE))
    assert max(found, key=found.get) == "model.conv_blocks.0.filters"
    # A searched key no run logged (added to the space later) is left out, the others still analysed.
    without = [{k: v for k, v in r.items() if k != "params.model.dense.0"} for r in rows]
    assert set(analysis.importances(study_of(without, space=IMPORTANCE_SPACE))) == set(IMPORTANCE_SPACE.params) - {"model.dense.0"}


def test_importances_need_four_complete_scored_trials_whatever_else_they_lack():
    rows = importance_rows(6, lambda dense, bn, filters, dropout: 0.9 + dropout / 10)
    rows[0]["metrics.test_accuracy"] = 0.97  # measured on one run only: the others' NaN does not drop them
    rows[4]["metrics.val_accuracy"] = None  # complete but unscored: left out, leaving five
    assert analysis.importances(study_of(rows[:5], space=IMPORTANCE_SPACE))  # four scored trials are enough
    assert analysis.importances(study_of(rows[1:5], space=IMPORTANCE_SPACE)) == {}


def test_importances_look_at_the_best_trials_in_the_study_s_direction():
    # The highest scores are decided by dropout alone; the lowest by the number of filters alone.
    def score(dense, bn, filters, dropout):
        return dropout if dropout > 0.25 else -filters / 64
    rows = importance_rows(40, score)
    best_for = {maximize: analysis.importances(study_of(rows, space=IMPORTANCE_SPACE, maximize=maximize)) for maximize in (True, False)}
    assert max(best_for[True], key=best_for[True].get) == "model.dropout"
    assert max(best_for[False], key=best_for[False].get) == "model.conv_blocks.0.filters"


def test_runs_outside_a_sweep_are_ranked_by_their_mlflow_status():
    # Runs picked with --runs have no Optuna state: MLflow's FINISHED stands for it.
    study = study_of([run("a", None, "FINISHED", 0.97), run("b", None, "FAILED", None), run("c", None, "FINISHED", 0.98)])
    assert analysis.ranked(study).run_id.tolist() == ["c", "a"]


def test_where_scores_were_made_when_a_run_recorded_no_cpu():
    rows = [run("a", 0, "COMPLETE", 0.9, **{"params.precision": "float32", "tags.cpu_model": "EPYC"}),
            run("b", 1, "COMPLETE", 0.9, **{"params.precision": "float32"})]
    assert sorted(analysis.trained_in(study_of(rows))) == [("float32 on ?", 1), ("float32 on EPYC", 1)]


def test_the_summary_reads_the_study_s_own_objective_and_space_folder():
    tags = {"space_file": "studies/wide.yaml", "objective": "maximize val_accuracy"}
    s = analysis.summarize(study_of(ROWS, tags=tags))
    assert s["objective"] == "maximize val_accuracy"
    assert s["reproduce"].startswith("mnist-lab train studies/baseline.yaml train.epochs=2 ")  # base is relative to the space file


def test_failed_runs_without_a_reason_and_with_a_long_one():
    long = "x" * 250 + "\nsecond line"
    runs_ = pd.DataFrame({"state": ["FAIL", "FAIL", "FAIL"], "tags.failure_reason": [None, long, "loss diverged"]})
    assert sorted(analysis.failure_reasons(runs_)) == [("loss diverged", 1), ("no reason recorded", 1), ("x" * 200, 1)]


def test_the_leaderboard_of_a_top_level_key_and_of_odd_parameter_counts():
    space = Space.model_validate({"params": {"precision": {"choices": ["float32", "mixed_bfloat16"]}}})
    rows = [run("a", 0, "COMPLETE", 0.99, **{"params.precision": "mixed_bfloat16", "params.param_count": "1235001"}),
            run("b", 1, "COMPLETE", 0.98, **{"params.precision": "float32", "params.param_count": "?"})]
    table = analysis.leaderboard(study_of(rows, space=space))
    assert table.precision.tolist() == ["mixed_bfloat16", "float32"] and table.params.tolist() == ["1.24M", ""]
