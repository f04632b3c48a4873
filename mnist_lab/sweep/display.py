"""What a person sees of an Optuna study: one live display while it runs, one line per finished
trial, the top trials side by side at the end, and the confirmation's seed scores and verdict.
"""

from __future__ import annotations

import time

from mnist_lab.champion import Verdict
from mnist_lab.errors import signals_deferred
from mnist_lab.sweep.budget import Clock, count, ranked, trial_seconds
from mnist_lab.sweep.records import StudySetup
from mnist_lab.sweep.space import LoadedSpace


class Progress:
    """The sweep's one live display, redrawn every second from the study's storage (so it shows
    every worker's trials): trials finished (of the trial cap, if there is one), a bar of the
    budget that bounds the study (its time, else its trials), counts by state and a legend, best
    so far, the study's time spent of its budget (or this invocation's elapsed time) and the ETA,
    then one line per running trial (epoch, latest validation score). Each trial that finishes gets
    one permanent line above it. Off a terminal (CI, a log file) only those lines are printed."""

    LEGEND = "✓ complete  ✂ pruned  ✗ failed  ▶ running"

    def __init__(self, study, setup: StudySetup, clock: Clock):
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as RichProgress

        self.study, self.space, self.clock = study, setup.space, clock
        self.cap = setup.space.space.budget.n_trials
        self.console = Console(stderr=True, highlight=False)
        self.running_lines: list[str] = []
        display = self

        class Live(RichProgress):
            def get_renderables(self):
                yield self.make_tasks_table(self.tasks)
                yield from display.running_lines

        self.bar = Live(
            TextColumn("{task.fields[trials]}"), BarColumn(bar_width=24), TextColumn("{task.fields[states]}"),
            TextColumn("best {task.fields[best]}"), TextColumn("{task.fields[time]}"), TextColumn("ETA {task.fields[eta]}"),
            console=self.console, disable=not self.console.is_terminal,
        )
        self.reported: set[int] = set()
        self.opened_at = time.time()
        self.epoch_images = setup.base.data.train_count()  # the command line's data.train_size included

    def __enter__(self):
        # Read before the bar starts: a Ctrl-C heard during the read stops the sweep after it, with no bar to close.
        with signals_deferred():
            self.start_finished = count(self.study).finished
        self.bar.__enter__()
        self.console.print(f"[dim]{self.LEGEND}[/dim]")
        self.console.print(f"[dim]{self.bounds()}[/dim]", soft_wrap=True)
        self.task = self.bar.add_task("sweep", total=self.clock.timeout or self.cap, trials="", states="", best="-",
                                      time="", eta="-")
        return self

    def __exit__(self, *exc):
        self.running_lines = []
        self.bar.__exit__(*exc)

    def bounds(self) -> str:
        """What ends the study, said once as the display opens."""
        said = []
        if self.clock.timeout:
            left = max(0.0, self.clock.timeout - self.clock.spent_before)
            said.append(f"the study's time budget, {minutes(self.clock.timeout)} for search and confirmation "
                        f"({minutes(left)} of it left)")
        if self.cap is not None:
            said.append(f"{self.cap} finished trials")
        text = "the study ends at " + ", or ".join(said) + ", whichever comes first" * (len(said) > 1)
        if (plateau := self.space.space.budget.plateau) is not None:
            text += f"; its search stops early once {plateau} trials complete after the best without beating it"
        return text

    def eta(self, finished: int) -> str:
        """From the pace of the trials finished in this invocation toward the trial cap, capped by the
        time budget's end."""
        now = time.time()
        done_here = finished - self.start_finished
        guesses = []
        if done_here > 0 and self.cap is not None:
            guesses.append((now - self.opened_at) / done_here * max(0, self.cap - finished))
        if self.clock.end is not None:
            guesses.append(max(0.0, self.clock.end - now))
        return minutes(min(guesses)) if guesses else "-"

    @signals_deferred()  # store reads and the clock's write: a Ctrl-C heard there stops the sweep after them
    def update(self) -> None:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        c = count(self.study)
        metric = self.space.space.objective[0]
        best_first = ranked(self.study, self.space)
        best = best_first[0].values[0] if best_first else None
        self.clock.tick()
        spent = self.clock.spent()
        self.bar.update(
            self.task, completed=min(spent, self.clock.timeout) if self.clock.timeout else min(c.finished, self.cap),
            trials=f"trials {c.finished}" + (f"/{self.cap}" if self.cap is not None else ""),
            states=f"✓{c.complete} ✂{c.pruned} ✗{c.fail} ▶{c.running}",
            best=f"{metric.metric} {best:.4f}" if best is not None else "-",
            time=f"{minutes(spent)} of {minutes(self.clock.timeout)}" if self.clock.timeout else minutes(time.time() - self.opened_at),
            eta=self.eta(c.finished),
        )
        self.running_lines = []
        for t in trials:
            if t.state == TrialState.RUNNING and not t.user_attrs.get("surplus"):
                latest = f", {metric.metric} {t.intermediate_values[t.last_step]:.4f}" if t.last_step is not None else ""
                epoch = (t.last_step or 0) / self.epoch_images
                started = f"{time.time() - t.datetime_start.timestamp():.0f} s" if t.datetime_start else ""
                self.running_lines.append(f"  ▶ trial {t.number}: epoch {epoch:.2f}{latest} ({started})")
        for t in trials:
            if t.number in self.reported or t.state in (TrialState.RUNNING, TrialState.WAITING) or t.user_attrs.get("surplus"):
                continue
            self.reported.add(t.number)
            if t.datetime_complete and t.datetime_complete.timestamp() < self.opened_at:
                continue  # finished before this invocation: already reported then
            self.console.print(trial_line(t, metric.metric, self.epoch_images), soft_wrap=True)


