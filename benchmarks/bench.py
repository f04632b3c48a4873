"""`make bench`: what a run and a trial cost here, side by side with plain Keras. Not a test.

    make bench                                    # all sections, 41 min on 2 cores (2026-11-29, Zen 4 EPYC)
    .venv/bin/python benchmarks/bench.py --only a,e --repeats 3

Every comparison runs its variants interleaved in one invocation (A, B, A, B, ...), so a
slow spell of a shared machine hits both, and reports min / median / max over the repeats
and the ratio of medians. Writes benchmarks/results.json (every raw figure) and the tables
in benchmarks/README.md, and copies the summary table into the README between the
`bench:start` / `bench:end` markers. Run it with nothing else on the machine.

Sections:
  a  the lab's `mnist-lab train` (baseline, 3 epochs) against benchmarks/keras_tutorial.py
  b  tracking on (the lab's CLI, everything logged) against off (plain Keras), per run
  c  fraction of the machine's float32 matmul peak (NumPy) that training reaches
  d  one study with 1 worker (2 threads) against 2 workers (1 thread each): trials per hour,
     and what a sweep trial costs outside its epochs
  e  experiments/fast.yaml: wall time from process start to a finished run, 5 seeds, test accuracy
  f  training options on this CPU: steps per execution, tf.data, batch size, bfloat16
  g  search efficiency: the lab's default search against Optuna random search without pruning and
     KerasTuner's Hyperband, at equal compute (training images seen), 3 sampler seeds each; like for
     like: every method starts with the baseline trial, and its wall is the search alone (process
     start to the end of its last trial: no confirmation, no test evaluation)

Sections a and b train in float32 on both sides (plain Keras' precision); d, e and g in the lab's
`precision: auto`, which on a CPU with AVX512-BF16 is mixed bfloat16 (the machine line says which).
Each section's stamp (date, commit, machine) is written here, when it is measured, and nowhere else.
  h  `mnist-lab report` over 1,000 runs of 20 epochs (benchmarks/report_scale.py)
  i  training throughput: one process on every core against one process per core (1 thread each) and
     one more process than cores (1 thread each), a trial of the default study's winning corner on
     55,000 images (what `workers: auto` rests on)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "benchmarks"
LAB = [str(REPO / ".venv/bin/mnist-lab")]
PYTHON = str(REPO / ".venv/bin/python")
ENV = os.environ | {"CI": "true", "TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_DISABLE_TELEMETRY": "true"}
ENV.pop("MLFLOW_TRACKING_URI", None)  # each measurement gets its own store in a temporary folder


def stats(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "all": values}


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    return wall, out.stdout


def lab_run(args: list[str], cwd: Path) -> dict:
    """`mnist-lab train ARGS` in a fresh process; its wall time and what it logged in MLflow."""
    from mlflow import MlflowClient

    wall, stdout = timed([*LAB, "train", *args], cwd)
    run_id = re.search(r"^run (\w+):", stdout, re.M).group(1)
    client = MlflowClient(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    history = {m: [x.value for x in sorted(client.get_metric_history(run_id, m), key=lambda x: x.step)]
               for m in ("epoch_seconds", "images_per_second", "val_accuracy")}
    run = client.get_run(run_id)
    return {"wall": wall, **history, "train_images": int(run.data.params["train_images"]),
            "test_accuracy": run.data.metrics.get("test_accuracy"), "param_count": int(run.data.params["param_count"]),
            "precision": run.data.params.get("precision")}


def plain_run(args: list[str], cwd: Path) -> dict:
    wall, stdout = timed([PYTHON, str(HERE / "keras_tutorial.py"), "--json", *args], cwd)
    return {"wall": wall, **json.loads(stdout.strip().splitlines()[-1])}


# --- a: the lab against plain Keras ------------------------------------------------------------


def bench_a(repeats: int, tmp: Path) -> dict:
    lab, plain = [], []
    for r in range(repeats):
        # Alternate who goes first, so neither always meets a cold page cache or a warm core.
        for who in (("lab", "plain") if r % 2 == 0 else ("plain", "lab")):
            if who == "lab":
                lab.append(lab_run([str(REPO / "experiments/baseline.yaml"), "precision=float32"], tmp))
            else:
                plain.append(plain_run([], tmp))
            print(f"  a {who} repeat {r + 1}: {np.mean((lab if who == 'lab' else plain)[-1]['epoch_seconds']):.1f} s/epoch", flush=True)

    def summary(runs):
        per_epoch = [float(np.mean(x["epoch_seconds"])) for x in runs]
        return {"s_per_epoch": stats(per_epoch),
                "images_per_s": stats([x["train_images"] / s for x, s in zip(runs, per_epoch)]),
                "val_accuracy_3": stats([x["val_accuracy"][-1] for x in runs]),
                "wall": stats([x["wall"] for x in runs])}

    out = {"lab": summary(lab), "plain": summary(plain), "lab_runs": lab, "plain_runs": plain}
    out["ratio_s_per_epoch"] = out["lab"]["s_per_epoch"]["median"] / out["plain"]["s_per_epoch"]["median"]
    return out


# --- b: tracking on against off ----------------------------------------------------------------


def bench_b(repeats: int, tmp: Path) -> dict:
    size = "10000"
    on, off = [], []
    for r in range(repeats):
        for who in (("on", "off") if r % 2 == 0 else ("off", "on")):
            if who == "on":
                on.append(lab_run(["train.epochs=1", f"data.train_size={size}", "precision=float32"], tmp))
            else:
                off.append(plain_run(["--epochs", "1", "--train-size", size], tmp))
    on_wall, off_wall = [x["wall"] for x in on], [x["wall"] for x in off]
    outside = [x["wall"] - sum(x["epoch_seconds"]) for x in on]
    overhead = statistics.median(on_wall) - statistics.median(off_wall)
    return {"on_wall": stats(on_wall), "off_wall": stats(off_wall), "overhead_s": overhead,
            "overhead_pct": 100 * overhead / statistics.median(off_wall), "lab_outside_epochs_s": stats(outside),
            "plain_outside_epochs_s": stats([x["wall"] - sum(x["epoch_seconds"]) for x in off])}


# --- c: fraction of the matmul peak --------------------------------------------------------------


def matmul_peak_gflops(n: int = 2048, repeats: int = 15) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


def training_flops_per_image(overrides: list[str], config_path: str | None = None) -> float:
    """Multiply-adds of the forward pass, x2 for FLOPs, x3 for forward + backward (the usual estimate)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from mnist_lab.config import load_config
    from mnist_lab.model import build_model

    model = build_model(load_config(config_path, overrides))
    macs = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            macs += h * w * c_out * kh * kw * layer.input.shape[-1]
        elif kind == "Dense":
            macs += layer.input.shape[-1] * layer.units
    return 2 * 3 * macs


