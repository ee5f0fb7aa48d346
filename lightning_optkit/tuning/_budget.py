"""A study's budget shared by every process: locks, the claim of a trial, and whether a trial's process lives.

Several launchers (machines) and their worker processes share one study. Three things must hold
however many of them start at once:

- **The first start is serialized.** Creating Optuna's tables, creating the study and enqueuing its
  first trials happen under a lock (:func:`storage_lock`), so two processes never both create the
  schema (PostgreSQL's ``UniqueViolation`` on ``pg_type``) or both enqueue the base config.
- **The budget holds.** A worker *claims* its trial (:func:`claim_trial`): under the study's claim
  lock it counts the trials that hold a place in the budget -- COMPLETE, PRUNED and RUNNING, on any
  machine -- and asks for a trial only when that count is below ``n_trials`` and the study's
  deadline has not passed. Each claim adds one RUNNING trial before the lock is released, so the
  study never holds more than ``n_trials`` finished-or-running trials; a trial that fails gives its
  place back (its retry takes it).
- **A trial's process is known to be alive.** Each claimed trial records its process
  (:data:`~lightning_optkit.tuning._pool._protocol.WORKER_KEY`: host, pid and the process's start time,
  so a reused pid is not mistaken for it) and, on an RDB storage with heartbeats, its first
  heartbeat at once (Optuna only fails trials that have beaten at least once).

Locks: PostgreSQL uses a transaction-level advisory lock (``pg_advisory_xact_lock``, released at
commit and when the connection drops with its process); SQLite and journal files use an
``fcntl.flock`` on a file next to them (released by the kernel when the process dies). Other
databases (MySQL...) have no lock here: a claim there counts and asks without one, so the
overshoot is at most the number of workers that claim at the same moment.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ._optuna_private import (
    backend_engine,
    backend_of,
    beat_once,
    heartbeat_enabled,
    stale_ids,
    storage_of,
    trial_id,
)

__all__ = ["Budget", "claim_trial", "held_trials", "process_alive", "process_record", "stale_trial_numbers",
           "storage_lock"]

HOLDS_PLACE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STARTED_AT_KEY = "optkit.started_at"  # study user attribute: when the study was created (seconds since the epoch)

_LOCK_FILES: weakref.WeakKeyDictionary[BaseStorage, str] = weakref.WeakKeyDictionary()


def register_lock_file(storage: BaseStorage, path: str) -> None:
    """Remember the file whose ``flock`` serializes ``storage``'s first start and claims (journal files)."""
    _LOCK_FILES[storage] = path


def _advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock`` from a lock's name."""
    return int.from_bytes(hashlib.sha256(f"optkit:{name}".encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def _flock(path: str) -> Iterator[None]:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def postgres_lock(engine: Any, name: str) -> Iterator[None]:
    """Hold PostgreSQL's transaction-level advisory lock ``name`` on a connection of ``engine``."""
    from sqlalchemy import text

    with engine.connect() as conn, conn.begin():
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _advisory_key(name)})
        yield


def _engine(storage: BaseStorage) -> Any:
    """The SQLAlchemy engine behind ``storage`` (Optuna wraps an RDBStorage in a caching layer), or None."""
    engine = getattr(storage, "engine", None)
    if engine is None:  # behind Optuna's caching layer
        engine = backend_engine(storage)
    return engine


def _lock_file(storage: BaseStorage) -> str | None:
    if storage in _LOCK_FILES:
        return _LOCK_FILES[storage]
    backend = backend_of(storage)
    if backend is not None and backend in _LOCK_FILES:
        return _LOCK_FILES[backend]
    engine = _engine(storage)
    if engine is not None and engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            return f"{database}.optkit.lock"
    return None


@contextlib.contextmanager
def storage_lock(storage: BaseStorage, name: str, own_file: bool = False) -> Iterator[None]:
    """Serialize a critical section across every process that shares ``storage`` (see the module docstring).

    ``own_file``: on a lock file, use one of this ``name``'s own (next to the storage's), so that a long
    critical section (re-evaluation, minutes) does not hold up the claims of other processes. PostgreSQL
    locks are per name anyway.

    Example:
        >>> storage = optuna.storages.InMemoryStorage()
        >>> with storage_lock(storage, "claim:demo"):  # one process only: nothing to lock
        ...     pass
    """
    engine = _engine(storage)
    if engine is not None and engine.dialect.name == "postgresql":
        with postgres_lock(engine, name):
            yield
        return
    path = _lock_file(storage) if os.name == "posix" else None
    if path is None:
        yield
        return
    if own_file:
        path = f"{path}.{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    with _flock(path):
        yield


@dataclass(frozen=True)
class Budget:
    """What the study may still start: ``n_trials`` places in all, until ``deadline`` (seconds since the epoch).

    Example:
        >>> Budget(8, None).expired(), Budget(None, 0.0).expired()
        (False, True)
    """

    n_trials: int | None
    deadline: float | None = None

    def expired(self) -> bool:
        """The study's deadline (``--study-timeout``) has passed."""
        return self.deadline is not None and time.time() >= self.deadline


def held_trials(study: optuna.Study) -> tuple[int, int]:
    """``(finished, running)``: COMPLETE + PRUNED trials, and RUNNING ones, on every machine."""
    trials = study.get_trials(deepcopy=False, states=HOLDS_PLACE)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


def claim_trial(study: optuna.Study, budget: Budget,
                record: Callable[[optuna.trial.Trial], None] | None = None) -> optuna.trial.Trial | None:
    """Ask for a trial if the budget has a place left; ``None`` when it has not (or the deadline passed).

    Under the study's claim lock: count the trials that hold a place, ask (a WAITING trial -- a retry,
    an enqueued config -- is popped first), then ``record(trial)`` (who runs it) and the trial's first
    heartbeat, all before another process may count.
    """
    with storage_lock(storage_of(study), f"claim:{study.study_name}"):
        if budget.expired():
            return None
        if budget.n_trials is not None and sum(held_trials(study)) >= budget.n_trials:
            return None
        trial = study.ask()
        if record is not None:
            record(trial)
        if heartbeat_enabled(storage_of(study)):
            beat_once(study, trial)
    return trial


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux), or ``None`` where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def process_record(**extra: Any) -> dict[str, Any]:
    """This process as a trial's liveness record: host, pid, start time, and ``extra``."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _start_ticks(pid), **extra}


def process_alive(info: dict[str, Any]) -> bool | None:
    """Whether the process of a liveness record still runs: ``None`` when it is on another host (unknown)."""
    if info.get("host") != socket.gethostname() or not info.get("pid"):
        return None
    pid = int(info["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = info.get("pid_start")
    return started is None or _start_ticks(pid) in (None, started)  # a reused pid started at another time


def stale_trial_numbers(study: optuna.Study) -> set[int] | None:
    """Numbers of RUNNING trials whose heartbeat is older than the grace period; ``None`` without heartbeats."""
    if not heartbeat_enabled(storage_of(study)):
        return None
    ids = stale_ids(study)
    return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if trial_id(t) in ids}


def describe_running(trial: FrozenTrial, worker_key: str) -> str:
    """Where a RUNNING trial runs, for a message: ``trial 7 (host h, pid 123)``."""
    info = trial.user_attrs.get(worker_key) or {}
    where = f"host {info.get('host', '?')}, pid {info.get('pid', '?')}" if info else "no process recorded yet"
    return f"trial {trial.number} ({where})"