def minutes(seconds: float) -> str:
    """Minutes and seconds, as a person reads a duration: 27:00."""
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def trial_line(t, metric: str, epoch_images: int) -> str:
    """One line for a finished trial: state, score or why it stopped, seconds, its values."""
    from optuna.trial import TrialState

    mark = {TrialState.COMPLETE: "✓", TrialState.PRUNED: "✂", TrialState.FAIL: "✗"}.get(t.state, " ")
    if t.state == TrialState.COMPLETE:
        what = f"{metric} {t.values[0]:.4f}" if t.values else ""
    elif t.state == TrialState.PRUNED:
        last = t.intermediate_values.get(t.last_step) if t.last_step is not None else None
        what = (f"pruned at epoch {t.last_step / epoch_images:.2f} ({metric} {last:.4f})" if last is not None else "pruned")
    else:
        what = t.user_attrs.get("fail_reason") or "worker died; configuration retried"
    params = " ".join(f"{k.split('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.', 1)[-1]}={v}"
                      for k, v in t.params.items())
    baseline = " (baseline)" if t.user_attrs.get("baseline") else ""
    return f"{mark} trial {t.number:>3}{baseline} {what} ({trial_seconds(t) or 0:.0f} s) {params}"


def print_top(study, space: LoadedSpace, k: int = 5) -> None:
    """The best k complete trials side by side: one column per trial, one row per value, so a
    space of 15 knobs still fits a terminal."""
    from rich.console import Console
    from rich.table import Table

    objectives = space.space.objective
    done = ranked(study, space)
    top = done[:k]
    if not top:
        Console(stderr=False).print(f"study {study.study_name}: no complete trial yet, so no table of the best")
        return
    table = Table(title=f"study {study.study_name}: top {len(top)} of {len(done)} complete trials")
    table.add_column("")
    for t in top:
        table.add_column(f"trial {t.number}{' (baseline)' if t.user_attrs.get('baseline') else ''}", justify="right")

    def show(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    for i, o in enumerate(objectives):
        table.add_row(o.metric, *(f"{t.values[i]:.4f}" for t in top))
    table.add_row("train seconds", *(f"{t.user_attrs.get('train_seconds', 0):.0f}" for t in top))
    for key in space.space.params:
        table.add_row(key.removeprefix("model.").replace("conv_blocks.", "conv"), *(show(t.params.get(key, "")) for t in top))
    Console(stderr=False).print(table)


def verdict_lines(verdict: Verdict) -> list[str]:
    """Console lines: each configuration's seed scores, then the verdict."""
    lines = []
    for c in verdict.contenders:
        seeds = ", ".join(f"{c.scores[s]:.4f}" for s in sorted(c.scores))
        lines.append(f"  {c.label:<32} mean {c.mean:.4f} over {len(c.scores)} seeds ({seeds})")
    return lines + [("crowned: " if verdict.promoted else "") + verdict.reason]