def bench_c(results: dict) -> dict:
    peak = matmul_peak_gflops()
    out = {"numpy_matmul_peak_gflops": peak}
    if "a" in results:
        flops = training_flops_per_image([])
        ips = statistics.median([x["train_images"] / np.mean(x["epoch_seconds"]) for x in results["a"]["lab_runs"]])
        # images_per_second excludes validation: the rate of the training steps themselves
        train_ips = statistics.median([np.median(x["images_per_second"]) for x in results["a"]["lab_runs"]])
        out |= {"baseline_mflop_per_image": flops / 1e6, "baseline_train_gflops": flops * train_ips / 1e9,
                "baseline_fraction_of_peak": flops * train_ips / 1e9 / peak, "baseline_epoch_images_per_s": ips,
                "floor_s_per_epoch": 55_000 * flops / (peak * 1e9)}
    if "e" in results:
        flops = training_flops_per_image([], str(REPO / "experiments/fast.yaml"))
        train_ips = statistics.median([np.median(x["images_per_second"]) for x in results["e"]["runs"]])
        out |= {"fast_mflop_per_image": flops / 1e6, "fast_train_gflops": flops * train_ips / 1e9,
                "fast_fraction_of_peak": flops * train_ips / 1e9 / peak}
    return out


# --- d: 1 against 2 workers -----------------------------------------------------------------------


