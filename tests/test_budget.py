"""mnist_lab/sweep/budget.py on its own, on real Optuna studies built trial by trial: what counts,
what ranks first, and which sentence says why a search stopped."""

import datetime
import time

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from mnist_lab.sweep import budget
from mnist_lab.sweep.space import load_space

NOW = datetime.datetime.now()


def space_of(tmp_path, text="params: {train.epochs: {low: 1, high: 3}}\nbudget: {n_trials: 4, timeout: 1000, max_consecutive_failures: 2}\n"
                            "confirm: {top: 2, seeds: 3, reserve: 0.05}\n"):
    (tmp_path / "s.yaml").write_text(text)
    return load_space(tmp_path / "s.yaml")


def add(study, state: str, value=None, seconds=10, ended_ago=0, **attrs):
    complete = NOW - datetime.timedelta(seconds=ended_ago)
    study.add_trial(optuna.trial.FrozenTrial(
        number=0, trial_id=0, state=TrialState[state], value=value if not isinstance(value, list) else None,
        values=value if isinstance(value, list) else None,
        datetime_start=complete - datetime.timedelta(seconds=seconds),
        datetime_complete=None if state == "RUNNING" else complete, params={"train.epochs": 2},
        distributions={"train.epochs": IntDistribution(1, 3)}, user_attrs=attrs, system_attrs={}, intermediate_values={}))


def test_counts_tell_the_space_s_failures_from_lost_workers_and_skip_surplus_trials():
    study = optuna.create_study(direction="maximize")
    add(study, "COMPLETE", 0.99, surplus=True)  # a worker's extra trial past the budget: not counted at all
    for _ in range(2):
        add(study, "COMPLETE", 0.9)
        add(study, "RUNNING")
        add(study, "FAIL", fail_reason="kernel larger than the map")
    add(study, "PRUNED")
    add(study, "PRUNED")
    add(study, "PRUNED")
    add(study, "FAIL")  # no reason: its worker was killed
    add(study, "FAIL", fail_reason="x", interrupted=True)  # Ctrl-C: lost, not the space's fault
    c = budget.count(study)
    assert (c.complete, c.pruned, c.fail, c.lost, c.running, c.finished) == (2, 3, 2, 2, 2, 5)
    assert str(c) == "2 complete, 3 pruned, 2 failed, 2 lost to kills"


def test_failures_in_a_row_count_back_from_the_latest_by_time_not_number():
    study = optuna.create_study(direction="maximize")
    assert budget.failures_in_a_row(study) == 0
    add(study, "FAIL", fail_reason="a", ended_ago=50)
    add(study, "COMPLETE", 0.9, ended_ago=40)
    add(study, "FAIL", fail_reason="b", ended_ago=10)
    add(study, "FAIL", fail_reason="c", ended_ago=30)  # a lower number might end later: time decides
    add(study, "FAIL", ended_ago=5)  # a killed worker is not the space's failure
    add(study, "PRUNED", ended_ago=1, surplus=True)  # nor does a surplus trial break the row
    assert budget.failures_in_a_row(study) == 2
    add(study, "PRUNED", ended_ago=0)
    assert budget.failures_in_a_row(study) == 0
    by_time = optuna.create_study(direction="maximize")
    add(by_time, "FAIL", fail_reason="a", ended_ago=50)
    add(by_time, "FAIL", fail_reason="b", ended_ago=20)
    add(by_time, "COMPLETE", 0.9, ended_ago=30)  # the highest number, but not the last to end
    assert budget.failures_in_a_row(by_time) == 1


def test_ranked_orders_by_the_objective_s_direction_and_a_pareto_front_by_val_accuracy(tmp_path):
    space = space_of(tmp_path)
    study = optuna.create_study(direction="maximize")
    for v in (0.97, 0.99, 0.98):
        add(study, "COMPLETE", v)
    add(study, "PRUNED")
    assert [t.value for t in budget.ranked(study, space)] == [0.99, 0.98, 0.97]
    loss = space_of(tmp_path, "objective: [{metric: val_loss, direction: minimize}]\nparams: {train.epochs: {low: 1, high: 3}}\n")
    study = optuna.create_study(direction="minimize")
    for v in (0.3, 0.1, 0.2):
        add(study, "COMPLETE", v)
    assert [t.value for t in budget.ranked(study, loss)] == [0.1, 0.2, 0.3]
    two = space_of(tmp_path, "objective: [{metric: param_count, direction: minimize}, val_accuracy]\nsampler: nsga2\npruner: none\n"
                             "params: {train.epochs: {low: 1, high: 3}}\n")
    study = optuna.create_study(directions=["minimize", "maximize"])
    for values in ([100, 0.95], [200, 0.99], [300, 0.98], [50, 0.90]):  # [300, 0.98] is dominated by [200, 0.99]
        add(study, "COMPLETE", values)
    assert [t.values for t in budget.ranked(study, two)] == [[200, 0.99], [100, 0.95], [50, 0.90]]


