"""Two trainings side by side, one TensorFlow thread each (a sweep's two workers on 2 cores): Keras'
own pipeline for NumPy arrays against the lab's (`data.batches`), interleaved.

    MNIST_LAB_DATA=... .venv/bin/python benchmarks/input_pipeline.py --repeats 3
    MNIST_LAB_DATA=... .venv/bin/python benchmarks/input_pipeline.py --processes 1   # one training on every core

Each process imports TensorFlow, loads the data and builds the model first; then both fit 2 epochs of the
55,000 training images (validation each epoch) at the same moment. Reports the pair's images per second
(the sum) and CPU (user + system over the slower one's wall, of 200% on 2 cores). Nothing else may run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# A configuration from the default study's winning corner, as bench section i trains it.
TRIAL = ["train.epochs=2", "model.conv_blocks.0.filters=16", "model.conv_blocks.1.filters=32", "model.batch_norm=true",
         "train.batch_size=128", "train.lr_schedule=one_cycle", "train.learning_rate=0.005",
         "model.augment.shift=0.05", "model.augment.rotation=5"]
PIPELINES = ("keras-numpy", "lab")


def child(pipeline: str, threads: int) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    from mnist_lab import data
    from mnist_lab.config import load_config
    from mnist_lab.model import build_model
    from mnist_lab.train import resolve_precision

    config = resolve_precision(load_config(None, TRIAL))
    split = data.load_split(config.data)
    x, xv = data.to_model_input(split.x_train), data.to_model_input(split.x_val)
    y, yv = keras.utils.to_categorical(split.y_train, 10), keras.utils.to_categorical(split.y_val, 10)
    model, batch = build_model(config), config.train.batch_size
    if pipeline == "lab":
        def fit():
            model.fit(data.batches(x, y, batch, shuffle_seed=0), epochs=2, validation_data=data.batches(xv, yv, batch), verbose=0)
    else:
        def fit():
            model.fit(x, y, batch_size=batch, epochs=2, validation_data=(xv, yv), verbose=0)
    print("ready", flush=True)
    sys.stdin.readline()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fit()
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(json.dumps({"wall": t1 - t0, "cpu": cpu, "images_per_second": 2 * len(x) / (t1 - t0)}), flush=True)


def side_by_side(pipeline: str, processes: int) -> dict:
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    threads = max(1, (os.cpu_count() or 1) // processes)
    procs = [subprocess.Popen([sys.executable, __file__, "--child", pipeline, "--threads", str(threads)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) for _ in range(processes)]
    for p in procs:
        while (line := p.stdout.readline()) and line.strip() != "ready":
            pass
    for p in procs:  # both start together
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [json.loads(p.stdout.readline()) for p in procs]
    for p in procs:
        p.wait()
    return {"images_per_second": sum(o["images_per_second"] for o in outs),
            "cpu_pct": 100 * sum(o["cpu"] for o in outs) / max(o["wall"] for o in outs)}  # of cores x 100%


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--processes", type=int, default=2, help="trainings side by side, cores // N threads each (default 2)")
    ap.add_argument("--child", choices=PIPELINES, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.threads)
    measured: dict[str, list[dict]] = {p: [] for p in PIPELINES}
    for r in range(args.repeats):
        for p in PIPELINES[r % 2:] + PIPELINES[:r % 2]:  # each first in turn
            measured[p].append(side_by_side(p, args.processes))
            print(f"repeat {r + 1} {p}: {json.dumps(measured[p][-1])}", flush=True)
    for p, runs in measured.items():
        print(f"{p:12s} images/s median {statistics.median(m['images_per_second'] for m in runs):6.0f} "
              f"(all {[round(m['images_per_second']) for m in runs]}), CPU median "
              f"{statistics.median(m['cpu_pct'] for m in runs):.0f}% (all {[round(m['cpu_pct']) for m in runs]})")


if __name__ == "__main__":
    main()