def sweep_study(workers: int, tmp: Path, n_trials: int) -> dict:
    import optuna

    folder = Path(tempfile.mkdtemp(dir=tmp))
    wall, _ = timed([*LAB, "sweep", str(HERE / "sweep_bench.yaml"), "--n-trials", str(n_trials), "--workers", str(workers)], folder)
    from mlflow import MlflowClient

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="sweep_bench-optuna", storage=f"sqlite:///{folder / 'mlruns' / 'optuna.db'}")
    client = MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    outside = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name != "COMPLETE":
            continue
        epochs = sum(m.value for m in client.get_metric_history(t.user_attrs["mlflow_run_id"], "epoch_seconds"))
        outside.append((t.datetime_complete - t.datetime_start).total_seconds() - epochs)
    finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    return {"wall": wall, "finished": finished, "trials_per_hour": finished / wall * 3600, "trial_outside_epochs_s": outside}


def bench_d(repeats: int, tmp: Path, n_trials: int = 6) -> dict:
    runs = {1: [], 2: []}
    for r in range(repeats):
        for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
            runs[workers].append(sweep_study(workers, tmp, n_trials))
            print(f"  d {workers} worker(s) repeat {r + 1}: {runs[workers][-1]['trials_per_hour']:.0f} trials/h", flush=True)
    one, two = ([x["trials_per_hour"] for x in runs[w]] for w in (1, 2))
    outside = [s for x in runs[1] for s in x["trial_outside_epochs_s"]]
    return {"workers_1": stats(one), "workers_2": stats(two), "ratio": statistics.median(two) / statistics.median(one),
            "trial_outside_epochs_s": stats(outside), "n_trials": n_trials, "runs": {str(k): v for k, v in runs.items()}}


# --- e: fast.yaml, time to 99% -----------------------------------------------------------------


def bench_e(seeds: int, tmp: Path) -> dict:
    runs = []
    for seed in range(seeds):
        runs.append(lab_run([str(REPO / "experiments/fast.yaml"), f"train.seed={seed}", "--evaluate-test"], tmp))
        print(f"  e seed {seed}: {runs[-1]['wall']:.1f} s, test_accuracy {runs[-1]['test_accuracy']:.4f}", flush=True)
    tests = [x["test_accuracy"] for x in runs]
    return {"wall": stats([x["wall"] for x in runs]), "test_accuracy": stats(tests), "test_accuracy_mean": float(np.mean(tests)),
            "test_accuracy_sd": float(np.std(tests, ddof=1)), "val_accuracy": stats([x["val_accuracy"][-1] for x in runs]),
            "epochs": len(runs[0]["epoch_seconds"]), "runs": runs}


# --- f: training options -------------------------------------------------------------------------


