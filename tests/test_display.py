"""The sweep's live display (mnist_lab/sweep/display.py), read off a real Optuna study: the README's
"trials finished of the budget with counts by state (with a legend), the best score so far, elapsed
time and the ETA (capped by the time budget), a line per running trial with its epoch and latest
validation score; every finished trial leaves one line"."""

import re
import time

import optuna
from rich.console import Console

from mnist_lab.sweep.budget import SPAN_PREFIX, Clock
from mnist_lab.sweep.display import Progress
from mnist_lab.sweep.records import StudySetup
from mnist_lab.sweep.space import Budget, load_space, suggest_optuna

from conftest import SMOKE


def setup_of_smoke(**budget) -> StudySetup:
    space = load_space(SMOKE, **budget)  # 1,000 training images an epoch
    return StudySetup("smoke-optuna", space, {}, space.config_for({}), None, "0")


def drawn(progress: Progress) -> str:
    """What the terminal shows of the live part: its renderables, drawn as a terminal would."""
    console = Console(record=True, width=200, force_terminal=True, color_system=None)
    for renderable in progress.bar.get_renderables():
        console.print(renderable)
    return console.export_text()


def test_the_live_display_shows_counts_best_eta_and_running_trials_and_one_line_per_finished_trial(capsys):
    setup = setup_of_smoke(n_trials=10, timeout=600)
    study = optuna.create_study(direction="maximize")
    before = study.ask()  # finished before this invocation opened: its line was printed then, not again
    suggest_optuna(before, setup.space.space)
    study.tell(before, 0.5)
    time.sleep(0.01)  # it ended strictly before the display opened
    progress = Progress(study, setup, Clock(study, 600))
    with progress:
        assert progress.eta(progress.start_finished) in ("9:59", "10:00")  # no pace yet: the time budget's end
        baseline = study.ask()
        baseline.set_user_attr("baseline", True)
        suggest_optuna(baseline, setup.space.space)
        study.tell(baseline, 0.9912)
        pruned = study.ask()
        suggest_optuna(pruned, setup.space.space)
        pruned.report(0.6, 250)
        study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
        failed = study.ask()
        suggest_optuna(failed, setup.space.space)
        failed.set_user_attr("fail_reason", "loss became NaN at epoch 1")
        study.tell(failed, state=optuna.trial.TrialState.FAIL)
        running = study.ask()
        suggest_optuna(running, setup.space.space)
        running.report(0.6512, 250)
        running.report(0.7351, 500)  # the latest report is shown, with its epoch
        progress.update()
        progress.update()  # a second redraw prints no line twice
        live = drawn(progress)
    err = capsys.readouterr().err
    assert "✓ complete  ✂ pruned  ✗ failed  ▶ running" in err.splitlines()  # the legend, on a line of its own
    assert ("the study ends at the study's time budget, 10:00 for search and confirmation (10:00 of it left), "
            "or 10 finished trials, whichever comes first") in err.splitlines()
    lines = [line for line in err.splitlines() if " trial " in line]
    assert [line.split(" trial ")[1].split()[0] for line in lines] == ["1", "2", "3"]  # trial 0 was reported before
    assert lines[0].startswith("✓ trial   1 (baseline) val_accuracy 0.9912 (0 s) conv_blocks.0.filters=")
    assert lines[1].startswith("✂ trial   2 pruned at epoch 0.25 (val_accuracy 0.6000) (0 s) ")
    assert lines[2].startswith("✗ trial   3 loss became NaN at epoch 1 (0 s) ")
    assert f"dropout={pruned.params['model.dropout']:.3g}" in lines[1]
    # the live part: finished (complete + pruned) of the budget, the counts by state, the best so far
    # (over every complete trial), the elapsed time, the ETA, then the running trial
    assert re.search(r"trials +3/10 ", live) and "✓2 ✂1 ✗1 ▶1" in live and "best val_accuracy 0.9912" in live
    assert "0:00 of 10:00" in live and "ETA 0:0" in live  # three finished in no time: the pace says at once
    assert "  ▶ trial 4: epoch 0.50, val_accuracy 0.7351 (0 s)" in live.splitlines()


def test_without_a_trial_cap_the_display_counts_the_study_s_time_and_a_resume_has_only_what_is_left(capsys):
    """The default study's only bound is its time: a resume after 400 of its 600 s shows 200 s left, the
    bar and the ETA follow the time, and the trials are counted without a cap."""
    setup = setup_of_smoke(timeout=600)
    # the smoke file caps at 3 trials; the default study does not
    setup.space.space = setup.space.space.model_copy(update={"budget": Budget(timeout=600, plateau=12)})
    study = optuna.create_study(direction="maximize")
    now = time.time()
    # An earlier invocation ran 300 s, a worker on another machine overlapped it by 200 s and ran 100 s
    # beyond it, then a day passed: 400 s spent, not 600 or a day.
    study.set_user_attr(f"{SPAN_PREFIX}a:1:1", [now - 86400 - 400, now - 86400 - 100])
    study.set_user_attr(f"{SPAN_PREFIX}b:2:2", [now - 86400 - 300, now - 86400])
    clock = Clock(study, 600)
    assert 399 < clock.spent_before < 401 and abs(clock.end - (now + 200)) < 2
    with Progress(study, setup, clock) as progress:
        done = study.ask()
        suggest_optuna(done, setup.space.space)
        study.tell(done, 0.99)
        progress.update()
        live = drawn(progress)
    err = capsys.readouterr().err
    assert re.search(r"the study ends at the study's time budget, 10:00 for search and confirmation \(3:(19|20) of it left\); "
                     r"its search stops early once 12 trials complete after the best without beating it$",
                     err, re.MULTILINE)
    assert re.search(r"trials 1 ", live) and re.search(r"6:4[01] of 10:00", live) and re.search(r"ETA 3:(19|20)", live)
    assert progress.bar.tasks[0].total == 600 and 399 < progress.bar.tasks[0].completed < 402
    # the span of this invocation is on the study now: the next resume counts it
    assert Clock(study, 600).spent_before > 400
