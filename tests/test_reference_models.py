"""The reference recipes at full size: minutes each on 2 cores, so `make test` skips them."""

import pytest

from mnist_lab import tracking
from mnist_lab.config import load_config
from mnist_lab.train import train

from conftest import REPO


@pytest.mark.slow
def test_baseline_reaches_98_9_percent_validation_accuracy_in_3_epochs(store):
    tracking.setup()
    result = train(load_config(REPO / "experiments/baseline.yaml"), log_model=False)
    assert result.epochs_run == 3
    assert result.val_accuracy >= 0.989