def test_confirmation_time_without_the_baseline_in_the_space_counts_all_its_seeds(tmp_path):
    space = space_of(tmp_path)
    study = optuna.create_study(direction="maximize")
    assert budget.confirmation_seconds(study, space) == 0
    add(study, "COMPLETE", 0.99, seconds=60)
    add(study, "COMPLETE", 0.98, seconds=30)
    add(study, "COMPLETE", 0.97, seconds=500)  # third: not confirmed with top 2
    # 2 more seeds of each contender, and 3 seeds of the baseline guessed as long as the best
    assert budget.confirmation_seconds(study, space) == pytest.approx(2 * (60 + 30) + 3 * 60, abs=1)


def test_the_baseline_is_confirmed_beside_the_top_trials_not_as_one_of_them(tmp_path):
    space = space_of(tmp_path)
    study = optuna.create_study(direction="maximize")
    add(study, "COMPLETE", 0.999, seconds=100, baseline=True)  # best, but it is the incumbent
    add(study, "COMPLETE", 0.99, seconds=60)
    add(study, "COMPLETE", 0.98, seconds=30)
    add(study, "COMPLETE", 0.97, seconds=500)
    add(study, "RUNNING", seconds=5)
    assert budget.confirmation_seconds(study, space) == pytest.approx(2 * (100 + 60 + 30), abs=1)
    # trained two at a time (two workers): half the seconds; four at a time: never less than the longest seed
    assert budget.confirmation_seconds(study, space, workers=2) == pytest.approx(2 * (100 + 60 + 30) / 2, abs=1)
    assert budget.confirmation_seconds(study, space, workers=8) == pytest.approx(100, abs=1)
    # and the search keeps only that much free: at 1 worker the same end leaves no room
    # (the next trial: the 75th percentile of 30, 60, 100 and 500 s is 200 s; the confirmation 190 s at 2, 380 s at 1)
    end = time.time() + 200 + 190 + 10
    assert budget.search_time_left(study, space, end, workers=2) and not budget.search_time_left(study, space, end)
    assert budget.trial_seconds(study.trials[-1]) is None and budget.trial_seconds(study.trials[1]) == pytest.approx(60)


def test_the_next_trial_is_guessed_at_the_75th_percentile_and_a_reserve_stays_free(tmp_path):
    space = space_of(tmp_path, "params: {train.epochs: {low: 1, high: 3}}\nbudget: {n_trials: 40, timeout: 1000}\n"
                               "confirm: {top: 1, seeds: 3, reserve: 0.05}\n")
    study = optuna.create_study(direction="maximize")
    # nothing finished yet: the next trial is guessed at 0 s; 5% of 1000 s stays free
    assert budget.search_time_left(study, space, time.time() + 50.5)
    assert not budget.search_time_left(study, space, time.time() + 49.5)
    for seconds in (10, 20, 30, 40, 50):
        add(study, "PRUNED", seconds=seconds)
    assert budget.search_time_left(study, space, time.time() + 50 + 40.3)  # the 75th percentile is 40 s
    assert not budget.search_time_left(study, space, time.time() + 50 + 39.7)


