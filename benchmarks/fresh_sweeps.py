"""`make sweep` on fresh clones, one per sampler seed: the evidence for what the default study finds.

    MNIST_LAB_DATA=/path/to/mnist .venv/bin/python benchmarks/fresh_sweeps.py --seeds 0,1,2

For each seed: a fresh `git clone` of this repository's HEAD in a temporary folder, `make setup`
(timed apart), then `make sweep SEED=N` as a user types it, timed, with the CPU time of it and every
process it started (user + system over wall: 200% is both of 2 cores). Then the study is read
from its stores with Optuna and MLflow directly: trials by state, the crowned trial, its seed
scores against the baseline's, the one test evaluation, and whether the champion was found after
the sampler's random start-up. Writes benchmarks/fresh_sweeps.json (every figure, appended per
run) and prints its figures. Run it with nothing else on the machine: about 30 min a seed. Each clone
(about 3.2 GB with its .venv and stores) stays in the temporary folder, to be read again; remove it after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from mnist_lab.sweep.optuna_study import startup_trials

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "fresh_sweeps.json"
STARTUP_TRIALS = startup_trials(None)  # TPE's random start-up in the default study (no trial cap)


def study_name(seed: int) -> str:
    """The default study's name for a sampler seed, as `mnist-lab sweep --seed` names it."""
    return "sweep-optuna" if seed == 0 else f"sweep-optuna-seed{seed}"


def timed(cmd: list[str], cwd: Path, log: Path, env: dict | None = None) -> dict:
    """Wall and CPU seconds of `cmd` and all it waited for (RUSAGE_CHILDREN counts the whole tree)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"code": code, "wall_s": wall, "cpu_s": cpu, "cpu_pct": 100 * cpu / wall}


def study_of(folder: Path, name: str) -> dict:
    import mlflow
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'mlruns' / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    parent = client.search_runs(experiments, f"tags.`mnist_lab.kind` = 'study' and tags.study = '{name}'")[0]
    confirm = client.search_runs(experiments, f"tags.`mnist_lab.kind` = 'confirm' and tags.study = '{name}'")
    tags = parent.data.tags
    by_label: dict[str, dict[int, float]] = {}
    for r in confirm:
        if r.info.status == "FINISHED":
            by_label.setdefault(r.data.tags["source_label"], {})[int(r.data.tags["seed"])] = r.data.metrics["val_accuracy"]
    for t in study.trials:  # a trial's own run is its seed
        if t.state.name == "COMPLETE":
            label = "baseline" if t.user_attrs.get("baseline") else f"trial {t.number}"
            if label in by_label:
                by_label[label].setdefault(t.params.get("train.seed", 0), t.values[0])
    means = {label: sum(s.values()) / len(s) for label, s in by_label.items()}
    versions = [v for v in client.search_model_versions("name = 'mnist-cnn'") if v.tags.get("study") == name]
    crowned = f"trial {versions[0].tags['trial']}" if versions else None
    best = crowned or max((m for m in means if m != "baseline"), key=means.get, default=None)
    number = int(best.split()[-1]) if best else None
    evaluated = client.get_run(study.trials[number].user_attrs["mlflow_run_id"]) if number is not None else None
    return {"trials": len([s for s in states if s in ("COMPLETE", "PRUNED")]), "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
            "stopped": tags.get("stopped"), "confirmation": tags.get("confirmation"), "crowned": crowned,
            "best_confirmed": best, "best_mean": means.get(best), "best_seeds": by_label.get(best),
            "best_params": study.trials[number].params if number is not None else None,
            "found_after_startup": number is not None and modelled(study, number),
            "baseline_mean": means.get("baseline"),
            "test_accuracy": evaluated.data.metrics.get("test_accuracy") if evaluated else None,
            "seed_means": means}


def modelled(study, number: int) -> bool:
    """Whether TPE proposed trial `number` from its model: by the sampler's own rule, as many trials had
    finished (complete or pruned) when it started as the random start-up counts. With two workers a trial
    numbered past the start-up can still be a random draw."""
    start = study.trials[number].datetime_start
    return sum(t.state.name in ("COMPLETE", "PRUNED") and t.datetime_complete is not None and t.datetime_complete <= start
               for t in study.trials) >= STARTUP_TRIALS


def machine() -> str:
    flags = open("/proc/cpuinfo").read()
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "?")
    return (f"{len(os.sched_getaffinity(0))} cores of {model}, AVX512-BF16 {'yes' if 'avx512_bf16' in flags else 'no'}, "
            f"Python {platform.python_version()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    if not os.environ.get("MNIST_LAB_DATA"):
        sys.exit("fresh_sweeps: set MNIST_LAB_DATA to the folder with the four MNIST IDX files")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    results = json.loads(OUT.read_text()) if OUT.exists() else []
    for seed in [int(s) for s in args.seeds.split(",")]:
        folder = Path(tempfile.mkdtemp(prefix=f"fresh-sweep-{seed}-")) / "main"
        subprocess.run(["git", "clone", "-q", str(REPO), str(folder)], check=True)
        setup = timed(["make", "setup"], folder, folder.parent / "setup.log")
        sweep = timed(["make", "sweep", f"SEED={seed}"], folder, folder.parent / "sweep.log")
        name = study_name(seed)
        row = {"seed": seed, "commit": commit, "date": date.today().isoformat(), "machine": machine(),
               "folder": str(folder), "study": name, "setup": setup, "sweep": sweep}
        try:  # the next seed's sweep runs whatever happens here: the stores stay in the folder to read again
            row |= study_of(folder, name)
        except Exception as e:
            row["read_error"] = repr(e)
        results.append(row)
        OUT.write_text(json.dumps(results, indent=1))
        print(json.dumps({k: row.get(k) for k in ("seed", "sweep", "trials", "complete", "best_confirmed", "best_mean",
                                                  "baseline_mean", "crowned", "test_accuracy", "found_after_startup")}), flush=True)


if __name__ == "__main__":
    main()
