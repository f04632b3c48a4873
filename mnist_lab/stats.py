"""The statistics behind a verdict: Welch's t-test on seed scores, a seed mean's 95% interval, and
the labels of the incumbents a trial must beat.

The sweep's champion gate (mnist_lab/champion.py) and the report's confirmation section both judge
with these, so the crowning and the page that explains it cannot disagree.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

ALPHA = 0.05  # one-sided significance a new champion must reach against each incumbent
BASELINE = "baseline"  # the labels of the incumbents a trial must beat (the report reads them back from the runs)
CHAMPION = "current champion"


def is_incumbent(label: str) -> bool:
    """Is this confirmation label the baseline's or the current champion's (what a trial must beat)?"""
    return label == BASELINE or label.startswith(CHAMPION)


def welch_greater(a: list[float], b: list[float]) -> float:
    """One-sided p-value that mean(a) > mean(b) (Welch's t-test: no equal-variance assumption).

    Identical constant samples (zero spread in both) give p = 1 if the means are equal or a's
    is lower, and p = 0 if a's is higher: the test is undefined there, the order is not.
    """
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's t-test needs at least two seeds on each side")
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # exact: np.std of three equal 0.99s is 1e-16, not 0
        return 0.0 if np.mean(a) > np.mean(b) else 1.0
    with warnings.catch_warnings():  # near-identical seed scores: scipy warns, the p-value is still right
        warnings.simplefilter("ignore", RuntimeWarning)  # pragma: no mutate (silencing more warnings changes no value)
        return float(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)  # pragma: no mutate (SciPy reads equal_var=None as False)


def welch_two_sided(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(t, two-sided p) of Welch's test, for two trials where no side was chosen beforehand."""
    from scipy import stats

    with warnings.catch_warnings():  # identical seed scores: scipy warns, the p-value is still right
        warnings.simplefilter("ignore", RuntimeWarning)  # pragma: no mutate (silencing more warnings changes no value)
        t, p = stats.ttest_ind(a, b, equal_var=False)  # pragma: no mutate (SciPy reads equal_var=None as False)
    return float(t), float(p)


def mean_ci(x: np.ndarray) -> tuple[float, float]:
    """(mean, half-width of its 95% t-interval); the half-width is NaN for fewer than two seeds."""
    from scipy import stats

    mean = float(x.mean()) if len(x) else float("nan")
    if len(x) < 2:
        return mean, float("nan")
    return mean, float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
