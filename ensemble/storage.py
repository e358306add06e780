"""Where a tuning study is kept: its storage, the fingerprint of what it was tuned on, its lock, and its writer.

A study is only worth resuming with the inputs it was tuned on: it records a fingerprint of them (prediction
files, gold, split, stats, objective, search space, seed; see ``ensemble/optimize.py``) and refuses, in one line,
to continue with other ones. One tuner at a time may use a SQLite study: a lock file beside it (``<db>.lock``) makes
a second one stop at once instead of interleaving trials. Finished trials are written by a child process
(:class:`TrialWriter`) so that Optuna's ORM cost does not slow the sampler; the child dies with the tuner (on Linux
the kernel kills it, elsewhere it stops at its next look at its parent), so nothing writes after a kill.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from utils.fileio import InputError, first_line

FINGERPRINT_ATTR = "lamar_inputs_fingerprint"
SQLITE_PREFIX = "sqlite:///"


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def sqlite_path(storage: str) -> Path | None:
    """The database file of a ``sqlite:///path`` storage (None for other storages and for in-memory SQLite)."""
    if storage.startswith(SQLITE_PREFIX) and storage[len(SQLITE_PREFIX):] not in ("", ":memory:"):
        return Path(storage[len(SQLITE_PREFIX):])
    return None


def ensure_sqlite_folder(storage: str) -> None:
    """Create the folder of a SQLite storage (SQLite cannot, and fails obscurely), only inside an existing parent."""
    path = sqlite_path(storage)
    if path is None or path.parent.is_dir():
        return
    try:
        path.parent.mkdir(exist_ok=True)
    except FileNotFoundError:
        raise InputError.flag("--storage", f"the folder {path.parent.parent} does not exist", value=storage) from None


class StudyLock:
    """An exclusive lock on a SQLite study's file for as long as one tuner uses it (no-op for other storages)."""

    def __init__(self, storage: str | None) -> None:
        from filelock import FileLock

        path = sqlite_path(storage) if storage else None
        self.path = None if path is None else Path(f"{path}.lock")
        self.lock = None if self.path is None else FileLock(str(self.path), timeout=0)

    def __enter__(self) -> "StudyLock":
        from filelock import Timeout

        if self.lock is not None:
            ensure_sqlite_folder(f"{SQLITE_PREFIX}{self.path.with_suffix('')}")  # filelock would create any folders
            try:
                self.lock.acquire()
            except Timeout:
                raise InputError(self.path, "", "another tuner is using this study right now; wait for it to finish "
                                                "or use another --storage") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.lock is not None:
            self.lock.release()


def open_persistent_study(storage: str | None, study_name: str, fingerprint: dict[str, Any]) -> Any:
    """The persistent study (None for a purely in-memory run); refuses one tuned on other inputs or settings."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    if storage is None:
        return None
    ensure_sqlite_folder(storage)
    try:
        persistent = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                         load_if_exists=True)
    except (SQLAlchemyError, ValueError, ImportError) as err:
        raise InputError.flag("--storage", f"cannot open this Optuna storage ({type(err).__name__}: {first_line(err)})",
                              value=storage) from None
    recorded = persistent.user_attrs.get(FINGERPRINT_ATTR)
    if recorded is None:
        if persistent.trials:
            raise InputError(storage, f"study '{study_name}'", "holds trials without an input fingerprint (made by "
                             "another program or an older version); use another --study_name")
        persistent.set_user_attr(FINGERPRINT_ATTR, fingerprint)
    elif recorded != fingerprint:
        changed = sorted(key for key in set(recorded) | set(fingerprint) if recorded.get(key) != fingerprint.get(key))
        raise InputError(storage, f"study '{study_name}'", f"was tuned on other inputs or settings ({', '.join(changed)} "
                                                           "differ); use another --study_name or --storage")
    return persistent


def _die_with_parent() -> None:
    """Linux: ask the kernel to kill this process when its parent dies (elsewhere the writer polls its parent)."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass


class TrialWriter:
    """Writes finished trials to the persistent study from a child process, in the order they finished.

    Optuna's SQLite storage spends ~25-40 ms of CPU per written trial in its ORM, as much as a trial itself; the
    child moves that work to another core. :meth:`close` waits until every queued trial is written. If the tuner is
    killed the child dies too: trials it had not written yet are lost, which a resumed run redoes exactly (it
    replays the sampler over the written trials, see ``ensemble.tuning.tune``).
    """

    def __init__(self, storage: str, study_name: str) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self.queue = context.Queue()
        self.process = context.Process(target=_write_trials, args=(storage, study_name, self.queue, os.getpid()),
                                       name="optuna-trial-writer", daemon=True)
        self.process.start()

    def put(self, trial: Any) -> None:
        self.queue.put(trial)

    def close(self) -> None:
        """Flush: wait until every queued trial has been written."""
        self.queue.put(None)
        self.queue.close()
        self.queue.join_thread()
        self.process.join()
        if self.process.exitcode != 0:
            raise RuntimeError(f"the trial writer process failed (exit code {self.process.exitcode}); see its error above")


def _write_trials(storage: str, study_name: str, queue: Any, parent_pid: int) -> None:
    import queue as queue_module

    import optuna

    _die_with_parent()
    quiet_optuna()
    persistent = optuna.load_study(study_name=study_name, storage=storage)
    while True:
        if os.getppid() != parent_pid:  # the tuner died: write nothing more
            return
        try:
            trial = queue.get(timeout=0.5)
        except queue_module.Empty:
            continue
        if trial is None:
            return
        if os.getppid() != parent_pid:
            return
        persistent.add_trial(trial)
