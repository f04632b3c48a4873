"""The report's figures (mnist_lab/report/figures.py) as drawn, before they become PNGs: what the README
promises of them (one scale for all the small multiples, whole-number epochs, choices in their order
and every choice shown, a fitted line only from 8 runs up), on studies made by hand."""

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from mnist_lab.report import figures
from mnist_lab.report.analysis import MIN_TREND_POINTS

from test_analysis import SPACE, run, study_of


@pytest.fixture
def drawn(monkeypatch):
    """The figures the report would have encoded, kept open to be read."""
    kept = []
    monkeypatch.setattr(figures, "png", lambda fig: kept.append(fig) or "png")
    yield kept
    for fig in kept:
        plt.close(fig)


def history(run_id, accuracy, val_accuracy):
    return pd.DataFrame({"run_id": run_id, "epoch": range(1, len(accuracy) + 1), "accuracy": accuracy,
                         "val_accuracy": val_accuracy, "loss": 0.1, "val_loss": 0.1, "epoch_seconds": 1.0})


def test_every_trial_s_curves_share_one_scale_and_count_whole_epochs(drawn):
    rows = [run("a", 0, "COMPLETE", 0.99), run("b", 1, "COMPLETE", 0.95), run("c", 2, "COMPLETE", 0.50)]
    h = pd.concat([history("a", [0.9, 0.99, 0.995], [0.9, 0.98, 0.99]), history("b", [0.8, 0.9], [0.85, 0.95]),
                   history("c", [0.3, 0.5, 0.6], [0.2, 0.4, 0.5])])
    figures.curves_grid(study_of(rows, history=h), pd.DataFrame(rows))
    [fig] = drawn
    panels = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in panels] == ["trial 0", "trial 1", "trial 2"]
    assert len({ax.get_ylim() for ax in panels}) == 1 and len({ax.get_xlim() for ax in panels}) == 1
    ticks = panels[0].get_xticks()
    assert all(float(t).is_integer() for t in ticks)  # epochs 1, 2, 3: no 1.5
    low, high = panels[0].get_ylim()
    assert low <= 0.2 and high >= 0.995  # the one scale holds every run's curve


def test_choices_are_shown_in_their_order_and_each_even_when_no_complete_trial_drew_it(drawn):
    # 128 and 512 drawn, 256 never: it still has its place between them.
    rows = [run(f"r{i}", i, "COMPLETE", 0.98 + i / 1000, **{"params.model.dense.0": dense, "params.train.learning_rate": "0.001",
                                                          "params.model.dropout": "0.2", "params.model.batch_norm": "False"})
            for i, dense in enumerate(["512", "128", "512"])]
    figures.axis_plots(study_of(rows))
    [fig] = drawn
    by_key = {ax.get_xlabel(): ax for ax in fig.axes if ax.axison}
    assert [t.get_text() for t in by_key["model.dense.0"].get_xticklabels()] == ["128", "256", "512"]
    assert [t.get_text() for t in by_key["model.batch_norm"].get_xticklabels()] == ["False", "True"]
    assert by_key["train.learning_rate"].get_xscale() == "log"  # a log range on a log axis


@pytest.mark.parametrize("n", [MIN_TREND_POINTS - 1, MIN_TREND_POINTS])
def test_the_gap_plot_fits_a_line_only_from_eight_runs_up(drawn, n):
    assert MIN_TREND_POINTS == 8  # the README's figure
    rows = [run(f"r{i}", i, "COMPLETE", 0.98, **{"params.model.dropout": str(i / 20), "params.train.learning_rate": str(1e-3 * (i + 1)),
                                               "params.model.dense.0": "128", "params.model.batch_norm": "False"}) for i in range(n)]
    fits = pd.DataFrame({"run_id": [r["run_id"] for r in rows], "gap_last": [0.01 * i for i in range(n)]})
    figures.gap_plot(study_of(rows, space=SPACE), fits)
    [fig] = drawn
    dropout = next(ax for ax in fig.axes if ax.get_xlabel() == "model.dropout")
    assert bool(dropout.lines) == (n >= MIN_TREND_POINTS)  # regplot's fitted line; a scatter has none
