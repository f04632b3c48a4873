"""mnist_lab/sweep/space.py on its own: a space file's errors word for word, the baseline inside it,
and the one mapping from its ranges to Optuna's distributions (and KerasTuner's hyperparameters)."""

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from conftest import REPO
from mnist_lab.errors import ConfigError
from mnist_lab.sweep import space as sp

EPOCHS = "params: {train.epochs: {low: 1, high: 3}}\n"


def load(tmp_path, text, **kw):
    (tmp_path / "s.yaml").write_text(text)
    return sp.load_space(tmp_path / "s.yaml", **kw)


@pytest.mark.parametrize("text, kw, expected", [
    (EPOCHS + "sampler: grid\n", {}, "s.yaml: sampler grid needs every param as {choices: [...]}"),
    (EPOCHS + "sampler: nsga2\n", {}, "s.yaml: sampler nsga2 is for several objectives; list two or more under objective"),
    ("objective: [val_accuracy, param_count]\n" + EPOCHS, {},
     "s.yaml: pruner: Optuna cannot prune multi-objective studies; use pruner: none"),
    (EPOCHS + "fixed: {train.batch_size: 0}\n", {}, "s.yaml: fixed: train.batch_size=0: Input should be greater than 0 (got 0)"),
    ("params: {train.epoch: {low: 1, high: 3}}\n", {}, "s.yaml: params: unknown key 'train.epoch' (did you mean 'epochs'?)"),
    ("fixed: {model.dropot: 0.1}\n" + EPOCHS, {}, "s.yaml: fixed: unknown key 'model.dropot' (did you mean 'dropout'?)"),
    ("paramz: {}\n", {}, "s.yaml: unknown key 'paramz' (did you mean 'params'?)"),
    ("params: {train.epochs: {low: 1, hgh: 3}}\n", {}, "s.yaml: params: train.epochs: unknown key 'hgh' (allowed: low, high, step, log)"),
    (EPOCHS + "budget: {n_trails: 3}\n", {}, "s.yaml: unknown key 'budget.n_trails' (did you mean 'n_trials'?)"),
    ("params: {train.epochs: {low: 3, high: 1}}\n", {}, "s.yaml: params: train.epochs: low (3) > high (1)"),
    ("params: {train.batch_size: {choices: []}}\n", {},
     "s.yaml: params: train.batch_size: choices: List should have at least 1 item after validation, not 0"),
    ("confirm: {sedes: 3}\n" + EPOCHS, {}, "s.yaml: unknown key 'confirm.sedes' (did you mean 'seeds'?)"),
    ("objective: [{metrc: val_loss}]\n" + EPOCHS, {}, "s.yaml: unknown key 'objective.0.metrc' (did you mean 'metric'?)"),
    ("budget: {timout: 3}\n" + EPOCHS, {}, "s.yaml: unknown key 'budget.timout' (did you mean 'timeout'?)"),
    (EPOCHS, {"timeout": 0}, "--timeout 0: input should be greater than 0"),
    (EPOCHS, {"n_trials": -5}, "--n-trials -5: input should be greater than 0"),
])
def test_space_errors_word_for_word(tmp_path, text, kw, expected):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text, **kw)
    assert str(e.value) == f"{tmp_path}/{expected}" if expected.startswith("s.yaml") else str(e.value) == expected


def test_a_bad_base_config_is_named_as_the_base_file(tmp_path):
    (tmp_path / "b.yaml").write_text("train: {epochs: 0}\n")
    with pytest.raises(ConfigError) as e:
        load(tmp_path, "base: b.yaml\n" + EPOCHS)
    assert str(e.value) == f"{tmp_path / 'b.yaml'}: train.epochs: Input should be greater than 0 (got 0)"
    assert load(tmp_path, EPOCHS).text == EPOCHS  # recorded on the study as it was written


