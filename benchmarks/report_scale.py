"""How long `mnist-lab report` takes over a big study: 1,000 runs of 20 epochs each.

    .venv/bin/python benchmarks/report_scale.py [--runs 1000] [--epochs 20] [--repeats 3]

Builds a real MLflow store (sqlite, in a temporary folder) holding one study run and N
nested trial runs with per-epoch curves (synthetic learning curves: the point is the volume
of data the report reads, not the values), then times the whole report (reading MLflow,
analysis, figures, HTML) several times and prints the median. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SPACE = """\
base: baseline.yaml
objective: val_accuracy
sampler: tpe
pruner: median
budget: {n_trials: 1000}
params:
  model.conv_blocks.0.filters: {low: 16, high: 64, step: 16}
  model.dense.0: {choices: [128, 256, 512, 1024]}
  model.dropout: {low: 0.0, high: 0.6}
  train.learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}
"""


def build_store(n_runs: int, epochs: int) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from mnist_lab import tracking

    experiment_id = tracking.setup()
    client = MlflowClient()
    parent = client.create_run(experiment_id, run_name="scale", tags={
        "mnist_lab.kind": "study", "study": "scale", "space": SPACE, "space_file": "experiments/scale.yaml",
        "engine": "optuna", "sampler": "tpe", "pruner": "median", "objective": "maximize val_accuracy", "command": "benchmark"})
    rng = np.random.default_rng(0)
    now = int(time.time() * 1000)
    for i in range(n_runs):
        dropout, lr = rng.uniform(0, 0.6), 10 ** rng.uniform(-4, np.log10(3e-3))
        params = {"model.conv_blocks.0.filters": int(rng.choice([16, 32, 48, 64])), "model.dense.0": int(rng.choice([128, 256, 512, 1024])),
                  "model.dropout": dropout, "train.learning_rate": lr, "param_count": int(rng.integers(1e5, 3e6))}
        run = client.create_run(experiment_id, run_name=f"scale-trial-{i}", tags={
            "mnist_lab.kind": "trial", "study": "scale", "trial_number": str(i), "state": "COMPLETE",
            "mlflow.parentRunId": parent.info.run_id, "git_commit": "0" * 40, "git_dirty": "false", "data_digest": "sha256:bench"})
        e = np.arange(1, epochs + 1)
        acc = 0.99 - 0.1 * np.exp(-e / (2 + 20 * lr * 100)) + rng.normal(0, 0.002, epochs)
        val = acc - (1 - dropout) * 0.0008 * e + rng.normal(0, 0.002, epochs)
        loss, val_loss = -np.log(acc), -np.log(np.clip(val, 1e-3, 1))
        metrics = [Metric(k, float(v[j]), now, j + 1) for k, v in (("accuracy", acc), ("val_accuracy", val), ("loss", loss),
                                                                     ("val_loss", val_loss), ("epoch_seconds", np.full(epochs, 30.0)))
                   for j in range(epochs)]
        metrics.append(Metric("train_seconds", 30.0 * epochs, now, 0))
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()],
                         tags=[RunTag("seed", "0")])
        client.set_terminated(run.info.run_id)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line (make bench reads it)")
    args = ap.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from mnist_lab import provenance
    from mnist_lab.report import page

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        start = time.perf_counter()
        build_store(args.runs, args.epochs)
        print(f"store: {args.runs} runs x {args.epochs} epochs built in {time.perf_counter() - start:.0f} s")
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            paths = page.run(["scale"], None, "reports")
            times.append(time.perf_counter() - start)
        size = Path(paths["html"]).stat().st_size / 1e6
        print(f"report over {args.runs} runs x {args.epochs} epochs: median {statistics.median(times):.1f} s "
              f"(each: {', '.join(f'{t:.1f}' for t in times)}; index.html {size:.1f} MB) on {provenance.cpu_model()}, "
              f"{os.cpu_count()} cores", flush=True)
        if args.json:
            print(json.dumps({"runs": args.runs, "epochs": args.epochs, "seconds": times}))


if __name__ == "__main__":
    main()
