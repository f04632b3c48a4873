"""`mnist-lab ui`: MLflow's UI over the store in use, said ready only once it answers.

MLflow's server runs as a child in its own session: its startup chatter and request log go to a
log file (shown when it fails to start), and Ctrl-C reaches this process alone, which stops the
server and says so in one line. While it serves a local store, the address is written beside the
store (ui.json), so reports link to the port actually served.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mnist_lab import tracking
from mnist_lab.errors import MnistLabError

READY_SECONDS = 180  # MLflow's server takes 10-20 s to answer on 2 busy cores
STOP_SECONDS = 5


def serve(host: str, port: int, experiment_id: str, study: str | None) -> int:
    uri = tracking.current_uri()
    base = f"http://{host}:{port}"
    opens_on = f"the runs of study {study}" if study else "the experiment's runs (no study yet)"
    print(f"MLflow UI over {tracking.redact(uri)} on {base}: starting...", flush=True)
    log = tempfile.NamedTemporaryFile(prefix="mnist-lab-ui-", suffix=".log", delete=False)
    env = os.environ | {"PYTHONWARNINGS": "ignore:starlette.middleware.wsgi is deprecated"}  # not for the person reading the UI
    # Two workers, not MLflow's four: one person's browser, and each worker takes seconds to start on 2 cores.
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host,
                               "--port", str(port), "--workers", "2", "--uvicorn-opts", "--no-access-log"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                              preexec_fn=die_with_parent)
    record = tracking.ui_record()
    try:
        wait_until_ready(server, base, log.name)
        if record:
            with contextlib.suppress(OSError):  # a store served read-only: reports link to the default port
                record.write_text(json.dumps({"url": base, "store": uri, "worker": tracking.worker_id()}))
        print(f"ready (Ctrl-C stops it); {opens_on}:\n  {tracking.runs_link(experiment_id, study, base)}", flush=True)
        server.wait()
        raise MnistLabError(f"the MLflow UI on {base} stopped by itself (exit {server.returncode}); its log: {log.name}")
    except KeyboardInterrupt:
        stop(server, record)
        Path(log.name).unlink(missing_ok=True)  # kept only when the server failed: it says why
        print("MLflow UI stopped.", flush=True)
        return 0
    finally:
        stop(server, record)


def wait_until_ready(server: subprocess.Popen, base: str, log: str) -> None:
    deadline = time.time() + READY_SECONDS
    while time.time() < deadline:
        if server.poll() is not None:
            with open(log) as f:
                lines = [line.strip() for line in f if line.strip()]
            said = next((line for line in reversed(lines) if "in use" in line or "Error" in line), lines[-1] if lines else "")
            said = said.split("ERROR:", 1)[-1].strip()  # MLflow's time stamp and level
            hint = "; pass --port N for another port" if "in use" in said else ""
            raise MnistLabError(f"the MLflow UI did not start on {base}: {said[:300]}{hint} (its log: {log})")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"{base}/health", timeout=2).read()
            return
        time.sleep(0.3)
    raise MnistLabError(f"the MLflow UI did not answer on {base} within {READY_SECONDS} s (its log: {log})")


def die_with_parent() -> None:
    """In the child, before MLflow starts: a SIGKILLed `mnist-lab ui` takes its server with it (Linux)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop(server: subprocess.Popen, record) -> None:
    """The server with its workers and job runners (its process group): interrupted as Ctrl-C would,
    then killed; and its address record removed."""
    if server.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)  # what is left of the group: job runners outlive their server
    server.wait()
    if record:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(record.read_text()).get("worker") == tracking.worker_id():
                record.unlink()
