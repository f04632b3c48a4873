"""Errors for people: the exception the CLI prints as one line (what, where, what to do) with
exit code 2, and the wording of the causes every stage meets (a missing file, a misspelt key,
pydantic's first complaint). A traceback is left for bugs.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError


class MnistLabError(Exception):
    """Bad input from a person (file, key, value): the CLI prints it as one line, no traceback."""


class ConfigError(MnistLabError):
    pass


class Interrupted(MnistLabError):
    """Ctrl-C or SIGTERM: the command stopped cleanly; the message says how to resume (exit 130)."""


def did_you_mean(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, [str(k) for k in known], n=1)
    allowed = ", ".join(str(k) for k in known)
    return f" (did you mean '{close[0]}'?)" if close else f" (allowed: {allowed})"


def missing(path: Path) -> str:
    """Why `path` cannot be opened: no such file, or a symbolic link that loops or points nowhere."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            return "is a symbolic link that loops back on itself"
        except OSError:
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
    return "no such file"


def first_error(error: ValidationError) -> tuple[str, str, dict]:
    """(dotted key, message, pydantic's error) of the error to show, for configs and space files alike.
    An unknown key comes first: a misspelt key also leaves the real one missing, and the misspelling
    is the news."""
    first = min(error.errors(), key=lambda err: err["type"] != "extra_forbidden")
    loc = ".".join(str(p) for p in first["loc"])
    return loc, first["msg"].removeprefix("Value error, "), first


class StoreLost(MnistLabError):
    """A store failed mid-study: the tracking server, the Optuna storage's database, or the disk under
    them. Not the configuration's fault, so the trial is queued again, not counted as a failure."""


# Words in an exception (or its causes) that say a store went away, as MLflow, SQLAlchemy, psycopg,
# requests and SQLite say it; checked by text so this module imports none of them.
_DISK = ("database or disk is full", "No space left on device", "[Errno 28]")
_GONE = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection", "Read timed out",
         "RemoteDisconnected", "Connection aborted", "server closed the connection", "terminating connection",
         "could not receive data", "connection to server", "Connection reset by peer", "the connection is closed",
         "consuming input failed", "no connection to the server")


def causes(error: BaseException | None) -> list[BaseException]:
    """`error` and what caused it, as Python shows them (a context raised `from None` is not a cause)."""
    chain: list[BaseException] = []
    while error is not None and all(error is not e for e in chain):
        chain.append(error)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return chain


def store_fault(error: BaseException | None) -> str | None:
    """What failed, if `error` or anything that caused it is a store going away mid-study (not a bug,
    not bad input): 'the disk is full', 'the database does not answer' (a database server under the
    Optuna storage or the tracking store), or 'the tracking server does not answer'."""
    chain = causes(error)
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in chain) or any(w in text for w in _DISK):
        return "the disk is full"
    if not any(w in text for w in _GONE):
        return None
    if any(type(e).__module__.startswith(("sqlalchemy", "psycopg")) for e in chain):
        return "the database does not answer"
    return "the tracking server does not answer"


def fault_cause(error: BaseException) -> str:
    """The first line of what a store said when it went away (the deepest cause that says so), not
    the wrapper's generic words ('An exception is raised during the commit')."""
    chain = causes(error)
    for e in reversed(chain):
        text = str(e)
        if any(w in text for w in (*_DISK, *_GONE)) or isinstance(e, OSError):
            return next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    return next((line.strip() for line in str(chain[0]).splitlines() if line.strip()), type(chain[0]).__name__)


def check_save_path(save: str | Path | None) -> Path | None:
    """--save checked before any training: a .keras file that can be written there, not a folder."""
    if save is None:
        return None
    path = Path(save)
    if path.suffix != ".keras":
        raise MnistLabError(f"--save {save}: Keras saves models as .keras files; use a path ending in .keras")
    if path.is_dir():
        raise MnistLabError(f"--save {save}: is a folder; give a file name such as {path / 'model.keras'}")
    folder = next((f for f in [path.parent, *path.parent.parents] if f.exists()), Path("."))  # the nearest that exists
    if (path.exists() and not os.access(path, os.W_OK)) or not os.access(folder, os.W_OK | os.X_OK):
        raise MnistLabError(f"--save {save}: {folder.resolve()} cannot be written to; save somewhere you can write")
    return path


def stop_signals(ctrl_c: bool = False) -> tuple:
    """The signals that stop a command as Ctrl-C does: SIGTERM, and SIGHUP (a closed terminal) unless
    it is ignored (`nohup`: the person asked for the command to outlive the terminal); with `ctrl_c`,
    SIGINT too unless it is ignored (a script's background job)."""
    import signal

    unless_ignored = (signal.SIGINT,) if ctrl_c else ()
    return (signal.SIGTERM,) + tuple(s for s in (*unless_ignored, signal.SIGHUP) if signal.getsignal(s) != signal.SIG_IGN)


@contextlib.contextmanager
def signals_deferred():
    """Ctrl-C, SIGTERM or SIGHUP heard inside the block stop the command as it leaves the block, not
    inside it: for the main thread's store calls. A KeyboardInterrupt raised half-way through one can
    leave its connection, and SQLite's lock, held, and the sweep then waits on its own lock for the
    stopped trial's last write. Only signals with a Python handler wait (Python's Ctrl-C, the CLI's), not
    SIG_DFL or SIG_IGN; the handler is then called once, as the signal's own."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raising = {s: h for s in (signal.SIGINT, *stop_signals()) if callable(h := signal.getsignal(s))}
    heard: list[int] = []
    try:
        with contextlib.ExitStack() as restore:
            for s, handler in raising.items():
                # Registered before the swap: a signal that lands anywhere in the swap or in the restore
                # cannot leave a handler that only listens (ExitStack runs every callback, then raises).
                restore.callback(signal.signal, s, handler)
                signal.signal(s, lambda signum, frame: heard.append(signum))
            yield
    finally:
        if heard:  # even when the block failed: the command was asked to stop
            raising[heard[0]](heard[0], None)
