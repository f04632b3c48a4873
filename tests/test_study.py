"""The confirmation gate: a configuration is crowned only when it beats every incumbent over seeds."""

import pytest

from mnist_lab.config import Config
from mnist_lab.study import ALPHA, Contender, judge, welch_greater

SPLIT = ("sha256:abc", "5000", "0")


def contender(label, scores, split=SPLIT):
    return Contender(label, 1, f"run-{label}", Config(), split, dict(enumerate(scores)))


def test_welch_one_sided():
    assert welch_greater([0.995, 0.994, 0.996], [0.990, 0.991, 0.989]) < 0.01
    assert welch_greater([0.990, 0.991, 0.989], [0.995, 0.994, 0.996]) > 0.99  # the other way round
    assert 0.2 < welch_greater([0.991, 0.993, 0.989], [0.990, 0.992, 0.990]) < 0.8  # overlapping: noise
    assert welch_greater([0.99, 0.99], [0.98, 0.98]) == 0.0 and welch_greater([0.99, 0.99], [0.99, 0.99]) == 1.0
    with pytest.raises(ValueError):
        welch_greater([0.99], [0.98, 0.97])


def test_a_clear_winner_is_crowned():
    best = contender("trial 7", [0.9945, 0.9941, 0.9948])
    promoted, reason, p = judge(best, [contender("baseline", [0.9900, 0.9896, 0.9905])])
    assert promoted and p["baseline"] < ALPHA and reason.startswith("trial 7 beats baseline")


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
    assert "current champion (version 2)" in reason and "baseline" not in reason.split("does not beat")[1].split("(")[0]


def test_runs_on_other_validation_images_are_not_compared():
    best = contender("trial 7", [0.9945, 0.9941, 0.9948])
    other = contender("current champion (version 1)", [0.90, 0.91, 0.90], split=("sha256:abc", "0.3", "0"))
    promoted, reason, p = judge(best, [other])
    assert not promoted and not p and "other validation images" in reason


def test_one_seed_is_not_evidence():
    promoted, reason, _ = judge(contender("trial 7", [0.999]), [contender("baseline", [0.98, 0.981])])
    assert not promoted and "at least 2" in reason
