"""Bench section j: the default study against Optuna random search at equal time, on the real task.

    MNIST_LAB_DATA=/path/to/mnist .venv/bin/python benchmarks/equal_time.py --seeds 0,1,2

For each sampler seed, two studies of experiments/sweep.yaml as `make sweep` runs it (55,000 training
images, the study's 27-minute time budget for search and confirmation, 2 workers, the baseline
enqueued as trial 0, the best 2 trials and the baseline retrained to 3 seeds, a champion crowned only
at p < 0.05, one test evaluation): the lab's default (TPE, schedule-aware successive halving) and
Optuna's RandomSampler without pruning, the only two keys changed. Interleaved: the default goes first
for even seeds, random search for odd ones, so a slow spell of the machine hits both.

Each study runs `mnist-lab sweep` in a fresh folder (its own MLflow and Optuna stores) with the repo's
.venv, timed with the CPU of its whole process tree, and is read with Optuna and MLflow directly
(benchmarks/fresh_sweeps.py's `study_of`): trials finished, the best confirmed trial's 3-seed mean, the
crowned one, its test accuracy, whether it was found after TPE's random start-up. Every study is appended
to benchmarks/equal_time.json as soon as it ends (about 28 min each), so a cut run loses one study; the
summary is over every row of the same machine and the same code (mnist_lab/ and experiments/ trees);
`--table` shows every row of this machine with its commit. `--methods default` reruns one method only,
after a change that leaves the other's studies as they were (say so beside the table: its rows then
come from two commits, and the runs are no longer interleaved). Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import yaml

from bench import ENV
from fresh_sweeps import machine, study_name, study_of, timed

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "equal_time.json"
METHODS = {"default": {}, "random": {"sampler": "random", "pruner": "none"}}


def code_version() -> str:
    """The trees measured (a docs-only commit keeps it), `+changes` when the working tree differs."""
    trees = [t[:7] for t in subprocess.run(["git", "rev-parse", "HEAD:mnist_lab", "HEAD:experiments"], cwd=REPO,
                                           capture_output=True, text=True).stdout.split()]
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "mnist_lab", "experiments"], cwd=REPO).returncode
    return "/".join(trees) + ("+changes" if dirty else "")


def study(method: str, seed: int, check: bool) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"equal-time-{method}-{seed}-"))
    space = yaml.safe_load((REPO / "experiments/sweep.yaml").read_text())
    space |= METHODS[method] | {"base": str(REPO / "experiments/baseline.yaml")}
    (folder / "sweep.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    cmd = [str(REPO / ".venv/bin/mnist-lab"), "sweep", "sweep.yaml", "--seed", str(seed)]
    if check:  # a minutes-long run of this script itself, not a measurement
        cmd += ["--timeout", "150", "data.train_size=2000", "data.validation_size=1000", "train.epochs=1"]
    row = {"method": method, "seed": seed, "space": METHODS[method], "folder": str(folder),
           "sweep": timed(cmd, folder, folder / "sweep.log", ENV)}
    try:
        row |= study_of(folder, study_name(seed))
    except Exception as e:  # the next study runs whatever happens here; the stores stay to read again
        row["read_error"] = repr(e)
    return row


def summary(rows: list[dict]) -> dict:
    """Per method: the best confirmed 3-seed mean of each seed's study, trials finished, wall, CPU."""
    out = {}
    for method in METHODS:
        mine = sorted((r for r in rows if r["method"] == method and r.get("best_mean") is not None), key=lambda r: r["seed"])
        if not mine:
            continue
        out[method] = {
            "seeds": [r["seed"] for r in mine], "best_mean": [r["best_mean"] for r in mine],
            "mean_of_best": statistics.fmean(r["best_mean"] for r in mine),
            "crowned": [r["crowned"] for r in mine], "test_accuracy": [r["test_accuracy"] for r in mine],
            "trials": [r["trials"] for r in mine], "complete": [r["complete"] for r in mine],
            "wall_min": [r["sweep"]["wall_s"] / 60 for r in mine], "cpu_pct": [r["sweep"]["cpu_pct"] for r in mine],
            # Random search has no start-up to be found after: TPE's first trials are its random draws.
            "found_after_startup": sum(bool(r["found_after_startup"]) for r in mine) if method == "default" else None,
        }
    return out


def table(rows: list[dict]) -> str:
    """The README's table: one line per study in the order they ran (the file's: rows are appended as each
    study ends), so a seed's two methods sit side by side in their interleaved order."""
    lines = ["| commit | sampler seed | method | wall, min | CPU (of 200%) | trials (complete) | best confirmed | its seeds, mean "
             "| baseline's mean | crowned | test accuracy |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        seeds = r.get("best_seeds") or {}
        scores = " / ".join(f"{seeds[k]:.4f}" for k in sorted(seeds, key=int))
        mean = f"{scores} = **{r['best_mean']:.4f}**" if r.get("best_mean") is not None else "none"
        after = "" if r["method"] != "default" or not r.get("best_confirmed") else (
            " (after the start-up)" if r.get("found_after_startup") else " (a start-up draw)")
        test = f"{r['test_accuracy']:.4f}" if r.get("test_accuracy") is not None else "-"
        lines.append(f"| {r['commit']} | {r['seed']} | {r['method']} | {r['sweep']['wall_s'] / 60:.1f} | {r['sweep']['cpu_pct']:.0f}% "
                     f"| {r['trials']} ({r['complete']}) | {r.get('best_confirmed')}{after} | {mean} "
                     f"| {r['baseline_mean']:.4f} | {r.get('crowned') or 'nothing'} | {test} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS), help="which of them to run (default: both), e.g. to redo one after a change that leaves the other as it was")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--table", action="store_true", help="print the table of this machine's rows (each with its commit), run nothing")
    ap.add_argument("--check", action="store_true", help="tiny studies (2,000 images, 150 s) to check this script; use another --out")
    args = ap.parse_args()
    methods = args.methods.split(",")
    if unknown := set(methods) - set(METHODS):
        sys.exit(f"equal_time: --methods {args.methods}: unknown {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")
    if not os.environ.get("MNIST_LAB_DATA"):
        sys.exit("equal_time: set MNIST_LAB_DATA to the folder with the four MNIST IDX files")
    stamp = {"date": date.today().isoformat(), "machine": machine(), "code": code_version(),
             "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()}
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {"runs": []}
    if args.table:
        print(table([r for r in data["runs"] if r["machine"] == stamp["machine"] and r["check"] == args.check]))
        return
    for seed in [int(s) for s in args.seeds.split(",")]:
        order = list(METHODS) if seed % 2 == 0 else list(reversed(METHODS))
        order = [m for m in order if m in methods]
        for method in order:
            print(f"equal_time: {method} seed {seed} ...", flush=True)
            row = stamp | study(method, seed, args.check) | {"check": args.check}
            data["runs"].append(row)
            same = [r for r in data["runs"] if r["machine"] == stamp["machine"] and r["code"] == stamp["code"]
                    and r["check"] == args.check]
            data["summary"] = {"machine": stamp["machine"], "code": stamp["code"], "methods": summary(same)}
            out.write_text(json.dumps(data, indent=1))
            print(json.dumps({k: row.get(k) for k in ("method", "seed", "sweep", "trials", "complete", "best_confirmed",
                                                      "best_mean", "baseline_mean", "crowned", "test_accuracy",
                                                      "found_after_startup")}), flush=True)
    print(json.dumps(data.get("summary"), indent=1))


if __name__ == "__main__":
    main()
