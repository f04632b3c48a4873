"""A seeded study's record, to show a refactor left the sweep's behaviour unchanged.

    python benchmarks/study_record.py --out record.json             # sweeps experiments/smoke.yaml in a fresh folder
    python benchmarks/study_record.py --out record.json --space experiments/smoke.yaml --n-trials 4 --sampler tpe

Runs `mnist-lab sweep` (the real CLI, a fresh MLflow store and Optuna storage in a temporary
folder) and writes what the study decided: every trial's number, state, parameters and values,
and the confirmation's seed scores and verdict. Two records made on the same machine must be
equal digit for digit; another CPU computes other digits, so a record is never compared across
machines. Reads the stores with Optuna and MLflow directly, not with the lab's own code, so it
stays the same whatever the lab's code looks like.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def record(folder: Path, study_name: str) -> dict:
    import mlflow
    import optuna

    storage = f"sqlite:///{folder / 'mlruns' / 'optuna.db'}"
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = [{"number": t.number, "state": t.state.name, "params": t.params, "values": t.values,
               "pruned_at": t.last_step if t.state.name == "PRUNED" else None}
              for t in study.get_trials(deepcopy=False)]
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    parent = client.search_runs(experiments, f"tags.`mnist_lab.kind` = 'study' and tags.study = '{study_name}'")[0]
    confirm = client.search_runs(experiments, f"tags.`mnist_lab.kind` = 'confirm' and tags.study = '{study_name}'")
    seeds = sorted((r.data.tags.get("source_label", ""), int(r.data.tags["seed"]), r.data.metrics.get("val_accuracy"))
                   for r in confirm)
    test = [r.data.metrics["test_accuracy"] for r in client.search_runs(experiments, f"tags.study = '{study_name}'")
            if "test_accuracy" in r.data.metrics]
    return {"study": study_name, "trials": trials, "confirmation_seeds": seeds,
            "verdict": parent.data.tags.get("confirmation"), "stopped": parent.data.tags.get("stopped"),
            "test_accuracy": test, "parent_status": parent.info.status}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--space", default=str(REPO / "experiments" / "smoke.yaml"))
    ap.add_argument("sweep_args", nargs="*", help="more arguments for mnist-lab sweep (overrides, --n-trials N)")
    args = ap.parse_args()
    cli = Path(sys.executable).with_name("mnist-lab")
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
        env["CI"] = "true"
        subprocess.run([str(cli), "sweep", str(Path(args.space).resolve()), "--study", "record", *args.sweep_args],
                       cwd=tmp, env=env, check=True)
        out = record(Path(tmp), "record")
    Path(args.out).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}: {len(out['trials'])} trials; {out['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