def test_the_default_space_holds_the_baseline_and_maps_to_optuna_s_distributions():
    s = sp.load_space(REPO / "experiments" / "sweep.yaml", n_trials=7, timeout=60)
    assert (s.space.budget.n_trials, s.space.budget.timeout, s.space.budget.max_consecutive_failures) == (7, 60, 5)
    assert s.baseline_values() == {
        "model.conv_blocks.0.filters": 32, "model.conv_blocks.1.filters": 64, "model.conv_blocks.0.kernel_size": 5,
        "model.conv_blocks.1.kernel_size": 5, "model.dense.0": 1024, "model.dropout": 0.5, "model.batch_norm": False,
        "model.augment.shift": 0.0, "model.augment.rotation": 0.0, "model.augment.zoom": 0.0, "train.batch_size": 32,
        "train.learning_rate": 0.001, "train.lr_schedule": "constant", "train.weight_decay": 0.0, "train.epochs": 3}
    d = sp.distributions(s.space)
    assert d["model.conv_blocks.0.filters"] == IntDistribution(8, 32, step=8)
    assert d["model.conv_blocks.0.kernel_size"] == CategoricalDistribution((3, 5, 7))
    assert d["model.dropout"] == FloatDistribution(0.0, 0.5)
    assert d["train.learning_rate"] == FloatDistribution(5e-4, 1e-2, log=True)
    assert d["train.epochs"] == IntDistribution(2, 8)
    assert s.max_epochs(s.config_for({})) == 8
    default = sp.load_space(REPO / "experiments" / "sweep.yaml").space
    assert (default.budget.n_trials, default.budget.timeout, default.workers) == (None, 1620, "auto")
    assert (default.budget.plateau, default.confirm.seeds, default.confirm.max_seeds) == (12, 3, 5)


def test_the_baseline_counts_only_when_every_searched_value_of_it_lies_inside(tmp_path):
    assert load(tmp_path, "params: {train.epochs: {low: 3, high: 5}, train.batch_size: {choices: [32, 64]}}\n").baseline_values() == {
        "train.epochs": 3, "train.batch_size": 32}
    assert load(tmp_path, "params: {train.epochs: {low: 1, high: 3}}\n").baseline_values() == {"train.epochs": 3}
    assert load(tmp_path, "params: {train.epochs: {low: 4, high: 5}, train.batch_size: {choices: [32]}}\n").baseline_values() == {}
    assert load(tmp_path, "params: {train.batch_size: {choices: [32]}, train.epochs: {low: 1, high: 2}}\n").baseline_values() == {}
    assert load(tmp_path, "params: {train.batch_size: {choices: [64, 128]}}\n").baseline_values() == {}
    # fixed values are part of the baseline the space is judged by
    assert load(tmp_path, "fixed: {train.epochs: 5}\nparams: {train.epochs: {low: 4, high: 6}}\n").baseline_values() == {"train.epochs": 5}


def test_a_space_that_says_nothing_of_confirmation_gets_the_readme_s_defaults(tmp_path):
    confirm = load(tmp_path, "params: {train.epochs: {low: 1, high: 3}}\n").space.confirm
    assert (confirm.top, confirm.seeds, confirm.reserve, confirm.min_val_accuracy) == (2, 3, 0.1, 0.9)


def test_a_trial_s_config_and_who_is_blamed(tmp_path):
    s = load(tmp_path, "fixed: {train.batch_size: 64}\nparams: {model.conv_blocks.0.kernel_size: {choices: [5, 29]}, "
                       "train.epochs: {choices: [1, 2]}}\n")
    c = s.config_for({"train.epochs": 2}, {"model.dropout": 0.25})
    assert (c.train.batch_size, c.train.epochs, c.model.dropout) == (64, 2, 0.25)
    assert s.config_for({}, {"train.epochs": 1}).train.epochs == 1 and s.config_for({}).train.epochs == 3
    assert s.config_for({"train.epochs": 2}, {"train.epochs": 1}).train.epochs == 2  # the trial's value wins
    assert s.max_epochs(s.config_for({})) == 2
    with pytest.raises(ConfigError) as e:
        s.config_for({"model.conv_blocks.0.kernel_size": 29})
    assert str(e.value).startswith(f"{tmp_path / 's.yaml'} trial: model.conv_blocks.0.kernel_size=29: 29 is larger")
    with pytest.raises(ConfigError) as e:
        s.config_for({}, {"train.epochs": 0})
    assert str(e.value).startswith("command line: train.epochs=0:")
    no_epochs = load(tmp_path, "params: {train.batch_size: {choices: [32]}}\n")
    assert no_epochs.max_epochs(no_epochs.config_for({}, {"train.epochs": 4})) == 4


