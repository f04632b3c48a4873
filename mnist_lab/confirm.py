"""Confirm a study's winners over several seeds: is #1 really better than #2, or was it luck?

    mnist-lab confirm --study sweep --top 3 --seeds 3      # or: make confirm

Retrains each of the top K configurations (by the study's objective) with N fresh training
seeds (train.seed = 1..N; the validation split stays the same), each as an MLflow run nested
under the study and tagged `mnist_lab.kind=confirm`, with a final test-set evaluation.
`mnist-lab report` turns them into mean ± 95% CI and pairwise tests. Rerunning skips the
(configuration, seed) pairs already done.
"""

from __future__ import annotations

from mlflow import MlflowClient

from mnist_lab import runs, tracking
from mnist_lab.config import MnistLabError
from mnist_lab.study import confirm_run_name, run_config


def run(study_name: str | None, top: int, seeds: int, data_dir: str | None = None) -> list[dict]:
    from mnist_lab.train import train

    if top < 1 or seeds < 2:
        raise MnistLabError(f"--top {top} --seeds {seeds}: need at least 1 configuration and 2 seeds (a spread needs two)")
    experiment_id = tracking.setup()
    client = MlflowClient()
    name = study_name or runs.latest_study(client, [experiment_id])
    study = runs.load_study(client, [experiment_id], name)
    ranked = study.runs[study.runs.state == "COMPLETE"].sort_values(f"metrics.{study.objective}", ascending=not study.maximize)
    if ranked.empty:
        raise MnistLabError(f"study {name}: no complete trial to confirm")
    done = {(r["tags.source_run_id"], r["tags.seed"]) for _, r in study.confirm.iterrows()
            if r.get("status") == "FINISHED"} if len(study.confirm) else set()
    results = []
    for rank, (_, source) in enumerate(ranked.head(top).iterrows(), start=1):
        config = run_config(source.run_id)
        for seed in range(1, seeds + 1):
            if (source.run_id, str(seed)) in done:
                continue
            seeded = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
            result = train(
                seeded, data_dir=data_dir, evaluate_test=True, parent_run_id=study.parent.info.run_id,
                run_name=confirm_run_name(f"trial {int(source.trial)}", seed),
                tags={"mnist_lab.kind": "confirm", "study": name, "config_rank": str(rank),
                      "source_trial": str(int(source.trial)), "source_run_id": source.run_id},
                log_model=False,
            )
            print(f"#{rank} (trial {int(source.trial)}) seed {seed}: val_accuracy {result.val_accuracy:.4f}, "
                  f"test_accuracy {result.test_accuracy:.4f}", flush=True)
            results.append({"rank": rank, "seed": seed, "run_id": result.run_id})
    return results