def test_why_a_search_stopped_and_whether_it_goes_on_to_its_confirmation(tmp_path):
    space = space_of(tmp_path)
    study = optuna.create_study(direction="maximize")
    far = time.time() + 10_000
    assert budget.may_start_another(study, space, far) and budget.may_start_another(study, space, None)
    assert budget.why_stopped(study, space, far) == (
        "stopped with 0 of 4 trials finished; run the same command again to resume", False)
    add(study, "COMPLETE", 0.9, seconds=100)
    # time: the next trial (100 s) and the confirmation (2 x 100 s for the one contender, 3 x 100 s for the
    # baseline it lacks) must fit, and at least 5% of the 1000 s budget stays free
    assert budget.may_start_another(study, space, time.time() + 100 + 500 + 10)
    assert not budget.may_start_another(study, space, time.time() + 100 + 500 - 10)
    assert budget.why_stopped(study, space, time.time() + 550) == (
        "stopped: the study's time budget (1000 s) has room only for the confirmation, after 1 finished trials", True)
    add(study, "FAIL", fail_reason="kernel larger than the map")
    assert budget.may_start_another(study, space, far)
    add(study, "FAIL", fail_reason="loss diverged to nan" + " in a long message" * 20)
    assert not budget.may_start_another(study, space, far)
    said, done = budget.why_stopped(study, space, far)
    reason = ("loss diverged to nan" + " in a long message" * 20)[:200]  # the first 200 characters
    assert not done and said == (f"stopped: 2 trials failed in a row (the last: {reason}), the limit "
                                 "budget.max_consecutive_failures; 1 of 4 trials finished. Fix the space, or raise the "
                                 "limit, and run again to resume")
    for _ in range(3):
        add(study, "PRUNED")
    assert not budget.may_start_another(study, space, far)
    assert budget.why_stopped(study, space, far) == ("stopped: the budget of 4 finished trials is reached", True)


def test_without_a_trial_cap_only_the_time_budget_stops_the_search(tmp_path):
    space = space_of(tmp_path, "params: {train.epochs: {low: 1, high: 3}}\nbudget: {timeout: 1000}\n")
    assert space.space.budget.n_trials is None
    study = optuna.create_study(direction="maximize")
    for _ in range(30):
        add(study, "PRUNED")
    far = time.time() + 10_000
    assert budget.may_start_another(study, space, far)
    assert budget.why_stopped(study, space, far) == (
        "stopped with 30 trials finished; run the same command again to resume", False)
    assert budget.why_stopped(study, space, time.time()) == (
        "stopped: the study's time budget (1000 s) has room only for the confirmation, after 30 finished trials", True)
    # with neither bound, the old default: 20 trials
    assert space_of(tmp_path, "params: {train.epochs: {low: 1, high: 3}}\n").space.budget.n_trials == 20


def test_the_study_s_time_is_the_union_of_its_invocations_spans():
    study = optuna.create_study()
    assert budget.spent_seconds(study) == 0
    for key, span in {"a": [100, 200], "b": [150, 260], "c": [1000, 1010], "d": [120, 130]}.items():
        study.set_user_attr(budget.SPAN_PREFIX + key, span)
    study.set_user_attr("mlflow_parent_run_id", "not a span")
    assert budget.spent_seconds(study) == 170  # 100-260 (a, b and d overlap) and 1000-1010
    clock = budget.Clock(study, 1000)
    assert abs(clock.end - (clock.started + 830)) < 1e-6 and budget.Clock(study, None).end is None
    clock.tick()
    assert study.user_attrs[clock.key][0] == clock.started and budget.spent_seconds(study) >= 170


def test_a_halt_keeps_the_first_fault_and_tells_a_signal_from_a_lost_store():
    halt = budget.Halt()
    assert not halt.is_set() and halt.fault is None
    halt.set()
    assert halt.is_set() and halt.fault is None
    lost = budget.Halt()
    lost.set("the disk is full")
    lost.set("the database does not answer")
    assert lost.is_set() and lost.fault == "the disk is full"


def test_failures_in_a_row_order_trials_by_when_they_ended_and_ignore_running_ones():
    study = optuna.create_study(direction="maximize")
    add(study, "FAIL", fail_reason="a", seconds=100, ended_ago=5)  # started first, ended last
    add(study, "COMPLETE", 0.9, seconds=10, ended_ago=20)
    assert budget.failures_in_a_row(study) == 1
    add(study, "FAIL", fail_reason="b", ended_ago=3)
    add(study, "RUNNING", seconds=1)  # started after every failure, but has not ended: it breaks no row
    study.enqueue_trial({"train.epochs": 2})  # queued: no times at all
    assert budget.failures_in_a_row(study) == 2


