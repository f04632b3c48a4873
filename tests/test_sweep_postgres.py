"""Two 'machines' (processes that share nothing but the network) on one study: a real
PostgreSQL server for Optuna and a real MLflow tracking server, both on 127.0.0.1."""

import glob
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

import optuna
import pytest
from mlflow import MlflowClient

from browser import free_port
from conftest import REPO, crownable_smoke
from test_sweep import assert_one_run_per_trial, finished, runs_of

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
PASSWORD = "planted-pw-8086"  # must never reach a run, a tag, an artifact or the output
# Credentials in the environment, as CI systems and shells hold them: none may reach the store either.
PLANTED_ENV = {"MNIST_LAB_API_TOKEN": "planted-token-4242", "AWS_SECRET_ACCESS_KEY": "planted-key-1729",
               "DB_PASSWORD": PASSWORD}


def as_postgres(cmd):
    # PostgreSQL refuses to run as root; CI runs as root, a developer usually not.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PostgresServer:
    """A real PostgreSQL server on 127.0.0.1 with password authentication, in a temporary folder."""

    def __init__(self):
        self.bin, self.folder = PG_BIN[-1], tempfile.mkdtemp(prefix="mnist-lab-pg-")
        self.data, self.port = os.path.join(self.folder, "data"), free_port()
        self.url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}"

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        pwfile = os.path.join(self.folder, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD)
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres")
        # Password authentication over TCP, as on a shared server: the password is in every URL below.
        subprocess.run(as_postgres([f"{self.bin}/initdb", "-D", self.data, "--auth-host=scram-sha-256", "--auth-local=trust",
                                    "-U", "postgres", f"--pwfile={pwfile}"]), check=True, capture_output=True)

    def start(self) -> None:
        subprocess.run(as_postgres([f"{self.bin}/pg_ctl", "-D", self.data, "-w", "-l", os.path.join(self.folder, "log"), "-o",
                                    f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start"]),
                       check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run(as_postgres([f"{self.bin}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"]), capture_output=True)


@pytest.fixture
def postgres_server():
    if not PG_BIN:
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    server = PostgresServer()
    server.init()
    server.start()
    try:
        for db in ("optuna", "mlflow"):
            subprocess.run(as_postgres([f"{server.bin}/createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", db]),
                           check=True, capture_output=True, env=os.environ | {"PGPASSWORD": PASSWORD})
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.folder, ignore_errors=True)


@pytest.fixture
def postgres(postgres_server):
    return postgres_server.url


@pytest.fixture
def tracking_server(postgres, tmp_path, monkeypatch):
    port = free_port()
    server = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "mlflow"), "server", "--backend-store-uri", f"{postgres}/mlflow",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        server.kill()
        pytest.fail("the MLflow tracking server did not start")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    yield url
    os.killpg(server.pid, 9)
    server.wait()


def test_two_machines_share_a_study_through_postgresql_and_no_secret_leaks(store, postgres, tracking_server, tmp_path):
    storage = f"{postgres}/optuna"
    env = os.environ | PLANTED_ENV | {"MLFLOW_TRACKING_URI": tracking_server, "CI": "true"}
    cmd = [str(REPO / ".venv" / "bin" / "mnist-lab"), "sweep", crownable_smoke(tmp_path), "--n-trials", "4", "--storage", storage]
    # Two separate working folders: the machines share only PostgreSQL and the tracking server.
    machines = []
    for name in ("a", "b"):
        (store / name).mkdir()
        machines.append(subprocess.Popen(cmd, cwd=store / name, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [m.communicate(timeout=900)[0] for m in machines]
    # In full: a clean-clone run once saw one machine exit non-zero, and pytest's cut of the list hid why.
    assert all(m.returncode == 0 for m in machines), "\n\n".join(
        f"machine {name}: exit {m.returncode}\n{out[-4000:]}" for name, m, out in zip("ab", machines, outputs))
    study = optuna.load_study(study_name="smoke-optuna", storage=storage)
    assert len(finished(study)) == 4
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 4
    runs = assert_one_run_per_trial("smoke-optuna", study)
    assert len({r.data.tags["worker"] for r in runs}) == 2  # both machines took part
    assert not (store / "a" / "mlruns" / "optuna.db").exists()  # nothing was kept locally
    assert MlflowClient().get_model_version_by_alias("mnist-cnn", "champion").run_id
    # One machine confirmed; the other deferred to it, or (finishing later) found its answer already
    # crowned: either way one set of confirmation runs (a seed of the best trial, two of the baseline,
    # which this space does not contain) and one registered version.
    assert sum("another worker of this study is running its confirmation" in o or "is already mnist-cnn@champion" in o
               for o in outputs) == 1
    confirms = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("mnist-lab").experiment_id],
                                          "tags.`mnist_lab.kind` = 'confirm'")
    assert len(confirms) == 3 == len({(r.data.tags["source_run_id"], r.data.tags["seed"]) for r in confirms})
    assert len(MlflowClient().search_model_versions("name = 'mnist-cnn'")) == 1

    # No secret anywhere: the output of both machines, both databases, every artifact.
    dump = ""
    for db in ("optuna", "mlflow"):
        dump += subprocess.run(as_postgres([f"{PG_BIN[-1]}/pg_dump", "-h", "127.0.0.1", "-p", postgres.rsplit(":", 1)[1],
                                            "-U", "postgres", db]), capture_output=True, text=True, check=True,
                               env=os.environ | {"PGPASSWORD": PASSWORD}).stdout
    assert "smoke-optuna" in dump and "trial_number" in dump  # the dump holds the study and its runs
    artifacts = b"".join(p.read_bytes() for p in (tmp_path / "artifacts").rglob("*") if p.is_file())
    assert b"tensorflow==" in artifacts and b"learning_rate:" in artifacts  # requirements.txt and config.yaml are in there
    for secret in PLANTED_ENV.values():
        assert secret not in dump and secret.encode() not in artifacts
        assert all(secret not in o for o in outputs)
    command = runs_of("smoke-optuna", "study")[0].data.tags["command"]
    assert "postgresql://postgres:***@127.0.0.1" in command
