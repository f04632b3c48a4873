"""The champion gate on a real MLflow store, with runs written by hand: which runs count as seeds of a
configuration, who the incumbents are, what is crowned and how it is registered, and what the test
set is spent on. Nothing here trains (the sweeps that do are in test_sweep.py): these tests run in
this process, where `make mutation` can see what they catch."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from mnist_lab import champion, tracking
from mnist_lab.champion import (LOCK_TAG, Contender, add_confirmation_runs, claim_confirmation, confirm_and_crown,
                                confirm_run_name, confirm_top, contender, current_champion, evaluate_answer,
                                made_here, ranked_trial_runs, train_round_robin)
from mnist_lab.config import Config
from mnist_lab.provenance import cpu_model

DIGEST = "sha256:d1g35t"
STUDY = "hand-made"


def config(seed: int = 0, dropout: float = 0.25, validation_size: int = 5000) -> Config:
    # float32 stated: `auto` would ask the hardware, and these scores must count as made here on any CPU.
    return Config.model_validate({"precision": "float32", "train": {"seed": seed},
                                  "model": {"dropout": dropout}, "data": {"validation_size": validation_size}})


class Lab:
    """A study's runs as train() and the sweep write them: the tags, params, metric and config.yaml
    that the champion gate reads."""

    def __init__(self):
        self.experiment_id = tracking.setup()
        self.client = MlflowClient()
        self.parent = self.client.create_run(self.experiment_id, run_name=STUDY,
                                             tags={"mnist_lab.kind": "study", "study": STUDY}).info.run_id

    def run(self, cfg: Config, tags: dict, val_accuracy: float | None, *, precision: str = "float32",
            cpu: str | None = None, digest: str = DIGEST, status: str = "FINISHED", model: bool = False) -> str:
        params = {k: str(v) for k, v in cfg.flat().items() if k.startswith(("data.", "train.seed"))}
        run_id = self.client.create_run(self.experiment_id, tags={
            "mlflow.parentRunId": self.parent, "study": STUDY, "data_digest": digest,
            "cpu_model": cpu or cpu_model(), **tags}).info.run_id
        for key, value in (params | {"precision": precision, "param_count": "1234"}).items():
            self.client.log_param(run_id, key, value)
        if val_accuracy is not None:
            self.client.log_metric(run_id, "val_accuracy", val_accuracy)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
            self.client.log_artifact(run_id, str(Path(tmp) / "config.yaml"))
        if model:  # what mlflow.keras.log_model leaves: a logged model whose source is this run
            logged = self.client.create_logged_model(self.experiment_id, source_run_id=run_id, name="model")
            self.client.finalize_logged_model(logged.model_id, "READY")
        self.client.set_terminated(run_id, status)
        return run_id

    def trial(self, number: int, val_accuracy: float, cfg: Config | None = None, state: str = "COMPLETE", **kw) -> str:
        return self.run(cfg or config(), {"mnist_lab.kind": "trial", "trial_number": str(number), "state": state},
                        val_accuracy, model=True, **kw)

    def confirmations(self, source_run_id: str, scores: dict[int, float], cfg: Config | None = None, **kw) -> None:
        for seed, accuracy in scores.items():
            self.run((cfg or config()).model_copy(update={"train": config(seed).train}),
                     {"mnist_lab.kind": "confirm", "source_run_id": source_run_id, "seed": str(seed)}, accuracy, **kw)


@pytest.fixture
def lab(store, monkeypatch, mnist_dir) -> Lab:
    monkeypatch.setattr(champion, "LOCK_SETTLE_SECONDS", 0.0)
    # The data folder is passed down as an argument, as --data-dir does: nothing may drop it on the way.
    monkeypatch.delenv("MNIST_LAB_DATA")
    tracking.model_uri.cache_clear()
    lab = Lab()
    lab.data_dir = str(mnist_dir)
    return lab


class Recorder:
    """Stands in for `train_one_seed` (which trains; test_a_confirmation_seed_is_a_run_of_its_own trains
    for real): records what it was asked to retrain, with what, and gives it a score."""

    def __init__(self, score: float = 0.99):
        self.calls, self.score = [], score

    def __call__(self, c, parent_run_id, study_name, data_dir, on_result=None):
        seed = max(c.scores, default=-1) + 1
        self.calls.append((c.label, seed, parent_run_id, study_name, data_dir, on_result))
        c.scores[seed] = self.score


def on_result(c, seed, value):  # a sentinel the callers must pass through
    pass


def no_training(*args, **kwargs):
    raise AssertionError("every contender already had its seeds: nothing should have been retrained")


def test_confirmation_runs_are_named_by_what_they_retrain():
    assert confirm_run_name("trial 3", 2) == "trial 3 seed 2 · confirm"
    assert confirm_run_name("baseline", 0) == "baseline seed 0 · confirm"
    assert confirm_run_name("current champion (version 14)", 1) == "champion v14 seed 1 · confirm"
    assert confirm_run_name("current champion", 1) == "current champion seed 1 · confirm"  # no version known


def test_a_contender_s_values_are_in_seed_order_and_its_mean_is_theirs():
    c = Contender("trial 1", 1, "run", config(), ("d", "5000", "0"), {2: 0.97, 0: 0.99, 1: 0.98})
    assert c.values == [0.99, 0.98, 0.97]
    assert c.mean == pytest.approx(0.98)


def test_a_trial_s_own_run_is_its_first_seed_only_where_it_was_made_like_this_machine_would(lab):
    here = lab.client.get_run(lab.trial(1, 0.991, config(seed=4)))
    c = contender(here, "trial 1", 1)
    assert (c.label, c.rank, c.source_run_id) == ("trial 1", 1, here.info.run_id)
    assert c.split == (DIGEST, "5000", "0") and c.scores == {4: 0.991} and c.config == config(seed=4)
    assert made_here(here, c.config)
    for other in ({"precision": "mixed_bfloat16"}, {"cpu": "another CPU"}):
        run = lab.client.get_run(lab.trial(2, 0.995, **other))
        assert not made_here(run, config()) and contender(run, "trial 2", 2).scores == {}


def test_seeds_already_trained_for_a_configuration_are_found_and_none_other(lab):
    trial = lab.trial(1, 0.990)
    other = lab.trial(2, 0.980)
    c = contender(lab.client.get_run(trial), "trial 1", 1)
    lab.confirmations(trial, {0: 0.5, 1: 0.991, 2: 0.992})  # seed 0 is the trial's own run: kept
    lab.confirmations(trial, {3: 0.7}, status="FAILED")
    lab.confirmations(trial, {4: 0.7}, precision="mixed_bfloat16")
    lab.confirmations(trial, {5: 0.7}, cpu="another CPU")
    lab.confirmations(other, {6: 0.7})
    lab.run(config(7), {"mnist_lab.kind": "trial", "source_run_id": trial, "seed": "7"}, 0.7)
    lab.run(config(8), {"mnist_lab.kind": "confirm", "source_run_id": trial, "seed": "8"}, None)  # killed before scoring
    add_confirmation_runs(lab.client, lab.experiment_id, [c])
    assert c.scores == {0: 0.990, 1: 0.991, 2: 0.992}


def test_round_robin_gives_the_fewest_seeded_one_more_seed_until_each_has_enough(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(champion, "train_one_seed", recorder)
    a, b, base = (Contender(label, 1, label, config(), ("d",), dict.fromkeys(range(n), 0.9))
                  for label, n in (("trial 1", 1), ("trial 2", 2), ("baseline", 0)))
    train_round_robin([a, b, base], 3, "parent", STUDY, "/data", None, on_result)
    # Ties go in ranking order; every call passes the study's run, name, data folder and callback on.
    assert [call[:2] for call in recorder.calls] == [("baseline", 0), ("trial 1", 1), ("baseline", 1), ("trial 1", 2),
                                                     ("trial 2", 2), ("baseline", 2)]
    assert {call[2:] for call in recorder.calls} == {("parent", STUDY, "/data", on_result)}
    assert [len(c.scores) for c in (a, b, base)] == [3, 3, 3]
    recorder.calls.clear()
    train_round_robin([Contender("late", 1, "late", config(), ("d",))], 3, "parent", STUDY, None, deadline=0.0)
    assert recorder.calls == []  # past its deadline: not one more seed


def test_a_confirmed_winner_is_registered_as_champion_with_its_evidence(lab, monkeypatch):
    monkeypatch.setattr(champion, "train_one_seed", no_training)
    best, second, baseline = lab.trial(1, 0.9930), lab.trial(2, 0.9920), lab.trial(0, 0.9900)
    lab.confirmations(best, {1: 0.9935, 2: 0.9940})
    lab.confirmations(second, {1: 0.9921, 2: 0.9922})
    lab.confirmations(baseline, {1: 0.9898, 2: 0.9902})
    ranked = [best, second, baseline, lab.trial(3, 0.9890)]  # the third trial is past top=2
    verdict = confirm_and_crown(STUDY, lab.parent, ranked, baseline, top=2, seeds=3)
    assert verdict.promoted and verdict.best.source_run_id == best and verdict.model_version == "1"
    assert [(c.label, c.rank) for c in verdict.contenders] == [("trial 1", 1), ("trial 2", 2), ("baseline", 3)]
    assert set(verdict.p_values) == {"baseline"} and verdict.p_values["baseline"] < 0.05
    assert verdict.reason.startswith("trial 1 beats baseline (0.9935 over 3 seeds")
    parent = lab.client.get_run(lab.parent)
    assert parent.data.tags["confirmation"] == verdict.reason and LOCK_TAG not in parent.data.tags
    version = lab.client.get_model_version_by_alias(tracking.MODEL_NAME, tracking.CHAMPION_ALIAS)
    assert str(version.version) == "1" and version.run_id == best
    assert version.tags == {"study": STUDY, "trial": "1", "source_run_id": best, "data_digest": DIGEST,
                            "validation_size": "5000", "data.seed": "0", "val_accuracy_seed_mean": "0.9935",
                            "val_accuracy_seeds": "0.9930, 0.9935, 0.9940",
                            "p_vs_baseline": f"{verdict.p_values['baseline']:.3g}"}
    assert version.description == (f"trial 1 of study {STUDY} (run {best}, 1234 parameters): validation accuracy 0.9935 "
                                   f"mean over 3 training seeds (0.9930, 0.9935, 0.9940). {verdict.reason}.")
    described = lab.client.get_registered_model(tracking.MODEL_NAME).description
    assert described.startswith("MNIST digit classifiers crowned by mnist-lab sweeps. The @champion alias is the one")
    assert described.endswith(" over training seeds against the baseline and the previous champion; `mnist-lab predict` uses it.")
    assert current_champion(lab.client)[1].info.run_id == best
    # A version registered from no run (by hand, from a file) is a champion with no run to read.
    unsourced = lab.client.create_model_version(tracking.MODEL_NAME, str(lab.data_dir))
    lab.client.set_registered_model_alias(tracking.MODEL_NAME, tracking.CHAMPION_ALIAS, unsourced.version)
    assert current_champion(lab.client)[0].version == unsourced.version and current_champion(lab.client)[1] is None
    lab.client.set_registered_model_alias(tracking.MODEL_NAME, tracking.CHAMPION_ALIAS, version.version)

    # A second study must beat the baseline and the champion; its runs' scores are on the same images.
    lab.client.update_registered_model(tracking.MODEL_NAME, description="kept as the team wrote it")
    challenger = lab.trial(5, 0.9960)
    lab.confirmations(challenger, {1: 0.9962, 2: 0.9958})
    verdict = confirm_and_crown(STUDY, lab.parent, [challenger, baseline], baseline, top=1, seeds=3)
    assert [(c.label, c.rank) for c in verdict.contenders] == [
        ("trial 5", 1), ("baseline", 2), ("current champion (version 1)", 3)]
    assert verdict.promoted and set(verdict.p_values) == {"baseline", "current champion (version 1)"}
    version = lab.client.get_model_version_by_alias(tracking.MODEL_NAME, tracking.CHAMPION_ALIAS)
    assert str(version.version) == verdict.model_version == "3" and version.run_id == challenger  # 2 is the unsourced one
    assert {"p_vs_baseline", "p_vs_current_champion"} <= set(version.tags)
    assert lab.client.get_registered_model(tracking.MODEL_NAME).description == "kept as the team wrote it"


def test_the_contender_judged_is_the_best_by_seed_mean_not_by_its_search_score(lab, monkeypatch):
    monkeypatch.setattr(champion, "train_one_seed", no_training)
    lucky, steady, baseline = lab.trial(1, 0.9960), lab.trial(2, 0.9930), lab.trial(0, 0.9900)
    lab.confirmations(lucky, {1: 0.9890, 2: 0.9895})  # the search's best by one lucky seed
    lab.confirmations(steady, {1: 0.9935, 2: 0.9940})
    lab.confirmations(baseline, {1: 0.9898, 2: 0.9902})
    verdict = confirm_and_crown(STUDY, lab.parent, [lucky, steady, baseline], baseline, top=2, seeds=3)
    assert verdict.best.label == "trial 2" and verdict.promoted and verdict.reason.startswith("trial 2 beats baseline")


def test_what_is_not_better_than_every_incumbent_is_not_crowned(lab, monkeypatch):
    monkeypatch.setattr(champion, "train_one_seed", no_training)
    trial, baseline = lab.trial(1, 0.9905), lab.trial(0, 0.9900)
    lab.confirmations(trial, {1: 0.9895, 2: 0.9902})
    lab.confirmations(baseline, {1: 0.9903, 2: 0.9899})
    verdict = confirm_and_crown(STUDY, lab.parent, [trial, baseline], baseline, top=3, seeds=3)
    assert not verdict.promoted and verdict.model_version is None and current_champion(lab.client) == (None, None)
    assert verdict.reason.startswith("no confirmed improvement: trial 1 (0.9901) does not beat baseline with p < 0.05")
    assert lab.client.get_run(lab.parent).data.tags["confirmation"] == verdict.reason
    # Under the floor: nothing is crowned whatever it beats.
    lab.confirmations(trial, {3: 0.9990, 4: 0.9991})
    verdict = confirm_and_crown(STUDY, lab.parent, [trial, baseline], baseline, top=1, seeds=3, floor=0.9999)
    assert not verdict.promoted and "under the floor" in verdict.reason


def test_the_baseline_as_the_best_trial_or_no_trial_at_all_crowns_nothing(lab, monkeypatch):
    monkeypatch.setattr(champion, "train_one_seed", no_training)
    baseline = lab.trial(0, 0.9950)
    verdict = confirm_and_crown(STUDY, lab.parent, [baseline], baseline, top=3, seeds=1)
    assert verdict.promoted is False and verdict.reason == "no confirmed improvement: the baseline is the best trial"
    assert [c.label for c in verdict.contenders] == ["baseline"]
    verdict = confirm_and_crown(STUDY, lab.parent, [], baseline, 3, 3)
    assert verdict.promoted is False and verdict.reason == "no confirmed improvement: no trial completed"


def test_a_champion_scored_on_other_validation_images_is_neither_retrained_nor_compared(lab, monkeypatch):
    monkeypatch.setattr(champion, "train_one_seed", no_training)
    old = lab.trial(9, 0.9990, config(validation_size=10000), digest="sha256:other")
    lab.client.create_registered_model(tracking.MODEL_NAME)
    version = lab.client.create_model_version(tracking.MODEL_NAME, tracking.model_uri(old), run_id=old)
    lab.client.set_registered_model_alias(tracking.MODEL_NAME, tracking.CHAMPION_ALIAS, version.version)
    trial, baseline = lab.trial(1, 0.9930), lab.trial(0, 0.9900)
    lab.confirmations(trial, {1: 0.9935, 2: 0.9940})
    lab.confirmations(baseline, {1: 0.9898, 2: 0.9902})
    verdict = confirm_and_crown(STUDY, lab.parent, [trial, baseline], baseline, top=1, seeds=3)
    assert not verdict.promoted and "current champion (version 1) was scored on other validation images" in verdict.reason
    assert [len(c.scores) for c in verdict.contenders] == [3, 3, 1]


def test_a_finished_study_run_again_does_not_crown_its_champion_twice(lab, monkeypatch):
    monkeypatch.setattr(champion, "train_one_seed", no_training)
    trial, baseline = lab.trial(1, 0.9930), lab.trial(0, 0.9900)
    lab.confirmations(trial, {1: 0.9935, 2: 0.9940})
    lab.confirmations(baseline, {1: 0.9898, 2: 0.9902})
    assert confirm_and_crown(STUDY, lab.parent, [trial, baseline], baseline, top=1, seeds=3).model_version == "1"
    again = confirm_and_crown(STUDY, lab.parent, [trial, baseline], baseline, top=1, seeds=3)
    assert again.promoted is False and again.model_version == "1" and again.best.source_run_id == trial
    assert again.reason == "trial 1 is already mnist-cnn@champion (version 1)"
    assert lab.client.get_run(lab.parent).data.tags["confirmation"] == again.reason
    assert [c.label for c in again.contenders] == ["trial 1", "baseline"]  # the champion is no incumbent of itself
    assert len(lab.client.search_model_versions(f"name = '{tracking.MODEL_NAME}'")) == 1


def test_one_worker_of_a_study_confirms_and_the_others_defer_to_it(lab, monkeypatch):
    assert claim_confirmation(lab.client, lab.parent)  # nobody held it
    mine = lab.client.get_run(lab.parent).data.tags[LOCK_TAG]
    assert mine.startswith(tracking.worker_id() + "@")
    # A live worker's fresh claim (this very process's) holds: the others defer.
    assert not claim_confirmation(lab.client, lab.parent)
    verdict = confirm_and_crown(STUDY, lab.parent, ["some-run"], None, 1, 3)
    assert verdict.deferred and verdict.promoted is False
    assert verdict.reason == "another worker of this study is running its confirmation; its verdict goes on the study's run"
    assert lab.client.get_run(lab.parent).data.tags[LOCK_TAG] == mine  # the deferring one leaves the claim alone
    # A dead worker's claim, or a claim from before the stale limit, is taken over.
    lab.client.set_tag(lab.parent, LOCK_TAG, f"{tracking.worker_id(2**22 + 1)}@{mine.rpartition('@')[2]}")
    assert claim_confirmation(lab.client, lab.parent)
    lab.client.set_tag(lab.parent, LOCK_TAG, f"{tracking.worker_id()}@{float(mine.rpartition('@')[2]) - champion.LOCK_STALE_SECONDS - 5}")
    assert claim_confirmation(lab.client, lab.parent)
    # Another claim landing while this one settles wins: the last written.
    monkeypatch.setattr(champion.time, "sleep", lambda s: lab.client.set_tag(lab.parent, LOCK_TAG, "other:1@1"))
    lab.client.delete_tag(lab.parent, LOCK_TAG)
    assert not claim_confirmation(lab.client, lab.parent)


def test_the_test_set_is_spent_once_and_only_on_a_model_worth_it(lab):
    crowned, weak = lab.trial(1, 0.99), lab.trial(2, 0.5)
    unscored = lab.run(config(), {"mnist_lab.kind": "trial", "trial_number": "3", "state": "COMPLETE"}, None)
    lab.client.log_metric(crowned, "test_accuracy", 0.9912)  # evaluated before: reused, not recomputed
    lab.client.log_metric(weak, "test_accuracy", 0.4)
    won = champion.Verdict(True, "won", Contender("trial 1", 1, crowned, config(), ("d",)))
    assert evaluate_answer(won, weak, floor=0.9) == {"run_id": crowned, "test_accuracy": 0.9912}
    lost = champion.Verdict(False, "lost")
    assert evaluate_answer(lost, crowned, floor=0.9) == {"run_id": crowned, "test_accuracy": 0.9912}  # the search's best
    assert evaluate_answer(lost, weak, floor=0.9) is None  # under the floor: the test set is not spent on it
    assert evaluate_answer(lost, weak, floor=0.0) == {"run_id": weak, "test_accuracy": 0.4}
    assert evaluate_answer(lost, weak, floor=0.5) == {"run_id": weak, "test_accuracy": 0.4}  # at the floor is not under it
    assert evaluate_answer(lost, unscored, floor=0.5) is None  # no validation score: nothing shown worth it
    assert evaluate_answer(champion.Verdict(False, "deferred", deferred=True), crowned, floor=0.0) is None


def test_a_study_s_trials_are_ranked_by_its_objective_and_nothing_else_is(lab):
    good, best, worst = lab.trial(1, 0.98), lab.trial(2, 0.99), lab.trial(3, 0.97)
    lab.trial(4, 1.0, state="PRUNED")
    lab.confirmations(best, {1: 1.0})
    lab.run(config(), {"mnist_lab.kind": "trial", "trial_number": "5", "state": "COMPLETE", "study": "another"}, 1.0)
    elsewhere = lab.client.create_run(lab.experiment_id, tags={"mnist_lab.kind": "study", "study": STUDY}).info.run_id
    lab.run(config(), {"mnist_lab.kind": "trial", "trial_number": "6", "state": "COMPLETE", "mlflow.parentRunId": elsewhere}, 1.0)
    parent = lab.client.get_run(lab.parent)
    assert [r.info.run_id for r in ranked_trial_runs(lab.client, parent, "val_accuracy", True)] == [best, good, worst]
    assert [r.info.run_id for r in ranked_trial_runs(lab.client, parent, "val_accuracy", False)] == [worst, good, best]


def test_confirm_adds_seeds_to_a_finished_study_s_top_trials(lab, monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(champion, "train_one_seed", recorder)
    with pytest.raises(champion.MnistLabError, match=f"study {STUDY}: no complete trial to confirm"):
        confirm_top(lab.experiment_id, None, top=2, seeds=3)
    for number, accuracy, loss in ((1, 0.991, 0.03), (2, 0.990, 0.02), (3, 0.992, 0.05)):
        run_id = lab.trial(number, accuracy)
        lab.client.log_metric(run_id, "val_loss", loss)
        lab.client.log_metric(run_id, "test_accuracy", 0.99)
        if number == 1:
            lab.confirmations(run_id, {1: 0.99})
    # A study that recorded no objective was a search for the highest val_accuracy.
    contenders = confirm_top(lab.experiment_id, STUDY, top=2, seeds=2, data_dir=lab.data_dir, on_result=on_result)
    assert [(c.label, c.rank, len(c.scores)) for c in contenders] == [("trial 3", 1, 2), ("trial 1", 2, 2)]
    assert recorder.calls == [("trial 3", 1, lab.parent, STUDY, lab.data_dir, on_result)]
    recorder.calls.clear()
    lab.client.set_tag(lab.parent, "objective", "minimize val_loss, maximize val_accuracy")
    contenders = confirm_top(lab.experiment_id, STUDY, top=2, seeds=3, data_dir=lab.data_dir)
    assert [(c.label, c.rank, len(c.scores)) for c in contenders] == [("trial 2", 1, 3), ("trial 1", 2, 3)]
    assert [call[:2] for call in recorder.calls] == [("trial 2", 1), ("trial 2", 2), ("trial 1", 2)]


def test_a_baseline_not_in_the_space_is_confirmed_from_its_config_and_every_seed_trained_is_passed_on(lab, monkeypatch):
    from mnist_lab import data

    recorder = Recorder(score=0.9900)
    monkeypatch.setattr(champion, "train_one_seed", recorder)
    digest = data.load_split(config().data, lab.data_dir).digest
    trial = lab.trial(1, 0.9930, digest=digest)
    lab.confirmations(trial, {1: 0.9935, 2: 0.9940}, digest=digest)
    # The baseline's seeds are filed under the study's own run (it has no trial run).
    lab.confirmations(lab.parent, {0: 0.9898}, digest=digest)
    late = confirm_and_crown(STUDY, lab.parent, [trial], config(), top=1, seeds=3, data_dir=lab.data_dir, deadline=0.0)
    assert recorder.calls == [] and late.promoted is False and "baseline 1 seeds" in late.reason
    verdict = confirm_and_crown(STUDY, lab.parent, [trial], config(), top=1, seeds=3, data_dir=lab.data_dir,
                                deadline=time.time() + 3600, on_result=on_result)
    assert [(c.label, c.rank, c.source_run_id) for c in verdict.contenders] == [("trial 1", 1, trial), ("baseline", 2, lab.parent)]
    assert recorder.calls == [("baseline", 1, lab.parent, STUDY, lab.data_dir, on_result),
                              ("baseline", 2, lab.parent, STUDY, lab.data_dir, on_result)]
    assert verdict.promoted and verdict.contenders[1].values == [0.9898, 0.9900, 0.9900]


def tiny_model_run(lab: Lab, number: int) -> str:
    """A trial run with a real (untrained, tiny) Keras model logged as train() logs one."""
    import mlflow.keras

    from mnist_lab.model import build_model

    cfg = Config.model_validate({"precision": "float32", "model": {"conv_blocks": [{"filters": 2}], "dense": [8]}})
    run_id = lab.trial(number, 0.95, cfg)
    with mlflow.start_run(run_id=run_id):
        mlflow.keras.log_model(build_model(cfg), name="model")
    tracking.model_uri.cache_clear()
    return run_id


def test_the_one_test_evaluation_scores_the_run_s_own_model_on_the_test_images(lab, monkeypatch):
    from mnist_lab import data

    run_id = tiny_model_run(lab, 1)
    won = champion.Verdict(True, "won", Contender("trial 1", 1, run_id, config(), ("d",)))
    answer = evaluate_answer(won, "unused", floor=0.9, data_dir=lab.data_dir)
    logged = lab.client.get_run(run_id).data.metrics
    assert answer == {"run_id": run_id, "test_accuracy": logged["test_accuracy"]} and "test_loss" in logged
    # What the model predicts for the 10,000 test images, counted here: not a value from the run.
    import mlflow.keras

    x_test, y_test = data.load_test(lab.data_dir)
    predicted = mlflow.keras.load_model(tracking.model_uri(run_id)).predict(data.to_model_input(x_test), verbose=0).argmax(1)
    assert answer["test_accuracy"] == pytest.approx(float((predicted == y_test).mean()))
    # `confirm` evaluates each configuration it confirmed that has no test score yet.
    other = tiny_model_run(lab, 2)
    monkeypatch.setattr(champion, "train_one_seed", Recorder())
    confirm_top(lab.experiment_id, STUDY, top=2, seeds=2, data_dir=lab.data_dir)
    assert "test_accuracy" in lab.client.get_run(other).data.metrics


def test_a_confirmation_seed_is_the_lowest_missing_one_filed_with_what_reads_it_back():
    c = Contender("trial 3", 2, "source-run", config(seed=7), ("d",), {0: 0.5, 2: 0.5})
    seed, seeded, name, tags = champion.confirmation_run(c, STUDY)
    assert (seed, seeded, name) == (1, config(seed=1), "trial 3 seed 1 · confirm")
    assert tags == {"mnist_lab.kind": "confirm", "study": STUDY, "source_run_id": "source-run", "source_label": "trial 3",
                    "config_rank": "2", "seed": "1", "state": "CONFIRM", "worker": tracking.worker_id(), "source_trial": "3"}
    assert c.config == config(seed=7)  # the contender's own config is left as it was
    # An incumbent's label is its source as it is; a contender with no seed yet starts at 0.
    seed, _, name, tags = champion.confirmation_run(Contender("baseline", 3, "parent", config(), ("d",)), STUDY)
    assert (seed, name, tags["source_trial"], tags["seed"], tags["config_rank"]) == (0, "baseline seed 0 · confirm", "baseline", "0", "3")
    assert champion.confirmation_run(Contender("b", 3, "p", config(), ("d",), {0: 0.1, 1: 0.2}), STUDY)[0] == 2


def test_a_confirmation_seed_is_a_run_of_its_own_under_the_study(lab):
    """train_one_seed trains for real: the lowest seed the configuration lacks, filed under the study's
    run with what the report and the next confirmation read back."""
    cfg = Config.model_validate({"precision": "float32", "data": {"train_size": 300, "validation_size": 200},
                                 "train": {"epochs": 1}, "model": {"conv_blocks": [{"filters": 2}], "dense": [8]}})
    c = Contender("trial 3", 2, "source-run", cfg, ("d",), {0: 0.5, 2: 0.5})
    heard = []
    champion.train_one_seed(c, lab.parent, STUDY, lab.data_dir, on_result=lambda *a: heard.append(a))
    [run] = lab.client.search_runs([lab.experiment_id], "tags.`mnist_lab.kind` = 'confirm'")
    assert run.info.run_name == "trial 3 seed 1 · confirm" and run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in ("mlflow.parentRunId", "study", "source_run_id", "source_label", "config_rank",
                                           "seed", "state", "worker", "source_trial")} == {
        "mlflow.parentRunId": lab.parent, "study": STUDY, "source_run_id": "source-run", "source_label": "trial 3",
        "config_rank": "2", "seed": "1", "state": "CONFIRM", "worker": tracking.worker_id(), "source_trial": "3"}
    assert run.data.params["train.seed"] == "1" and run.data.params["data.train_size"] == "300"
    assert c.scores[1] == pytest.approx(run.data.metrics["val_accuracy"]) and heard == [(c, 1, c.scores[1])]
    assert lab.client.search_logged_models([lab.experiment_id]) == []  # seeds are scores, not models to keep
    # An incumbent's label is its source tag as it is.
    base = Contender("baseline", 3, lab.parent, cfg, ("d",), {0: 0.5, 1: 0.5})
    champion.train_one_seed(base, lab.parent, STUDY, lab.data_dir)
    [run] = lab.client.search_runs([lab.experiment_id], "tags.source_label = 'baseline'")
    assert (run.info.run_name, run.data.tags["source_trial"], run.data.tags["seed"]) == ("baseline seed 2 · confirm", "baseline", "2")


def test_a_baseline_no_trial_ran_is_confirmed_from_its_config_on_the_study_s_validation_images(lab):
    from mnist_lab import data

    base = champion.baseline_contender(config(), lab.parent, 4, lab.data_dir)
    assert (base.label, base.rank, base.source_run_id, base.config, base.scores) == ("baseline", 4, lab.parent, config(), {})
    # As a trial's run records it (MLflow holds params as text), so the two compare.
    assert base.split == (data.load_split(config().data, lab.data_dir).digest, "5000", "0")
    assert base.split == contender(lab.client.get_run(lab.trial(1, 0.99, digest=base.split[0])), "trial 1", 1).split


def test_with_two_workers_the_seeds_train_two_at_a_time_in_processes_of_one_thread_each(lab):
    """parallel.round_robin trains for real in spawned processes: every contender gets its missing seeds,
    no seed twice, each a run under the study's run, with one TensorFlow thread per process on 2 cores;
    nothing starts after the deadline, and a training's error reaches the caller."""
    cfg = Config.model_validate({"precision": "float32", "data": {"train_size": 300, "validation_size": 200},
                                 "train": {"epochs": 1}, "model": {"conv_blocks": [{"filters": 2}], "dense": [8]}})
    a, b = Contender("trial 3", 1, "run-a", cfg, ("d",), {0: 0.5}), Contender("baseline", 2, "run-b", cfg, ("d",))
    heard = []
    train_round_robin([a, b], 3, lab.parent, STUDY, lab.data_dir, None, lambda c, seed, v: heard.append((c.label, seed)),
                      workers=2)
    assert sorted(a.scores) == [0, 1, 2] and sorted(b.scores) == [0, 1, 2] and a.scores[0] == 0.5
    assert sorted(heard) == [("baseline", 0), ("baseline", 1), ("baseline", 2), ("trial 3", 1), ("trial 3", 2)]
    runs = lab.client.search_runs([lab.experiment_id], "tags.`mnist_lab.kind` = 'confirm'")
    assert sorted((r.data.tags["source_label"], r.data.tags["seed"]) for r in runs) == [
        ("baseline", "0"), ("baseline", "1"), ("baseline", "2"), ("trial 3", "1"), ("trial 3", "2")]
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == lab.parent
        assert r.data.tags["worker"] == tracking.worker_id()  # the main process ends them if it is stopped
        assert r.data.tags["tensorflow_threads"] == str(max(1, (os.cpu_count() or 1) // 2))
        c = a if r.data.tags["source_label"] == "trial 3" else b
        assert c.scores[int(r.data.tags["seed"])] == pytest.approx(r.data.metrics["val_accuracy"])
    late = Contender("late", 1, "late", cfg, ("d",))
    train_round_robin([late], 3, lab.parent, STUDY, lab.data_dir, 0.0, workers=2)
    assert late.scores == {}
    with pytest.raises(Exception, match="no-such-folder"):  # one seed to train: one process
        train_round_robin([Contender("bad", 1, "bad", cfg, ("d",), {0: 0.5})], 2, lab.parent, STUDY, "/no-such-folder", None,
                          workers=2)


def test_a_stop_during_a_parallel_confirmation_ends_every_worker_process_at_once(lab):
    """Ctrl-C or SIGTERM reach the main process as KeyboardInterrupt, here raised as the first seed is
    heard while a long one trains: it propagates, no worker process is left (none trains on), and the
    cut seed's run is left tagged with the main process, whose stop ends it KILLED."""
    import multiprocessing

    quick = Config.model_validate({"precision": "float32", "data": {"train_size": 300, "validation_size": 200},
                                   "train": {"epochs": 1}, "model": {"conv_blocks": [{"filters": 2}], "dense": [8]}})
    slow = quick.model_copy(update={"train": quick.train.model_copy(update={"epochs": 300})})
    a, b = Contender("trial 1", 1, "run-a", quick, ("d",), {0: 0.5}), Contender("baseline", 2, "run-b", slow, ("d",))

    def stop(c, seed, value):
        raise KeyboardInterrupt

    started = time.time()
    with pytest.raises(KeyboardInterrupt):
        train_round_robin([a, b], 2, lab.parent, STUDY, lab.data_dir, None, stop, workers=2)
    assert not multiprocessing.active_children() and time.time() - started < 120
    runs = lab.client.search_runs([lab.experiment_id], "tags.`mnist_lab.kind` = 'confirm'")
    assert {(r.data.tags["source_label"], r.info.status) for r in runs} == {("trial 1", "FINISHED"), ("baseline", "RUNNING")}
    assert {r.data.tags["worker"] for r in runs} == {tracking.worker_id()}