def test_a_multi_objective_space_without_val_accuracy_ranks_its_front_by_the_first_objective(tmp_path):
    space = space_of(tmp_path, "objective: [val_loss, param_count]\nsampler: nsga2\npruner: none\n"
                               "params: {train.epochs: {low: 1, high: 3}}\n")
    study = optuna.create_study(directions=["minimize", "minimize"])
    for values in ([0.3, 100], [0.1, 300], [0.2, 200], [0.4, 400]):  # [0.4, 400] is dominated by all the others
        add(study, "COMPLETE", values)
    assert [t.values for t in budget.ranked(study, space)] == [[0.1, 300], [0.2, 200], [0.3, 100]]


def test_a_trial_that_took_no_time_adds_no_confirmation_time(tmp_path):
    space = space_of(tmp_path)
    study = optuna.create_study(direction="maximize")
    add(study, "COMPLETE", 0.99, seconds=0)  # no baseline in the space: 2 more seeds of it and 3 baseline seeds, of 0 s
    assert budget.confirmation_seconds(study, space) == 0


def test_failed_trials_do_not_set_the_guess_for_the_next_trial(tmp_path):
    space = space_of(tmp_path, "params: {train.epochs: {low: 1, high: 3}}\nbudget: {n_trials: 40, timeout: 1000}\n"
                               "confirm: {top: 1, seeds: 3, reserve: 0.05}\n")
    study = optuna.create_study(direction="maximize")
    add(study, "PRUNED", seconds=10)
    for _ in range(3):
        add(study, "FAIL", fail_reason="loss diverged", seconds=900)
    add(study, "RUNNING", seconds=900)
    # the next trial: 10 s (the one pruned trial); the reserve: 5% of 1000 s, more than the confirmation's 0 s
    # (the pruned trial is no contender)
    assert budget.search_time_left(study, space, time.time() + 10 + 50 + 5)
    assert not budget.search_time_left(study, space, time.time() + 10 + 50 - 5)


def test_failures_that_left_an_empty_reason_stop_the_search_without_quoting_one(tmp_path):
    space = space_of(tmp_path)
    study = optuna.create_study(direction="maximize")
    add(study, "FAIL", fail_reason="")  # str() of an exception raised without a message
    add(study, "FAIL", fail_reason="")
    assert budget.why_stopped(study, space, None) == (
        "stopped: 2 trials failed in a row, the limit budget.max_consecutive_failures; 0 of 4 trials finished. "
        "Fix the space, or raise the limit, and run again to resume", False)


def test_the_stop_quotes_the_last_failure_of_the_space_not_an_interrupted_trial_s_reason(tmp_path):
    space = space_of(tmp_path)
    study = optuna.create_study(direction="maximize")
    add(study, "FAIL", fail_reason="loss became NaN at epoch 1")
    add(study, "FAIL", fail_reason="kernel 7 is larger than the 4x4 feature map")
    add(study, "FAIL", fail_reason="interrupted; runs again on resume", interrupted=True)  # a Ctrl-C'd trial, retried
    said, done = budget.why_stopped(study, space, None)
    assert not done and said.startswith("stopped: 2 trials failed in a row (the last: kernel 7 is larger than the 4x4 feature map), ")


