"""Where a run was made: the code's commit, the machine, the packages. Tags and files that let anyone
tell whether two runs are comparable, and rerun one."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def git_state() -> tuple[str, bool]:
    """(commit, dirty) of the checkout the code runs from; ('unknown', False) outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, check=True
        ).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance_tags() -> dict[str, str]:
    """The code, library versions and machine of a run (the command line is tagged by the caller)."""
    import keras
    import tensorflow as tf

    commit, dirty = git_state()
    return {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "cpu_model": cpu_model(),
        "cpu_count": str(os.cpu_count()),
        # What this process trains with: set to cores / N in each of N sweep workers (0 is TensorFlow's
        # default, one thread per core it may run on).
        "tensorflow_threads": str(tf.config.threading.get_intra_op_parallelism_threads() or len(os.sched_getaffinity(0))),
        "python_version": platform.python_version(),
    }


@lru_cache(maxsize=1)
def pip_freeze() -> str:
    from importlib.metadata import distributions

    lines = set()
    for d in distributions():
        meta = d.metadata  # parsed once per distribution: name and version both come from it
        if meta["Name"]:
            lines.add(f"{meta['Name']}=={meta['Version']}")
    return "\n".join(sorted(lines, key=str.lower)) + "\n"