def bench_f(repeats: int) -> dict:
    """Images per second of one epoch on 8,000 images, each option against the lab's default, interleaved."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    from mnist_lab import data
    from mnist_lab.config import load_config
    from mnist_lab.model import build_model

    split = data.load_split(load_config(None, ["data.train_size=8000"]).data)
    x, y = data.to_model_input(split.x_train), keras.utils.to_categorical(split.y_train, 10)
    variants = {
        "default (batch 32, 16 steps per call, float32)": ([], "numpy"),
        # Section a's plain Keras side: the tutorial's own network and compile (1 step per call).
        "plain Keras tutorial network (1 step per call)": ([], "tutorial"),
        "1 step per call": (["train.steps_per_execution=1"], "numpy"),
        "tf.data cache/shuffle/batch/prefetch": ([], "tf.data"),
        "mixed_bfloat16": (["precision=mixed_bfloat16"], "numpy"),
        "batch 128": (["train.batch_size=128"], "numpy"),
        "batch 256": (["train.batch_size=256"], "numpy"),
    }
    from keras_tutorial import tutorial_model

    models = {}
    for name, (overrides, kind) in variants.items():
        config = load_config(None, ["data.train_size=8000", "precision=float32", *overrides])
        models[name] = (tutorial_model() if kind == "tutorial" else build_model(config), config.train.batch_size)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache().shuffle(len(x), seed=0).batch(32).prefetch(tf.data.AUTOTUNE)
    times = {name: [] for name in variants}
    for r in range(repeats + 1):  # round 0 traces the graphs: not timed
        for name, (model, batch) in models.items():
            start = time.perf_counter()
            if variants[name][1] == "tf.data":
                model.fit(ds, epochs=1, verbose=0)
            else:
                model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
            if r:
                times[name].append(time.perf_counter() - start)
    return {name: stats([len(x) / t for t in ts]) for name, ts in times.items()}


# --- i: one training on both cores against two trainings on one core each -------------------------

# A configuration from the default study's winning corner (conv 16 -> 32, batch norm, shift and rotation,
# batch 128, one-cycle), one epoch of the full 55,000 images, in the lab's precision.
SWEEP_TRIAL = ["train.epochs=1", "model.conv_blocks.0.filters=16", "model.conv_blocks.1.filters=32", "model.batch_norm=true",
               "train.batch_size=128", "train.lr_schedule=one_cycle", "train.learning_rate=0.005",
               "model.augment.shift=0.05", "model.augment.rotation=5"]


def bench_i(repeats: int, tmp: Path) -> dict:
    """Training images per second of the machine: one `mnist-lab train` with every core, one per core at
    once, each pinned to its core (taskset), so each has one TensorFlow thread, and one more process
    than cores, unpinned, one thread each (TF_NUM_INTRAOP_THREADS): does a third trial on 2 cores fill
    the time each 1-thread process waits? Interleaved, each variant in every position."""
    from mlflow import MlflowClient

    cores = sorted(os.sched_getaffinity(0))
    config = str(REPO / "experiments/baseline.yaml")
    one_thread = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}

    def together(pins: list[list[int]], env: dict) -> float:
        folder = Path(tempfile.mkdtemp(dir=tmp))
        procs = [subprocess.Popen(["taskset", "-c", ",".join(map(str, pin)), *LAB, "train", config, *SWEEP_TRIAL],
                                  cwd=folder, env=ENV | env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for pin in pins]
        outs = [p.communicate() for p in procs]
        if any(p.returncode for p in procs):
            sys.exit(f"bench i: a training failed: {[o[1].strip().splitlines()[-1:] for o in outs]}")
        client = MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
        rates = []
        for stdout, _ in outs:
            run_id = re.search(r"^run (\w+):", stdout, re.M).group(1)
            rates += [m.value for m in client.get_metric_history(run_id, "images_per_second")]
        return sum(rates)  # the epochs ran side by side: the machine's rate is their sum

    variants = {"one_process_all_cores": ([cores], {}), "one_process_per_core": ([[c] for c in cores], {}),
                "one_more_process_than_cores": ([cores] * (len(cores) + 1), one_thread)}
    measured: dict[str, list[float]] = {v: [] for v in variants}
    names = list(variants)
    for r in range(repeats):
        for variant in names[r % len(names):] + names[: r % len(names)]:
            measured[variant].append(together(*variants[variant]))
            print(f"  i {variant} repeat {r + 1}: {measured[variant][-1]:.0f} images/s", flush=True)
    one = statistics.median(measured["one_process_all_cores"])
    return {**{v: stats(m) for v, m in measured.items()}, "cores": len(cores), "ratio": statistics.median(measured["one_process_per_core"]) / one,
            "ratio_one_more": statistics.median(measured["one_more_process_than_cores"]) / one, "overrides": SWEEP_TRIAL}


# --- g: search efficiency at equal compute ----------------------------------------------------------

SEARCH_METHODS = {
    "lab default (TPE + schedule-aware successive halving, 8 reports/epoch)": {"sampler": "tpe", "pruner": "sha"},
    "Optuna random search, no pruning": {"sampler": "random", "pruner": "none"},
    "KerasTuner Hyperband (resuming from tuner/initial_epoch)": {"tuner": "hyperband", "pruner": "hyperband"},
}


def search_study(method: str, seed: int, budget_images: int, tmp: Path) -> dict:
    """One study of benchmarks/search_bench.yaml with `method`; its trials in order, with the
    training images each saw and, for complete trials, the validation accuracy it ended with.

    Like for like: every method's first trial is the baseline (the Optuna studies enqueue it, as
    `mnist-lab sweep` does; KerasTuner cannot, so the same baseline is trained first, in the same
    store, and counted as its first trial), and the wall is the search's alone: from process start
    to the end of the last trial (KerasTuner's sweep goes on to confirm and evaluate; not counted)."""
    import yaml
    from mlflow import MlflowClient

    folder = Path(tempfile.mkdtemp(dir=tmp))
    space = yaml.safe_load((HERE / "search_bench.yaml").read_text())
    space |= SEARCH_METHODS[method] | {"base": str(REPO / "experiments/baseline.yaml"), "seed": seed}
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    started = time.time()
    if "tuner" in space:
        baseline = [f"{k}={v}" for k, v in space["fixed"].items()]
        timed([*LAB, "train", str(REPO / "experiments/baseline.yaml"), *baseline], folder)
        timed([*LAB, "sweep", str(path), "--engine", "keras-tuner"], folder)  # Hyperband's own schedule sets its compute
    else:
        timed([PYTHON, str(HERE / "search_study.py"), str(path), str(budget_images)], folder)
    client = MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    # The search's trials, and KerasTuner's baseline: a `mnist-lab train` run (no mnist_lab.kind tag).
    runs = [r for r in client.search_runs(experiments, "", order_by=["attributes.start_time ASC"], max_results=5000)
            if r.data.tags.get("mnist_lab.kind", "train") in ("trial", "train")]
    trials = []
    for run in runs:
        tags, params = run.data.tags, run.data.params
        if "pruned_at_images" in tags:
            images = int(tags["pruned_at_images"])
        else:  # epochs this run trained (a resumed KerasTuner trial only its new ones)
            images = len(client.get_metric_history(run.info.run_id, "epoch_seconds")) * int(params.get("train_images", 0))
        complete = tags.get("state") == "COMPLETE" or "mnist_lab.kind" not in tags
        trials.append({"images": images, "val_accuracy": run.data.metrics.get("val_accuracy") if complete else None,
                       "state": tags.get("state", "COMPLETE")})
    return {"wall": max(r.info.end_time for r in runs) / 1000 - started, "trials": trials}


def best_curve(trials: list[dict]) -> tuple[list[float], list[float]]:
    """Cumulative images seen after each trial, and the best complete trial's accuracy so far."""
    spent, best, xs, ys = 0, float("nan"), [], []
    for t in trials:
        spent += t["images"]
        if t["val_accuracy"] is not None and not (t["val_accuracy"] <= best):
            best = t["val_accuracy"]
        xs.append(spent)
        ys.append(best)
    return xs, ys


def bench_g(repeats: int, tmp: Path, target: float, budget_epochs: int = 35) -> dict:
    """The lab's default search against Optuna random search (no pruning) and KerasTuner's
    Hyperband on one space, `repeats` sampler seeds each, compared at equal training images."""
    epoch_images = 3000  # search_bench.yaml's data.train_size
    runs: dict[str, list] = {m: [] for m in SEARCH_METHODS}
    methods = list(SEARCH_METHODS)
    for r in range(repeats):
        for method in methods[r % 3:] + methods[: r % 3]:  # interleaved, each in every position once
            runs[method].append(search_study(method, r, budget_epochs * epoch_images, tmp))
            xs, ys = best_curve(runs[method][-1]["trials"])
            print(f"  g {method} seed {r}: {len(xs)} trials, {xs[-1] / epoch_images:.0f} epochs of images, "
                  f"best {ys[-1]:.4f}, {runs[method][-1]['wall']:.0f} s", flush=True)
    # Equal compute: every curve is read at the least any run spent.
    budget = min(best_curve(x["trials"])[0][-1] for rs in runs.values() for x in rs)
    out: dict = {"budget_images": budget, "epoch_images": epoch_images, "target": target, "methods": {}}
    for method, rs in runs.items():
        at_budget, to_target = [], []
        for x in rs:
            xs, ys = best_curve(x["trials"])
            at_budget.append(max((y for xx, y in zip(xs, ys) if xx <= budget and y == y), default=float("nan")))
            to_target.append(next((xx for xx, y in zip(xs, ys) if y >= target), None))
        reached = [v / epoch_images for v in to_target if v is not None]
        out["methods"][method] = {
            "best_at_budget": stats(at_budget), "epochs_to_target": stats(reached) if reached else None,
            "reached_target": f"{len(reached)} of {len(rs)}", "trials": stats([float(len(x["trials"])) for x in rs]),
            "wall": stats([x["wall"] for x in rs]), "runs": rs,
        }
    plot_search(out, HERE / "search_efficiency.png")
    return out


def plot_search(g: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (method, m), colour in zip(g["methods"].items(), ("tab:blue", "tab:orange", "tab:green")):
        for i, run in enumerate(m["runs"]):
            xs, ys = best_curve(run["trials"])
            ax.step([x / g["epoch_images"] for x in xs], ys, where="post", color=colour, alpha=0.8,
                    label=method if i == 0 else None)
    ax.axvline(g["budget_images"] / g["epoch_images"], color="grey", linestyle=":", label="equal-compute cut")
    ax.axhline(g["target"], color="grey", linestyle="--", linewidth=0.8, label=f"target {g['target']}")
    ax.set_xlabel(f"compute spent: training images seen, in epochs of {g['epoch_images']:,} images")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_ylim(max(0.9, ax.get_ylim()[0]), None)
    ax.set_title("Search efficiency on benchmarks/search_bench.yaml (one line per sampler seed)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- output --------------------------------------------------------------------------------------


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    extras = [f for f in ("avx2", "fma", "avx512f", "amx_bf16", "avx512_bf16") if f" {f}" in flags]
    import keras
    import tensorflow as tf

    from mnist_lab.train import bfloat16_hardware

    auto = "mixed_bfloat16" if bfloat16_hardware() else "float32"
    return (f"{os.cpu_count()} cores of {cpu} ({', '.join(extras)}), no GPU used, precision auto = {auto}; "
            f"Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}")


def commit() -> str:
    """The commit measured; `+changes` when the code measured differs from it (the bench's own outputs,
    results.json and the tables, do not count: a section run after another has rewritten them)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "mnist_lab", "experiments", "benchmarks/*.py", "benchmarks/*.yaml",
                            "pyproject.toml"], cwd=REPO).returncode
    return (head or "an unknown commit") + ("+changes" if dirty else "")


def fmt(s: dict, spec: str = ".1f") -> str:
    return f"{s['median']:{spec}} ({s['min']:{spec}}–{s['max']:{spec}})"


def bench_h(repeats: int) -> dict:
    """The report over a big study, in its own process (report_scale.py builds the store first)."""
    out = subprocess.run([sys.executable, str(HERE / "report_scale.py"), "--repeats", str(repeats), "--json"],
                         capture_output=True, text=True, check=True).stdout
    measured = json.loads(out.strip().splitlines()[-1])
    return {"runs": measured["runs"], "epochs": measured["epochs"], "seconds": stats(measured["seconds"])}


def tables(results: dict) -> str:
    r, lines = results, []
    # Sections are often re-run alone (--only X --merge): say when, at which commit and on what machine each was.
    when: dict[tuple, list[str]] = {}
    for key in sorted(set(r) & set("abcdefghi")):
        m = r["measured"][key]
        when.setdefault((m["date"], m["commit"], m["machine"], m["repeats"]), []).append(key)
    for (day, at, on, repeats), keys in when.items():
        lines.append(f"Sections {', '.join(keys)}: measured {day} at {at} on {on}; {repeats} repeats, median (min–max), "
                     "variants interleaved.  ")
    lines += ["Command: `make bench` (or `.venv/bin/python benchmarks/bench.py --only X --merge`), nothing else running.", ""]
    lines += ["| measurement | mnist-lab | reference | ratio | goal |", "| --- | --- | --- | --- | --- |"]
    if "a" in r:
        a = r["a"]
        lines.append(f"| a. s/epoch, tutorial network, float32, batch 32, 55,000 images (validation included) | {fmt(a['lab']['s_per_epoch'])} "
                     f"| plain Keras {fmt(a['plain']['s_per_epoch'])} | {a['ratio_s_per_epoch']:.2f} "
                     f"| ≤ 1.00: {'met' if a['ratio_s_per_epoch'] <= 1 else 'missed'} |")
        lines.append(f"| a. images/s (validation included) | {fmt(a['lab']['images_per_s'], '.0f')} | {fmt(a['plain']['images_per_s'], '.0f')} "
                     f"| {a['lab']['images_per_s']['median'] / a['plain']['images_per_s']['median']:.2f} | |")
        lines.append(f"| a. val_accuracy after 3 epochs | {fmt(a['lab']['val_accuracy_3'], '.4f')} | {fmt(a['plain']['val_accuracy_3'], '.4f')} | | |")
    if "b" in r:
        b = r["b"]
        lines.append(f"| b. wall of a 1-epoch float32 run on 10,000 images, from process start, s | {fmt(b['on_wall'])} | plain Keras, nothing logged: "
                     f"{fmt(b['off_wall'])} | {b['on_wall']['median'] / b['off_wall']['median']:.2f} | |")
        lines.append(f"| b. tracking overhead per run | {b['overhead_s']:.1f} s ({b['overhead_pct']:.0f}%) | | | |")
        out = b["lab_outside_epochs_s"]["median"]
        lines.append(f"| b. `mnist-lab train` 1 epoch: seconds outside its epochs (start-up, imports, logging) | {fmt(b['lab_outside_epochs_s'])} "
                     f"| plain Keras {fmt(b['plain_outside_epochs_s'])} | | ≤ 15 s: {'met' if out <= 15 else 'missed'} |")
    if "c" in r:
        c = r["c"]
        lines.append(f"| c. NumPy float32 matmul peak | {c['numpy_matmul_peak_gflops']:.0f} GFLOP/s | | | |")
        if "baseline_train_gflops" in c:
            lines.append(f"| c. training, tutorial network ({c['baseline_mflop_per_image']:.1f} MFLOP/image) | {c['baseline_train_gflops']:.0f} GFLOP/s "
                         f"= {100 * c['baseline_fraction_of_peak']:.0f}% of peak | floor at peak: {c['floor_s_per_epoch']:.1f} s/epoch | | |")
        if "fast_train_gflops" in c:
            lines.append(f"| c. training, fast.yaml ({c['fast_mflop_per_image']:.1f} MFLOP/image) | {c['fast_train_gflops']:.0f} GFLOP/s "
                         f"= {100 * c['fast_fraction_of_peak']:.0f}% of peak | | | |")
    if "d" in r:
        d = r["d"]
        lines.append(f"| d. trials/hour, 2 workers × 1 thread (against 1 worker × 2 threads), {d['n_trials']}-trial study | "
                     f"{fmt(d['workers_2'], '.0f')} | {fmt(d['workers_1'], '.0f')} | {d['ratio']:.2f} | |")
        out = d["trial_outside_epochs_s"]["median"]
        lines.append(f"| d. sweep trial: seconds outside its epochs | {fmt(d['trial_outside_epochs_s'])} | | | ≤ 5 s: {'met' if out <= 5 else 'missed'} |")
    if "e" in r:
        e = r["e"]
        ok_time, ok_acc = e["wall"]["median"] <= 40, e["test_accuracy_mean"] >= 0.99
        lines.append(f"| e. `fast.yaml`: wall from process start to finished run ({e['epochs']} epochs, {e['runs'][0].get('precision', '?')}, "
                     "test evaluation included), s | "
                     f"{fmt(e['wall'])} | tutorial recipe: 3 epochs | | ≤ 40 s: {'met' if ok_time else 'missed'} |")
        lines.append(f"| e. `fast.yaml`: test accuracy, mean of {len(e['runs'])} seeds | {e['test_accuracy_mean']:.4f} ± {e['test_accuracy_sd']:.4f} "
                     f"(min {e['test_accuracy']['min']:.4f}) | | | ≥ 0.9900: {'met' if ok_acc else 'missed'} |")
    if "i" in r:
        i = r["i"]
        lines.append(f"| i. training images/s of the machine, one process per core (1 thread each) against one process on all "
                     f"{i['cores']} cores, a default-study trial (one-cycle, batch 128, batch norm), 55,000 images | "
                     f"{fmt(i['one_process_per_core'], '.0f')} | {fmt(i['one_process_all_cores'], '.0f')} | {i['ratio']:.2f} | |")
        if "one_more_process_than_cores" in i:
            lines.append(f"| i. the same with {i['cores'] + 1} processes on {i['cores']} cores (unpinned, 1 thread each) against one on all "
                         f"cores | {fmt(i['one_more_process_than_cores'], '.0f')} | {fmt(i['one_process_all_cores'], '.0f')} "
                         f"| {i['ratio_one_more']:.2f} | |")
    if "h" in r:
        h = r["h"]
        lines.append(f"| h. `mnist-lab report` over {h['runs']:,} runs × {h['epochs']} epochs, s | {fmt(h['seconds'])} | | "
                     f"| ≤ 10 s: {'met' if h['seconds']['median'] <= 10 else 'missed'} |")
    if "g" in r:
        g = r["g"]
        lines += ["", f"Search efficiency (g): best validation accuracy against compute, {len(next(iter(g['methods'].values()))['runs'])} "
                  f"sampler seeds per method, benchmarks/search_bench.yaml (3,000 training images, 1,000 validation); compared at "
                  f"{g['budget_images'] / g['epoch_images']:.0f} epochs of images, the least any run spent "
                  "(plot: benchmarks/search_efficiency.png). Every method starts with the baseline trial; wall is the search "
                  "alone, from process start to its last trial's end (no confirmation, no test evaluation):", "",
                  f"| method | best val_accuracy at equal compute | epochs of images to reach {g['target']} | reached | trials | wall, s |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for method, m in g["methods"].items():
            to = fmt(m["epochs_to_target"], ".0f") if m["epochs_to_target"] else "never"
            lines.append(f"| {method} | {fmt(m['best_at_budget'], '.4f')} | {to} | {m['reached_target']} | {fmt(m['trials'], '.0f')} "
                         f"| {fmt(m['wall'], '.0f')} |")
    if "f" in r:
        lines += ["", "Training options (f): images/s over one epoch of 8,000 images, the baseline network, in one process:", "",
                  "| option | images/s | against the default |", "| --- | --- | --- |"]
        base = next(iter(r["f"].values()))["median"]
        for name, s in r["f"].items():
            lines.append(f"| {name} | {fmt(s, '.0f')} | {s['median'] / base:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description="mnist-lab's benchmarks (see the module docstring)")
    ap.add_argument("--only", default="a,b,c,d,e,f,g,h,i", help="comma-separated sections (default: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument("--merge", action="store_true", help="keep the other sections of an existing --out file")
    ap.add_argument("--target", type=float, default=0.965, help="section g: the validation accuracy whose cost is reported")
    args = ap.parse_args()
    if not os.environ.get("MNIST_LAB_DATA"):
        sys.exit("bench: set MNIST_LAB_DATA to the folder with the four MNIST IDX files")
    sections = args.only.split(",")
    results: dict = json.loads(Path(args.out).read_text()) if args.merge and Path(args.out).exists() else {}
    measured = results.setdefault("measured", {})
    for key in set(results) & set("abcdefghi"):  # a section without a stamp this script wrote is not kept
        if not isinstance(measured.get(key), dict):
            results.pop(key)
            measured.pop(key, None)
    stamp = {"date": date.today().isoformat(), "commit": commit(), "machine": machine(), "repeats": args.repeats}
    results |= {"date": stamp["date"], "machine": stamp["machine"], "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for key, run in (("a", lambda: bench_a(args.repeats, tmp)), ("b", lambda: bench_b(args.repeats, tmp)),
                         ("d", lambda: bench_d(args.repeats, tmp)), ("e", lambda: bench_e(max(5, args.repeats), tmp)),
                         ("f", lambda: bench_f(args.repeats)), ("c", lambda: bench_c(results)),
                         ("g", lambda: bench_g(args.repeats, tmp, args.target)), ("h", lambda: bench_h(args.repeats)),
                         ("i", lambda: bench_i(args.repeats, tmp))):
            if key in sections:
                print(f"bench {key} ...", flush=True)
                start = time.perf_counter()
                results[key] = run()
                measured[key] = stamp
                print(f"bench {key}: {time.perf_counter() - start:.0f} s", flush=True)
                Path(args.out).write_text(json.dumps(results, indent=1, default=float))  # a crash later keeps this
    Path(args.out).write_text(json.dumps(results, indent=1, default=float))
    table = tables(results)
    readme = HERE / "README.md"
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    for path in (readme, REPO / "README.md"):
        text = path.read_text()
        if start in text and end in text:
            path.write_text(text[: text.index(start) + len(start)] + "\n" + table + "\n" + text[text.index(end):])
    print(table)


if __name__ == "__main__":
    main()
