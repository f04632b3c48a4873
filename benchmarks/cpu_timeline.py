"""Where a sweep's CPU goes: one `mnist-lab sweep` run in a fresh folder, its process tree sampled
every half second from /proc, the busy cores set against how many trials were running then.

    MNIST_LAB_DATA=... .venv/bin/python benchmarks/cpu_timeline.py --timeout 600 --seed 0

It answers "why not 200%?": whether the cores idle while two trials train (inside TensorFlow), or
because fewer than two trials run (between trials, the search's end, the confirmation's last seeds).
Prints a summary and writes the whole timeline as JSON (--out). Run it with nothing else on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> dict[int, tuple[float, str]]:
    """CPU seconds (user + system) of `root` and every descendant alive now, with a short role name."""
    parent, stats = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        parent[int(entry)] = int(fields[1])
        stats[int(entry)] = ((int(fields[11]) + int(fields[12])) / TICK, cmd)
    keep, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in keep:
                keep.add(child)
                frontier.append(child)
    return {pid: (stats[pid][0], "main" if pid == root else "spawned" if "multiprocessing" in stats[pid][1] else "other")
            for pid in keep if pid in stats}


def running_trials(db: Path) -> list[tuple[float, float]]:
    """(start, end) of every trial of the study, from the Optuna storage (end: now if still running)."""
    import sqlite3

    rows = sqlite3.connect(db).execute("SELECT datetime_start, datetime_complete FROM trials WHERE datetime_start IS NOT NULL")
    from datetime import datetime

    def ts(text):  # Optuna writes datetime.now(): this machine's local time, without a zone
        return datetime.fromisoformat(text).timestamp() if text else time.time()

    return [(ts(a), ts(b)) for a, b in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default=str(REPO / "experiments" / "sweep.yaml"))
    ap.add_argument("--timeout", type=int, default=600, help="the study's time budget, seconds (default 600)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON timeline (default: cpu_timeline.json in the run's folder)")
    ap.add_argument("extra", nargs="*", help="more sweep arguments or KEY=VALUE overrides")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="cpu-timeline-"))
    cmd = [str(REPO / ".venv" / "bin" / "mnist-lab"), "sweep", args.space, "--timeout", str(args.timeout),
           "--seed", str(args.seed), *args.extra]
    env = os.environ | {"CI": "true"}
    started = time.time()
    with open(folder / "sweep.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
        seen: dict[int, float] = {}  # pid -> CPU seconds at its last sample: the dead keep their last
        samples = []
        while proc.poll() is None:
            now = tree_cpu(proc.pid)
            by_role = defaultdict(float)
            for pid, (cpu, role) in now.items():
                by_role[role] += cpu - seen.get(pid, 0.0)
                seen[pid] = cpu
            samples.append((time.time(), dict(by_role)))
            time.sleep(0.5)
    wall = time.time() - started
    spans = running_trials(folder / "mlruns" / "optuna.db")
    search_end = max((b for _, b in spans), default=started)
    rows, totals = [], defaultdict(lambda: [0.0, 0.0])  # phase -> [seconds, CPU seconds]
    for (t0, _), (t1, cpu) in zip(samples, samples[1:]):
        mid = (t0 + t1) / 2
        n = sum(a <= mid < b for a, b in spans)
        used = sum(cpu.values())
        rows.append({"t": round(t0 - started, 1), "trials_running": n, "cpu": {k: round(v, 3) for k, v in cpu.items()},
                     "cores_busy": round(used / (t1 - t0), 2)})
        phase = "after the search (confirmation, test)" if mid >= search_end else f"search, {min(n, 2)} trials running"
        totals[phase][0] += t1 - t0
        totals[phase][1] += used
    cpu_total = sum(sum(c.values()) for _, c in samples)
    summary = {"wall_s": wall, "cpu_s": cpu_total, "cpu_pct": 100 * cpu_total / wall, "trials": len(spans),
               "by_trials_running": {k: {"seconds": round(s), "cpu_pct": round(100 * c / s) if s else None}
                                     for k, (s, c) in sorted(totals.items())},
               "command": " ".join(cmd), "folder": str(folder)}
    print(json.dumps(summary, indent=1))
    Path(args.out or folder / "cpu_timeline.json").write_text(json.dumps({"summary": summary, "timeline": rows}))
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
