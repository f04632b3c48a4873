"""The `mnist-lab` command: `mnist-lab --help`, `mnist-lab SUBCOMMAND --help`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

# TensorFlow's C++ start-up chatter (CUDA probing, CPU feature notes) is noise on a CLI.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# MLflow 3 reports usage to its developers; a lab on a closed network would only wait on it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# A tracking server that dies mid-study is noticed in seconds: MLflow's defaults retry each request
# 7 times with exponential back-off and a 120 s timeout (a 13-minute stall was measured).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
# MLflow's own "View run ... at: <tracking URI>" lines would print a password in that URI; the lab
# prints its own links, with passwords masked.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

from mnist_lab.errors import Interrupted, MnistLabError, stop_signals  # noqa: E402
from mnist_lab.startup import import_tensorflow  # noqa: E402


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="folder with the four MNIST IDX files (default: $MNIST_LAB_DATA, else download)")


def cmd_train(args: argparse.Namespace) -> int:
    from mnist_lab.config import load_config

    config = load_config(args.config, args.overrides)  # a bad config fails before TensorFlow is loaded
    from mnist_lab import tracking
    from mnist_lab.errors import check_save_path

    check_save_path(args.save)  # and a --save that cannot be written: before minutes of training
    experiment_id = tracking.setup()  # and a tracking store that cannot be used
    import_tensorflow()
    from mnist_lab.train import train

    result = train(config, data_dir=args.data_dir, evaluate_test=args.evaluate_test, save=args.save)
    print(
        f"run {result.run_id}: val_accuracy {result.val_accuracy:.4f}, val_loss {result.val_loss:.4f} "
        f"after {result.epochs_run} epochs, {result.train_seconds / result.epochs_run:.1f} s/epoch"
    )
    if tracking.ui_url() != tracking.UI_URL:  # a tracking server: where to see the run (password masked)
        print(f"  {tracking.run_link(experiment_id, result.run_id)}")
    if result.test_accuracy is not None:
        print(f"test_accuracy {result.test_accuracy:.4f}, test_loss {result.test_loss:.4f}")
    if args.save:
        print(f"saved {args.save}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import_tensorflow()
    from mnist_lab.predict import ImageError, load_model, predict, to_mnist

    if args.top < 1 or args.top > 10:
        raise MnistLabError(f"--top {args.top}: must be between 1 and 10")
    images, errors = {}, {}
    for path in args.images:
        try:
            images[path] = to_mnist(path)
        except ImageError as e:
            errors[path] = str(e)
            print(f"mnist-lab predict: error: {e}", file=sys.stderr)
    model = load_model(args.model) if images else None
    results = predict(model, images, args.top) if images else []
    checked = any(r.digit_shape is not None for r in results)
    if args.json:
        out = [
            {"file": r.file, "digit": r.digit, "probability": r.probability, "model": model.name, "digit_shape": r.digit_shape,
             "warnings": r.warnings, "top": [{"digit": d, "probability": p} for d, p in r.top]}
            for r in results
        ] + [{"file": f, "error": e} for f, e in errors.items()]
        print(json.dumps(out, indent=2))
    else:
        if model is not None:
            print(f"model: {model.name}" + ("" if checked else " (shapes not checked, probabilities not calibrated: "
                                                              "set MNIST_LAB_DATA to the MNIST folder)"))
        for r in results:
            ranked = ", ".join(f"{d} ({percent(p)})" for d, p in r.top)
            print(f"{r.file}: {ranked}" + (f"  [{'; '.join(r.warnings)}]" if r.warnings else ""))
    return 1 if errors else 0


def percent(p: float) -> str:
    """A probability as people read it: never "100.0%" (no network is certain), never "0.0%"."""
    return ">99.9%" if p > 0.999 else "<0.1%" if p < 0.001 else f"{p:.1%}"


def cmd_sweep(args: argparse.Namespace) -> int:
    # `run` checks the space, the budget flags and the overrides before MLflow and TensorFlow load
    # (3-10 s): a typo costs half a second.
    from mnist_lab.sweep import SweepRequest, run

    summary = run(SweepRequest(
        space_path=args.space, n_trials=args.n_trials, timeout=args.timeout, workers=args.workers, study=args.study,
        storage=args.storage, engine=args.engine, overrides=args.overrides, data_dir=args.data_dir, seed=args.seed,
    ))
    verdict, test = summary.get("verdict"), summary.get("test")
    if summary.get("failed"):  # stopped short of its budget: said why on stderr already
        print(f"study {summary['study']}: unfinished, so no champion", file=sys.stderr)
        return 1
    if verdict is None:
        print(f"study {summary['study']}: no complete trial, so no champion")
        return 0
    if verdict.promoted:
        head = f"crowned: registered as mnist-cnn@champion version {verdict.model_version}"
    else:
        head = f"{verdict.reason}; mnist-cnn@champion stays as it is"
    print(head)
    if test:
        print(f"the one test-set evaluation: run {test['run_id']}, test_accuracy {test['test_accuracy']:.4f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mnist_lab.report import page

    if args.ui_url and not args.ui_url.startswith(("http://", "https://")):
        raise MnistLabError(f"--ui-url {args.ui_url}: not a web address; pass one like http://127.0.0.1:5000")
    paths = page.run(args.study, args.runs, args.out, args.ui_url.rstrip("/") if args.ui_url else None)
    print(f"wrote {paths['html']} (open it in a browser), {paths['md']} and {paths['csv']}")
    return 0


def cmd_confirm(args: argparse.Namespace) -> int:
    from mnist_lab import champion, tracking

    if args.top < 1 or args.seeds < 2:  # before MLflow and TensorFlow load
        raise MnistLabError(f"--top {args.top} --seeds {args.seeds}: need at least 1 configuration and 2 seeds (a spread needs two)")
    if args.study:
        tracking.check_study_name(args.study)
    experiment_id = tracking.setup()
    import_tensorflow()
    contenders = champion.confirm_top(
        experiment_id, args.study, args.top, args.seeds, args.data_dir,
        on_result=lambda c, seed, v: print(f"#{c.rank} ({c.label}) seed {seed}: val_accuracy {v:.4f}", flush=True))
    for c in contenders:
        print(f"#{c.rank} {c.label}: val_accuracy {c.mean:.4f} mean over {len(c.scores)} seeds")
    print(f"`mnist-lab report{' --study ' + args.study if args.study else ''}` compares them")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from mnist_lab import tracking

    experiment_id = tracking.setup()  # also checks the store, and creates mlruns/ on a fresh clone
    from mlflow import MlflowClient

    try:
        study = tracking.latest_study(MlflowClient(), experiment_id)
    except MnistLabError:  # no study yet: the link opens the experiment's runs
        study = None
    opens_on = f"the runs of study {study}" if study else "the experiment's runs (no study yet)"
    uri = tracking.current_uri()
    if uri.startswith(("http://", "https://")):  # a tracking server: it serves its own UI
        print(f"{tracking.redact(uri)} is a tracking server with its own UI; {opens_on}:\n  "
              f"{tracking.runs_link(experiment_id, study)}")
        return 0
    from mnist_lab import ui

    return ui.serve(args.host, args.port, experiment_id, study)


def cmd_dashboard(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from mnist_lab.sweep.optuna_study import default_storage

    storage = args.storage or default_storage()
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        raise MnistLabError(f"{storage.removeprefix('sqlite:///')}: no Optuna storage there yet; run `make sweep` first, "
                            "or pass --storage URL")
    program = shutil.which("optuna-dashboard", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if program is None:
        raise MnistLabError("optuna-dashboard is not installed: `make dashboard` installs it, "
                            "or pip install 'mnist-lab[dashboard]'")
    from mnist_lab import tracking

    print(f"Optuna Dashboard over {tracking.redact(storage)} on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    os.execv(program, [program, storage, "--host", args.host, "--port", str(args.port)])  # replaces this process


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mnist-lab", description="Train, sweep, compare and use CNNs on MNIST, tracked in MLflow.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one model from a config, tracked as an MLflow run", description=(
        "Train one model. CONFIG is a YAML file of differences from the defaults (experiments/*.yaml); "
        "overrides are dotted key=value pairs, e.g. train.epochs=1 data.train_size=2000."))
    p.add_argument("config", metavar="CONFIG", nargs="?", help="experiment YAML (default: the built-in baseline)")
    p.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help="config overrides, values in YAML syntax")
    p.add_argument("--evaluate-test", action="store_true", help="also evaluate on the 10,000 test images (final evaluations only)")
    p.add_argument("--save", metavar="PATH", help="also write the trained model to PATH.keras")
    _add_data_dir(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="read digits from image files", description=(
        "Predict the digit in each image (PNG, JPEG, BMP, ...; any size or colour). "
        "Default model: mnist-cnn@champion, else the newest finished training run."))
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--model", metavar="URI", help="runs:/RUN_ID/model, models:/NAME@ALIAS, or a .keras file")
    p.add_argument("--top", type=int, default=1, metavar="K", help="show the K most likely digits (default 1)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("sweep", help="search hyperparameters around a base config (Optuna or KerasTuner)", description=(
        "Run (or resume) a study over SPACE, a search-space YAML (experiments/sweep.yaml). Each trial is a "
        "nested MLflow run under the study's run; running the same command again continues the study."))
    p.add_argument("space", metavar="SPACE", help="search-space YAML")
    p.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help="config overrides for every trial")
    p.add_argument("--n-trials", type=int, metavar="N", help="a cap on the study's finished trials (default: the space's budget)")
    p.add_argument("--timeout", type=float, metavar="S", help="the study's time budget, search and confirmation, in seconds "
                   "summed over every run of the study (default: the space's budget)")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes on this machine (default: the space's "
                   "`workers`; experiments/sweep.yaml: auto, one per core)")
    p.add_argument("--seed", type=int, metavar="N", help="the sampler's seed (default: the space's, 0); another seed is "
                   "a study of its own (name ending -seedN), and a study keeps the seed it started with")
    p.add_argument("--study", metavar="NAME", help="study name (default: the space file's name)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage (default sqlite:///mlruns/optuna.db; postgresql://... for many machines)")
    p.add_argument("--engine", choices=["optuna", "keras-tuner"], default="optuna")
    _add_data_dir(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="write the comparison report of a study (HTML, Markdown, CSV)", description=(
        "Read a study's runs from MLflow and write reports/<study>/index.html (self-contained), report.md and "
        "runs.csv, also logged on the study's parent run. Default: the latest study."))
    p.add_argument("--study", action="append", metavar="NAME", help="a study (repeat to put several side by side)")
    p.add_argument("--runs", nargs="+", metavar="ID", help="report on these runs instead of a study")
    p.add_argument("--out", metavar="DIR", help="output folder (default reports/)")
    p.add_argument("--ui-url", metavar="URL", help="the MLflow UI the report's links open (default: the tracking server "
                   "in use, else where `mnist-lab ui` serves this store now, else http://127.0.0.1:5000)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("confirm", help="retrain a study's top configurations over several seeds", description=(
        "Retrain the top K configurations of a study with N training seeds each, tracked under the study, "
        "so the report can tell real differences from noise."))
    p.add_argument("--study", metavar="NAME", help="the study (default: the latest)")
    p.add_argument("--top", type=int, default=3, metavar="K", help="configurations to confirm (default 3)")
    p.add_argument("--seeds", type=int, default=3, metavar="N", help="training seeds per configuration (default 3)")
    _add_data_dir(p)
    p.set_defaults(func=cmd_confirm)

    p = sub.add_parser("ui", help="the MLflow UI over the store in use, opened on the latest study", description=(
        "Serve MLflow's UI over MLFLOW_TRACKING_URI (default: mlruns/) and print a link to the latest study's runs. "
        "With a tracking server in MLFLOW_TRACKING_URI, print the link into its UI instead."))
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000, MLflow's own)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("dashboard", help="Optuna Dashboard over the studies' Optuna storage (optional extra)", description=(
        "Serve Optuna Dashboard (pip install 'mnist-lab[dashboard]'; `make dashboard` does) over the Optuna storage."))
    p.add_argument("--storage", metavar="URL", help="Optuna storage (default sqlite:///mlruns/optuna.db)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080, Optuna Dashboard's own)")
    p.set_defaults(func=cmd_dashboard)
    return ap


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args, extra = ap.parse_known_args(argv)
    # argparse stops collecting KEY=VALUE positionals at the first option; take the rest too.
    overrides = [x for x in extra if "=" in x and not x.startswith("-")]
    if len(overrides) != len(extra) or (overrides and not hasattr(args, "overrides")):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if overrides:
        args.overrides += overrides
    # `train CONFIG KEY=VALUE`: argparse cannot tell an override from a config path by position.
    if getattr(args, "config", None) and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.config)
        args.config = None
    stopping = stop_signals() if threading.current_thread() is threading.main_thread() else ()
    # SIGTERM (kill, a scheduler) and SIGHUP (a closed terminal or ssh session) stop a command as
    # Ctrl-C does: runs end KILLED, a sweep queues its trial again and says how to resume.
    previous = {sig: signal.signal(sig, _interrupt) for sig in stopping}
    try:
        return args.func(args)
    except Interrupted as e:
        print(f"mnist-lab {args.command}: interrupted: {e}", file=sys.stderr)
        return 130
    except MnistLabError as e:
        print(f"mnist-lab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mnist-lab {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug: its traceback, with any password in a store's URI masked (MLflow puts URLs in errors)
        import traceback

        from mnist_lab.tracking import redact

        print(redact(traceback.format_exc()), file=sys.stderr, end="")
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
