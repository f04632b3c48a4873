"""mnist_lab/sweep/pruning.py on its own: the schedule-aware successive-halving rules, on trials made by hand."""
