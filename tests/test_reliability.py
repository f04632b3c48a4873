"""Nothing lost, nothing leaked: kills, interrupts, failing spaces and broken stores, through the
real CLI on a real MLflow store and a real Optuna storage (issue #9)."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from mnist_lab import tracking
from conftest import as_in_a_terminal
from test_sweep import SMOKE, finished, load, runs_of, sweep_cmd

COMPLETE, PRUNED, FAIL, RUNNING, WAITING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                                           optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING,
                                           optuna.trial.TrialState.WAITING)
# Grace 60 s: a resumed sweep must not wait it out; a dead local worker is recognised by its pid.
ENV = {"MNIST_LAB_HEARTBEAT_SECONDS": "1", "MNIST_LAB_GRACE_SECONDS": "60", "CI": "true"}


def poll(what, timeout=180, every=0.05):
    """Call `what` until it returns something truthy (reads may race the sweep's writes). The errors
    a read may meet while the stores are being made are waited out; any other is a broken predicate,
    raised at once, and a timeout says which error it last met."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            found = what()
        except (KeyError, OSError, MlflowException, SQLAlchemyError, optuna.exceptions.OptunaError) as e:  # no study or run yet, sqlite busy
            found, last = None, e
        if found:
            return found
        time.sleep(every)
    print(f"poll: timed out after {timeout} s; last error met: {last!r}", file=sys.stderr)
    return None


def trials(store):
    return load(f"sqlite:///{store / 'mlruns' / 'optuna.db'}", "smoke-optuna").get_trials(deepcopy=False)


def start(*args):
    return subprocess.Popen(sweep_cmd("--n-trials", "3", *args), env=os.environ | ENV, start_new_session=True,
                            preexec_fn=as_in_a_terminal,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def artifacts_of(store, run_id):
    return list((store / "mlruns" / "artifacts" / run_id / "artifacts" / "plots").glob("*.png"))


def test_five_sigkills_at_different_points_lose_nothing(bare_store):
    store = bare_store
    mlruns = store / "mlruns"
    cut: list[int] = []  # the trials each kill left RUNNING: exactly these may be lost

    def running_now() -> list[int]:
        return [t.number for t in trials(store) if t.state == RUNNING] if (mlruns / "optuna.db").exists() else []

    # 1. While the stores are created: MLflow's database is being built under its temporary name.
    proc = start()
    assert poll(lambda: list(mlruns.glob(".mlflow.db.*.tmp")), 60, every=0.01)
    kill(proc)
    assert not (mlruns / "mlflow.db").exists()  # it landed there: the database was not yet in place

    # 2. During an epoch: a trial has reported a validation score from inside its first epoch.
    proc = start()
    assert poll(lambda: any(t.state == RUNNING and t.intermediate_values for t in trials(store)))
    kill(proc)
    landed = [t for t in trials(store) if t.state == RUNNING]
    assert len(landed) == 1 and landed[0].intermediate_values  # inside a trial's training
    cut += [t.number for t in landed]
    with_runs = list(cut)

    # 3. While artifacts are written: the running trial's plots are on disk, its run not yet ended.
    proc = start()

    def writing():  # a trial of this process: kill 2's, left RUNNING, may have plots of its own already
        running = [t for t in trials(store) if t.state == RUNNING and "mlflow_run_id" in t.user_attrs
                   and t.number not in cut]
        return [t for t in running if artifacts_of(store, t.user_attrs["mlflow_run_id"])]

    assert poll(writing)
    kill(proc)
    landed = writing()
    tracking.setup()
    assert len(landed) == 1 and MlflowClient().get_run(landed[0].user_attrs["mlflow_run_id"]).info.status == "RUNNING"
    cut += [n for n in running_now() if n not in cut]
    with_runs.append(landed[0].number)

    # 4. Between trials: the moment a trial has completed.
    proc = start()
    done = len([t for t in trials(store) if t.state == COMPLETE])
    assert poll(lambda: len([t for t in trials(store) if t.state == COMPLETE]) > done)
    kill(proc)
    assert len([t for t in trials(store) if t.state == COMPLETE]) > done
    cut += [n for n in running_now() if n not in cut]  # the next trial, if it had started

    # 5. During the confirmation stage: a confirmation seed is training.
    proc = start()
    assert poll(lambda: runs_of("smoke-optuna", "confirm") and any(
        r.info.status == "RUNNING" for r in runs_of("smoke-optuna", "confirm")), 300), proc.communicate(timeout=60)
    kill(proc)
    seed_cut = [r.info.run_id for r in runs_of("smoke-optuna", "confirm") if r.info.status == "RUNNING"]
    assert len(seed_cut) == 1 and not running_now()  # the search was over: no trial was cut

    # Then the same command, to the end.
    out = subprocess.run(sweep_cmd("--n-trials", "3"), env=os.environ | ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    study = load(f"sqlite:///{store / 'mlruns' / 'optuna.db'}", "smoke-optuna")
    tracking.setup()
    client = MlflowClient()
    assert len(finished(study)) == 3  # exactly the requested number
    assert not [t for t in study.trials if t.state == RUNNING]
    lost = [t for t in study.trials if t.state == FAIL]
    assert sorted(t.number for t in lost) == sorted(cut) and len(cut) >= 2  # exactly the trials the kills cut
    assert all("fail_reason" not in t.user_attrs for t in lost)  # kills are not the space's failures
    trial_runs = runs_of("smoke-optuna")
    finished_runs = Counter(r.data.tags["trial_number"] for r in trial_runs if r.info.status == "FINISHED")
    for t in finished(study):
        assert finished_runs[str(t.number)] == 1, t.number  # one FINISHED run each
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["state"] == "COMPLETE"
        names = {Path(a).name for a in artifacts_of(store, run.info.run_id)}
        assert names == {"learning_curves.png", "confusion_matrix.png", "misclassified.png"}, names
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml", "environment", "plots"}
        assert client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    for t in lost:  # each killed trial's run ended KILLED (kills 2 and 3 landed after their runs began)
        assert "mlflow_run_id" in t.user_attrs or t.number not in with_runs, t.number
        if "mlflow_run_id" in t.user_attrs:
            assert client.get_run(t.user_attrs["mlflow_run_id"]).info.status == "KILLED", t.number
    assert client.get_run(seed_cut[0]).info.status == "KILLED"  # and the confirmation seed cut short
    every_run = client.search_runs([tracking.setup()], "", max_results=1000)
    assert not [r for r in every_run if r.info.status == "RUNNING"]
    parents = runs_of("smoke-optuna", "study")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["confirmation"]  # the verdict was reached after all
    seeds = [r for r in runs_of("smoke-optuna", "confirm") if r.info.status == "FINISHED"]
    # smoke confirms its best trial with one more seed and the baseline (not in its space) with two:
    # each once, the killed one redone
    assert sorted((r.data.tags["source_label"], r.data.tags["seed"]) for r in seeds) == [
        ("baseline", "0"), ("baseline", "1"), (f"trial {parents[0].data.tags['best_trial']}", "1")]


def test_ctrl_c_and_sigterm_stop_cleanly_and_resume_where_they_stopped(store):
    victims = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # 10 epochs: when the victim is seen (its first report, an eighth of an epoch in) nearly all of
        # its fit is still ahead, so the signal lands mid-fit even on a machine busy with another test
        # worker's training (with 1 epoch, and once in a full suite with 3, it finished first, and a
        # finished trial is rightly kept, not interrupted). The sweep stops long before the 10 epochs.
        proc = start("data.train_size=3000", "train.epochs=10")
        victim = poll(lambda: next((t for t in trials(store) if t.state == RUNNING and t.intermediate_values), None))
        assert victim
        if victims:  # resumed: the interrupted configuration runs first, with no heartbeat grace to wait out
            assert victim.system_attrs["failed_trial"] == victims[-1].number and victim.params == victims[-1].params
        os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)  # Ctrl-C reaches the group
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err[-2000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("mnist-lab sweep: interrupted: stopped cleanly") and "resume with: mnist-lab sweep" in last
        study = trials(store)
        # Optuna gives the retry a new number; the message says which, and that is the trial that runs next.
        again = next(t.number for t in study if t.system_attrs.get("retry_history", [])[-1:] == [victim.number])
        assert f"trial {victim.number}'s configuration runs again first, as trial {again};" in last and "Traceback" not in err
        assert not [t for t in study if t.state == RUNNING]
        stopped = study[victim.number]
        assert stopped.state == FAIL and stopped.user_attrs["interrupted"]
        retry = [t for t in study if t.system_attrs.get("retry_history", [])[-1:] == [victim.number]]
        assert len(retry) == 1 and retry[0].state == WAITING and retry[0].params == stopped.params
        assert not retry[0].user_attrs  # it starts clean: no run id or failure inherited
        tracking.setup()
        run = MlflowClient().get_run(stopped.user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED" and run.data.tags["state"] == "FAIL"
        assert runs_of("smoke-optuna", "study")[0].info.status == "KILLED"
        victims.append(stopped)
    assert not [r for r in MlflowClient().search_runs([tracking.setup()], "") if r.info.status == "RUNNING"]


def another_process_writes(url: str) -> None:
    """Nothing of a write is left holding SQLite's lock: another process writes study 's' at once."""
    other = subprocess.run([sys.executable, "-c", "import optuna, sys; optuna.load_study(study_name='s', storage="
                            "optuna.storages.RDBStorage(sys.argv[1], engine_kwargs={'connect_args': {'timeout': 2}}))"
                            ".set_user_attr('later', 1)", url], capture_output=True, text=True)
    assert other.returncode == 0, other.stderr[-2000:]


def test_a_signal_heard_during_the_main_thread_s_store_write_stops_the_sweep_after_the_write(tmp_path):
    """The study's clock (and the live display) write and read the store from the sweep's main thread.
    SIGTERM landing in the middle of the write's SQL stops the sweep once the write is done: raised
    half-way, a KeyboardInterrupt once left SQLite's lock held and the stopping sweep waited on it for
    good (a trial left RUNNING). Here the signal is sent from inside the SQL statement's execution."""
    from sqlalchemy import event

    from mnist_lab.cli import _interrupt
    from mnist_lab.sweep.budget import Clock

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(storage=storage, study_name="s")
    clock = Clock(study, timeout=600)
    sent = []

    def signal_mid_write(conn, cursor, statement, *args):
        if "study_user_attributes" in statement and not statement.lstrip().startswith("SELECT") and not sent:
            sent.append(statement)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # Python runs the handler at the next bytecode: here, before the statement ends

    previous = signal.signal(signal.SIGTERM, _interrupt)  # the CLI's: SIGTERM stops a command as Ctrl-C does
    event.listen(storage.engine, "before_cursor_execute", signal_mid_write)
    try:
        with pytest.raises(KeyboardInterrupt):
            clock.tick(now=True)
        assert signal.getsignal(signal.SIGTERM) is _interrupt  # the CLI's handler is back for what follows
    finally:
        event.remove(storage.engine, "before_cursor_execute", signal_mid_write)
        signal.signal(signal.SIGTERM, previous)
    assert sent
    # The write finished, and nothing of it is held: another process writes the study at once.
    assert optuna.load_study(study_name="s", storage=url).user_attrs[clock.key][0] == clock.started
    another_process_writes(url)


def test_a_signal_heard_during_a_worker_process_s_store_write_halts_it_and_leaves_the_write_whole(tmp_path):
    """A worker process hears Ctrl-C and SIGTERM on its halt only (its trial stops at the next batch): sent
    from inside a trial's write to the lab's SQLite Optuna storage (each transaction holds the write lock
    from its start), neither cuts the write short nor leaves the lock held for the other workers, whose
    settling of their own trials waited on it (a trial left RUNNING after the sweep's main process died)."""
    from sqlalchemy import event

    from mnist_lab.sweep.budget import Halt
    from mnist_lab.sweep.optuna_study import make_storage
    from mnist_lab.sweep.workers import stop_on_signals

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = make_storage(url)
    trial = optuna.create_study(storage=storage, study_name="s").ask()
    sent = []

    def signal_mid_write(conn, cursor, statement, *args):
        if "trial_user_attributes" in statement and not statement.lstrip().startswith("SELECT") and not sent:
            sent.append(statement)
            for sig in (signal.SIGINT, signal.SIGTERM):
                os.kill(os.getpid(), sig)
            time.sleep(0.05)  # Python runs the handlers at the next bytecode: here, before the statement ends

    halt = Halt()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    event.listen(storage.engine, "before_cursor_execute", signal_mid_write)
    try:
        stop_on_signals(halt)
        trial.set_user_attr("worker", "w")  # raises nothing
    finally:
        event.remove(storage.engine, "before_cursor_execute", signal_mid_write)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert sent and halt.is_set() and halt.fault is None
    assert optuna.load_study(study_name="s", storage=url).trials[0].user_attrs == {"worker": "w"}
    # A script's background job ignores Ctrl-C, the sweep's main process too: so do its workers.
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_on_signals(Halt())
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    another_process_writes(url)


def test_an_error_that_replaced_the_stop_s_keyboard_interrupt_is_the_stop_not_a_failure():
    """MLflow ends a stopped trial's run FAILED on its way out; an error there (a locked store) replaces the
    KeyboardInterrupt, which stays its cause: the trial is interrupted, not failed by its configuration."""
    from mlflow.exceptions import MlflowException

    from mnist_lab.sweep.objective import stopped

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise MlflowException("database is locked")
    except MlflowException as e:
        assert stopped(e)
    assert not stopped(MlflowException("database is locked")) and not stopped(ValueError("NaN loss"))


def test_a_space_that_keeps_failing_stops_at_its_limit_exits_non_zero_and_crowns_nothing(store, tmp_path):
    space = tmp_path / "doomed.yaml"
    space.write_text(
        f"base: {Path(SMOKE).parent / 'baseline.yaml'}\n"
        "fixed: {data.train_size: 500, data.validation_size: 100, train.epochs: 1, model.dense: [16]}\n"
        "sampler: random\npruner: none\nbudget: {n_trials: 2, max_consecutive_failures: 3}\n"
        # a 21x21 kernel cannot see the 12x12 feature map: every trial is impossible
        "params:\n  model.conv_blocks.1.kernel_size: {choices: [15, 21]}\n"
    )
    cmd = [str(Path(sweep_cmd()[0])), "sweep", str(space)]
    out = subprocess.run(cmd, env=os.environ | ENV, capture_output=True, text=True)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "3 trials failed in a row" in out.stderr and "larger than the 12x12 feature map" in out.stderr
    assert "Traceback" not in out.stderr
    study = load(f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}", "doomed-optuna")
    assert [t.state for t in study.trials] == [FAIL] * 3
    parent = runs_of("doomed-optuna", "study")[0]
    assert parent.info.status == "FAILED" and "failed in a row" in parent.data.tags["stopped"]
    assert not MlflowClient().search_registered_models()  # an unfinished study crowns nothing
    assert "no complete trial yet, so no table of the best" in out.stdout  # not an empty "top 0" table
    # A study with no complete trial still gets its report (the failures and why), and confirm says
    # in one line that there is nothing to confirm.
    report = subprocess.run([str(Path(sweep_cmd()[0])), "report"], env=os.environ | ENV, capture_output=True, text=True)
    assert report.returncode == 0 and "Traceback" not in report.stderr, report.stderr[-2000:]
    assert "larger than the 12x12 feature map" in (store / "reports" / "doomed-optuna" / "report.md").read_text()
    one_line_error(cli("confirm"), "study doomed-optuna: no complete trial to confirm")


def test_a_study_name_reused_in_another_storage_is_refused_not_shadowed(store, tmp_path):
    """A new Optuna storage with a study name the MLflow store already knows would file its trials
    beside the old study's in every report: refused in one line, and the new storage left without it."""
    first = cli("sweep", SMOKE, "--n-trials", "1", "--storage", f"sqlite:///{tmp_path / 'a.db'}", cwd=store, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    other = f"sqlite:///{tmp_path / 'b.db'}"
    one_line_error(cli("sweep", SMOKE, "--n-trials", "1", "--storage", other, cwd=store, timeout=300),
                   "study smoke-optuna: the MLflow store already holds a study of that name")
    assert not optuna.get_all_study_names(other)
    assert len(runs_of("smoke-optuna", "study")) == 1


# --- bad input: refused in about a second, before TensorFlow loads, blaming the right thing ----------

BASELINE = str(Path(SMOKE).parent / "baseline.yaml")
BAD_INPUTS = [
    (["train", BASELINE, "data.validation_size=0.0001"], "command line: data.validation_size=0.0001: 0.0001 of 60,000 images is 6"),
    (["train", BASELINE, "data.seed=-1"], "command line: data.seed=-1: Input should be greater than or equal to 0"),
    (["train", BASELINE, "train.seed=-3"], "command line: train.seed=-3"),
    (["train", BASELINE, "model.conv_blocks.0.filters=0"], "command line: model.conv_blocks.0.filters=0: Input should be greater than 0"),
    (["train", BASELINE, "model.conv_blocks=[{kernel_size: 40}]"], "command line: model.conv_blocks=[{kernel_size: 40}]: "),
    (["train", str(Path(SMOKE).parent)], "experiments: is a directory"),
    (["sweep", str(Path(SMOKE).parent)], "experiments: is a directory"),
    (["sweep", SMOKE, "--timeout", "-5"], "--timeout -5.0: input should be greater than 0"),
    (["sweep", SMOKE, "--timeout", "0"], "--timeout 0.0: input should be greater than 0"),
    (["sweep", SMOKE, "--n-trials", "0"], "--n-trials 0: input should be greater than 0"),
    (["sweep", SMOKE, "--workers", "0"], "--workers 0: must be at least 1"),
    (["sweep", SMOKE, "model.dropout=2"], "command line: model.dropout=2: must be in [0, 1)"),
    # a study name is a folder name: one that is a path would write outside reports/ or mlruns/
    (["sweep", SMOKE, "--study", "../../esc"], "--study '../../esc': a study name is letters, digits"),
    (["report", "--study", "../../esc"], "--study '../../esc': a study name is letters, digits"),
    (["confirm", "--study", "a'b"], "--study \"a'b\": a study name is letters, digits"),
    # --save is checked before minutes of training, not after
    (["train", BASELINE, "--save", "/"], "--save /: Keras saves models as .keras files"),
]


@pytest.mark.parametrize("argv, expected", BAD_INPUTS, ids=[" ".join(a[2:] or a[:2]) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_naming_its_culprit(bare_store, capsys, argv, expected):
    from mnist_lab.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (bare_store / "mlruns").exists()  # nothing written


def test_bad_input_is_refused_before_tensorflow_loads(store):
    for argv in (["train", BASELINE, "data.seed=-1"], ["sweep", SMOKE, "--timeout", "-5"]):
        started = time.time()
        out = subprocess.run([sys.executable, "-c", CHECK_NO_TF, *argv], capture_output=True, text=True, timeout=60)
        print(f"{argv[0]} refused in {time.time() - started:.1f} s")  # the figure the README quotes (pytest -s)
        assert out.returncode == 2, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "tensorflow was not imported, nor mlflow" in out.stdout, out


CHECK_NO_TF = """
import sys
from mnist_lab.cli import main
rc = main(sys.argv[1:])
if "tensorflow" not in sys.modules and "mlflow" not in sys.modules:
    print("tensorflow was not imported, nor mlflow")
sys.exit(rc)
"""


# --- stores that cannot be used: one line in seconds, before any training ----------------------------


def cli(*argv, env=None, cwd=None, timeout=60):
    return subprocess.run([str(Path(sweep_cmd()[0])), *argv], env=os.environ | ENV | (env or {}), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(out, expected):
    err = out.stderr.strip()
    assert out.returncode == 2, err[-2000:]
    assert len(err.splitlines()) == 1 and expected in err, err
    return err


def test_unreachable_tracking_server_and_storage(store):
    started = time.time()
    out = cli("train", BASELINE, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    one_line_error(out, "MLFLOW_TRACKING_URI=http://127.0.0.1:9: the tracking server does not answer")
    print(f"an unreachable tracking server refused in {time.time() - started:.1f} s")  # quoted by the README (pytest -s)
    assert time.time() - started < 30  # MLflow alone retried for over four minutes
    out = cli("sweep", SMOKE, "--storage", "postgresql://lab:planted-pw-5150@127.0.0.1:9/optuna")
    err = one_line_error(out, "--storage postgresql://lab:***@127.0.0.1:9/optuna: cannot open the Optuna storage")
    assert "planted-pw-5150" not in err


def test_mlruns_that_is_a_file(bare_store):
    store = bare_store
    (store / "mlruns").write_text("not a folder")
    one_line_error(cli("train", BASELINE), "mlruns: is a file, not a folder")
    assert (store / "mlruns").read_text() == "not a folder"  # nothing touched


def test_mlruns_that_is_read_only(bare_store):
    """Root writes through permissions: a read-only file system it is where root may mount one; where
    it may not (a container without CAP_SYS_ADMIN), the command runs as an unprivileged user instead."""
    store = bare_store
    (store / "mlruns").mkdir()
    if os.geteuid() != 0:
        (store / "mlruns").chmod(0o555)
        one_line_error(cli("train", BASELINE), "mlruns: cannot write the tracking store there (Permission denied)")
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(store / "mlruns")], capture_output=True)
    if mounted.returncode == 0:
        try:
            one_line_error(cli("train", BASELINE), "mlruns: cannot write the tracking store there (Read-only file system)")
        finally:
            subprocess.run(["umount", str(store / "mlruns")], check=True)
    else:
        as_nobody(store)


def as_nobody(store):
    """The same command as the unprivileged user nobody, in a folder it may enter but not write."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="mnist-lab-ro-"))
    try:
        folder.chmod(0o755)
        (folder / "mlruns").mkdir(mode=0o555)
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(Path(sweep_cmd()[0])),
                              "train", BASELINE], env=os.environ | ENV | {"HOME": str(folder)}, cwd=folder,
                             capture_output=True, text=True, timeout=60)
        one_line_error(out, "mlruns: cannot write the tracking store there (Permission denied)")
        assert not any((folder / "mlruns").iterdir())
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=True)


def test_save_onto_a_folder_is_refused_before_training(bare_store, capsys):
    from mnist_lab.cli import main

    (bare_store / "model.keras").mkdir()
    assert main(["train", BASELINE, "--save", "model.keras"]) == 2
    assert "--save model.keras: is a folder" in capsys.readouterr().err
    assert not (bare_store / "mlruns").exists()  # refused before the store was even made


def test_a_read_only_folder_with_a_tracking_server_elsewhere(store, tmp_path):
    """The current folder is read-only but MLFLOW_TRACKING_URI points elsewhere: the commands that
    would write here (the default Optuna storage, reports/) say so in one line, before any training."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlruns' / 'mlflow.db'}"}
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(folder)], capture_output=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a read-only file system here: {mounted.stderr.decode().strip()}")
    else:
        folder.chmod(0o555)
    try:
        one_line_error(cli("sweep", SMOKE, env=env, cwd=folder), "mlruns/: cannot hold the Optuna storage here")
        out = cli("sweep", SMOKE, "--storage", f"sqlite:///{store / 'optuna.db'}", env=env, cwd=store, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]  # a study to report on
        one_line_error(cli("report", env=env, cwd=folder), "--out reports: cannot write the report there")
        one_line_error(cli("train", BASELINE, "--save", "m.keras", env=env, cwd=folder), "--save m.keras:")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(folder)], check=True)


def test_a_damaged_tracking_store_and_a_symlink_loop_are_named(bare_store):
    (bare_store / "mlruns").mkdir()
    (bare_store / "mlruns" / "mlflow.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 80)  # truncated
    err = one_line_error(cli("train", BASELINE), "mlruns/mlflow.db: cannot be read")
    assert "the file is damaged: move it away" in err
    (bare_store / "loop.yaml").symlink_to(bare_store / "loop.yaml")
    one_line_error(cli("train", str(bare_store / "loop.yaml")), "loop.yaml: is a symbolic link that loops back on itself")