def test_optuna_suggests_and_keras_tuner_declares_exactly_the_space(tmp_path):
    s = load(tmp_path, "params: {train.epochs: {low: 1, high: 9, step: 2}, train.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true},"
                       " model.dropout: {low: 0.0, high: 0.5, step: 0.1}, train.batch_size: {choices: [32, 64]}}\n").space
    study = optuna.create_study()
    study.enqueue_trial({"train.epochs": 5, "train.learning_rate": 1e-3, "model.dropout": 0.2, "train.batch_size": 64})
    trial = study.ask()
    assert sp.suggest_optuna(trial, s) == {"train.epochs": 5, "train.learning_rate": 1e-3, "model.dropout": 0.2, "train.batch_size": 64}
    assert trial.distributions == sp.distributions(s)
    for _ in range(5):
        values = sp.suggest_optuna(study.ask(), s)
        assert values["train.epochs"] in (1, 3, 5, 7, 9) and 1e-4 <= values["train.learning_rate"] <= 1e-2
    import keras_tuner as kt

    hp = kt.HyperParameters()
    sp.declare_keras_tuner(hp, s)
    declared = {p.name: p.get_config() for p in hp.space}
    kinds = {p.name: type(p).__name__ for p in hp.space}
    assert kinds == {"train.epochs": "Int", "train.learning_rate": "Float", "model.dropout": "Float", "train.batch_size": "Choice"}
    assert {k: declared["train.epochs"][k] for k in ("min_value", "max_value", "step", "sampling")} == {
        "min_value": 1, "max_value": 9, "step": 2, "sampling": "linear"}
    assert {k: declared["train.learning_rate"][k] for k in ("min_value", "max_value", "sampling")} == {
        "min_value": 1e-4, "max_value": 1e-2, "sampling": "log"}
    assert declared["model.dropout"]["step"] == 0.1 and declared["train.batch_size"]["values"] == [32, 64]
    assert declared["model.dropout"]["sampling"] == "linear"
    log_int = load(tmp_path, "params: {model.dense.0: {low: 16, high: 1024, log: true}}\n").space
    assert sp.distributions(log_int)["model.dense.0"] == IntDistribution(16, 1024, log=True)


def test_a_seed_from_the_command_line_replaces_the_file_s_and_a_negative_one_is_refused(tmp_path):
    smoke = REPO / "experiments" / "smoke.yaml"
    assert sp.load_space(smoke).space.seed == 0 and sp.load_space(smoke, seed=3).space.seed == 3
    assert sp.load_space(smoke, seed=0).space.seed == 0  # 0 is a seed like any other
    with pytest.raises(ConfigError, match=r"^--seed -1: must be 0 or more$"):
        sp.load_space(smoke, seed=-1)
    negative = tmp_path / "negative.yaml"
    negative.write_text(smoke.read_text().replace("base: baseline.yaml", f"base: {REPO / 'experiments' / 'baseline.yaml'}") + "seed: -2\n")
    with pytest.raises(ConfigError, match=r"negative.yaml: seed: "):
        sp.load_space(negative)


@pytest.mark.parametrize("params, expected", [
    ("[train.epochs]", "s.yaml: params: expected dotted keys, each with {low, high} or {choices}, got list"),
    ("3", "s.yaml: params: expected dotted keys, each with {low, high} or {choices}, got int"),
    ("{train.epochs: {low: 1, high: x}}", "s.yaml: params: train.epochs: high: Input should be a valid number, "
                                          "unable to parse string as a number"),
])
def test_params_that_are_not_ranges_are_refused_in_one_line(tmp_path, params, expected):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, f"params: {params}\n")
    assert str(e.value) == f"{tmp_path}/{expected}"


def test_a_trial_whose_values_break_a_key_they_did_not_set_is_blamed_on_the_space_file(tmp_path):
    s = load(tmp_path, "params: {model.conv_blocks.0.kernel_size: {choices: [5, 21]}}\n")
    # kernel 21 leaves block 0 a 4x4 map (28 -> 8, pooled): block 1's default 5x5 kernel no longer fits
    what = "model.conv_blocks.1.kernel_size: 5 is larger than the 4x4 feature map it sees; use at most 4"
    for values, overrides in (({"model.conv_blocks.0.kernel_size": 21}, None), ({}, {"model.conv_blocks.0.kernel_size": 21})):
        with pytest.raises(ConfigError) as e:
            s.config_for(values, overrides)
        assert str(e.value) == f"{tmp_path / 's.yaml'}: {what}"


def test_a_fixed_list_and_a_searched_entry_of_it_are_checked_each_against_the_config_s_own_keys(tmp_path):
    # Checking `fixed`'s model.dense must leave the defaults whole for the check of params' model.dense.0.
    s = load(tmp_path, "fixed: {model.dense: [128]}\nparams: {model.dense.0: {low: 16, high: 64}}\n")
    assert s.config_for({"model.dense.0": 32}).model.dense == [32]
