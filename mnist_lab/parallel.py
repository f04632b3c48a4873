"""Trainings side by side in worker processes: the confirmation's seeds, N at a time.

These small networks keep one TensorFlow thread busy far better than two (on 2 cores, two 1-thread
trainings ran 1.6x the images per second of one 2-thread training: `make bench`, section i), so a
sweep with several workers also confirms with several: each process gets cores // N threads.

Stopping: Ctrl-C and SIGTERM are the main process's to handle; it terminates the workers, whose
unfinished runs (tagged with the main process as their worker) it then ends KILLED like its own. A
worker whose main process died stops itself.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time


def stop_when_orphaned(main_pid: int) -> None:
    """A worker whose main process died (SIGKILL, OOM) stops as if interrupted, instead of training on
    with nobody to read its result or stop it."""
    while os.getppid() == main_pid:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGTERM)


def start_worker(threads: int, main_pid: int) -> None:
    """A pool process: its own TensorFlow thread pool, the main process's tracking store."""
    from mnist_lab import tracking
    from mnist_lab.startup import import_tensorflow

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the main process decides
    threading.Thread(target=stop_when_orphaned, args=(main_pid,), daemon=True).start()
    import_tensorflow()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tracking.setup()


def train_seed(config, data_dir: str | None, parent_run_id: str, run_name: str, tags: dict[str, str]) -> float:
    """One confirmation seed, as champion.train_one_seed trains it: validation only, no model logged."""
    from mnist_lab.train import train

    return train(config, data_dir=data_dir, parent_run_id=parent_run_id, log_model=False, progress=False,
                 run_name=run_name, tags=tags).val_accuracy


def round_robin(contenders: list, seeds: int, next_run, parent_run_id: str, data_dir: str | None,
                deadline: float | None, on_result, workers: int) -> None:
    """champion.train_round_robin with `workers` seeds training at once: a free worker takes the
    contender with the fewest seeds, scored or training, and nothing starts after the deadline.
    `next_run(contender, seeds_training)` names the seed, config, run name and tags."""
    training: dict = {}  # AsyncResult -> (contender, seed)
    threads = max(1, (os.cpu_count() or 1) // workers)  # the sweep's share per worker, as its trials had
    workers = min(workers, sum(max(0, seeds - len(c.scores)) for c in contenders))  # no process without a seed to train
    if workers == 0 or (deadline is not None and time.time() > deadline):
        return
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=start_worker, initargs=(threads, os.getpid()))
    try:
        while True:
            while len(training) < workers and (deadline is None or time.time() <= deadline):
                def started(c):
                    return [seed for other, seed in training.values() if other is c]

                short = [c for c in contenders if len(c.scores) + len(started(c)) < seeds]
                if not short:
                    break
                c = min(short, key=lambda c: len(c.scores) + len(started(c)))
                seed, config, name, tags = next_run(c, set(started(c)))
                training[pool.apply_async(train_seed, (config, data_dir, parent_run_id, name, tags))] = (c, seed)
            if not training:
                break
            time.sleep(0.2)
            for result in [r for r in training if r.ready()]:
                c, seed = training.pop(result)
                c.scores[seed] = result.get()  # a training's error is raised here, as it would be in this process
                if on_result:
                    on_result(c, seed, c.scores[seed])
        pool.close()
    finally:
        pool.terminate()  # after close(): the idle workers end; on an error or a stop: the trainings too
        pool.join()