def test_a_search_with_no_better_trial_in_plateau_complete_ones_stops_and_goes_to_its_confirmation(tmp_path):
    space = space_of(tmp_path, "params: {train.epochs: {low: 1, high: 3}}\nbudget: {timeout: 1000, plateau: 3}\n")
    study = optuna.create_study(direction="maximize")
    far = time.time() + 10_000
    add(study, "COMPLETE", 0.98, baseline=True)  # 0
    add(study, "COMPLETE", 0.99)  # 1: the best
    add(study, "PRUNED")  # 2
    add(study, "COMPLETE", 0.99)  # 3: a tie is not better
    add(study, "RUNNING")  # 4: not finished, not counted
    add(study, "FAIL", fail_reason="x")  # 5: a failure is not a trial that could have been better
    assert budget.plateaued(study, space) is None and budget.may_start_another(study, space, far)
    add(study, "COMPLETE", 0.999)  # 6: better: the count starts again from here
    for _ in range(5):
        add(study, "PRUNED")  # 7-11: pruned in seconds, they are no plateau (section j at 05f53ad: 8 of 12 were)
    add(study, "COMPLETE", 0.99)  # 12
    add(study, "COMPLETE", 0.999)  # 13: a tie
    assert budget.plateaued(study, space) is None and budget.may_start_another(study, space, far)
    add(study, "COMPLETE", 0.98)  # 14: the third complete since the best
    assert budget.plateaued(study, space) == 6
    assert not budget.may_start_another(study, space, far)
    assert budget.why_stopped(study, space, far) == (
        "stopped: 3 trials completed after trial 6, then the best, without beating it (budget.plateau); 13 trials finished", True)
    # A stop written by the rule that counted pruned trials too ([best, plateau]) is read afresh
    study.set_user_attr(budget.PLATEAU_ATTR, [13, 3])
    assert budget.plateaued(study, space) == 6 and study.user_attrs[budget.PLATEAU_ATTR] == [6, 3, "complete"]
    # The stop holds: a trial that was still running and ends better does not restart the search on any
    # worker (the confirmation ranks it all the same)...
    add(study, "COMPLETE", 0.9995)  # 15
    assert budget.plateaued(study, space) == 6 and not budget.may_start_another(study, space, far)
    # ...unless the space asks for another plateau: the study is read afresh, and goes on
    patient = space_of(tmp_path, "params: {train.epochs: {low: 1, high: 3}}\nbudget: {timeout: 1000, plateau: 5}\n")
    assert budget.plateaued(study, patient) is None and budget.may_start_another(study, patient, far)
    # without `plateau` (the default), a stalled search goes on
    plain = space_of(tmp_path, "params: {train.epochs: {low: 1, high: 3}}\nbudget: {timeout: 1000}\n")
    assert plain.space.budget.plateau is None
    for _ in range(30):
        add(study, "PRUNED")
    assert budget.plateaued(study, plain) is None and budget.may_start_another(study, plain, far)


def test_with_several_objectives_the_plateau_counts_from_the_newest_member_of_the_pareto_front(tmp_path):
    space = space_of(tmp_path, "params: {train.epochs: {low: 1, high: 3}}\nbudget: {timeout: 1000, plateau: 2}\npruner: none\n"
                               "objective: [val_accuracy, {metric: param_count, direction: minimize}]\n")
    study = optuna.create_study(directions=["maximize", "minimize"])
    add(study, "COMPLETE", [0.99, 500_000])  # 0: the most accurate
    add(study, "COMPLETE", [0.98, 100_000])  # 1: on the front, smaller: a better trial too
    add(study, "COMPLETE", [0.97, 400_000])  # 2: dominated
    assert budget.plateaued(study, space) is None
    add(study, "COMPLETE", [0.96, 450_000])  # 3: dominated too
    assert budget.plateaued(study, space) == 1


def test_the_time_left_after_the_search_buys_more_confirmation_seeds_up_to_max_seeds(tmp_path):
    space = space_of(tmp_path, "params: {train.epochs: {low: 1, high: 3}}\nbudget: {timeout: 1000}\n"
                               "confirm: {top: 1, seeds: 3, max_seeds: 5}\n")
    study = optuna.create_study(direction="maximize")
    add(study, "COMPLETE", 0.98, seconds=100, baseline=True)
    add(study, "COMPLETE", 0.99, seconds=100)
    # seeds still missing for the best and the baseline, 100 s each, two at a time: n seeds cost (n - 1) x 100 s;
    # the reserve (10% of 1000 s) stays free
    assert budget.confirmation_seconds(study, space, 2) == 200
    assert budget.confirmation_seconds(study, space, 2, seeds=5) == 400
    now = time.time()
    assert budget.confirmation_seeds(study, space, now + 350, 2) == 3  # 4 seeds need 300 s and the reserve 100 s
    assert budget.confirmation_seeds(study, space, now + 450, 2) == 4
    assert budget.confirmation_seeds(study, space, now + 10_000, 2) == 5  # never past max_seeds
    assert budget.confirmation_seeds(study, space, now + 1, 2) == 3  # out of time: still confirm.seeds (the deadline keeps them)
    assert budget.confirmation_seeds(study, space, None, 2) == 3  # no time budget: nothing to spend
    plain = space_of(tmp_path, "params: {train.epochs: {low: 1, high: 3}}\nbudget: {timeout: 1000}\n")
    assert budget.confirmation_seeds(study, plain, now + 10_000, 2) == plain.space.confirm.seeds


def test_max_seeds_under_seeds_is_a_clear_error(tmp_path):
    from mnist_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"max_seeds \(2\) is under seeds \(3\)"):
        space_of(tmp_path, "params: {train.epochs: {low: 1, high: 3}}\nconfirm: {seeds: 3, max_seeds: 2}\n")
