"""The study's storage: URLs, files and aliases, opened safely by many processes at once.

:func:`resolve_storage` turns what ``tune(storage=...)`` / ``--storage`` accepts (an SQLAlchemy URL,
a ``.db`` or journal ``.log`` file, ``"memory"``, a storage object, or nothing: the SQLite file
in ``out_dir``) into an Optuna storage; :func:`worker_storage` chooses it for the process pool.
A storage that cannot be opened is a :class:`~lightning_optkit.ConfigError` naming it (its password
redacted, :func:`redact_url`) and the driver's reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from ..config import ConfigError
from ._budget import postgres_lock, register_lock_file

__all__ = ["MEMORY_ALIASES", "default_storage_url", "is_memory", "make_storage_folder", "redact_url",
           "resolve_storage", "storage_file", "worker_storage"]

# What names the in-memory storage (the study lives in this process only).
MEMORY_ALIASES = ("memory", ":memory:", "inmemory", "in-memory")


def is_memory(storage: Any) -> bool:
    """Whether ``storage`` names the in-memory storage (:data:`MEMORY_ALIASES`, any case).

    Example:
        >>> is_memory("In-Memory"), is_memory("study.db"), is_memory(None)
        (True, False, False)
    """
    return isinstance(storage, (str, os.PathLike)) and os.fspath(storage).strip().lower() in MEMORY_ALIASES

_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@]*:)(?P<pw>[^@]*)(?P<tail>@)")


def redact_url(url: Any) -> str:
    """A storage URL safe to print: the password, if any, replaced by ``***``.

    Example:
        >>> redact_url("postgresql://tuner:s3cret@db:5432/optuna")
        'postgresql://tuner:***@db:5432/optuna'
    """
    if not isinstance(url, str):
        return type(url).__name__
    return _PASSWORD.sub(lambda m: m.group("head") + "***" + m.group("tail"), url)


class FlockJournalLock:
    """The journal file's write lock as an ``fcntl.flock``: the kernel releases it when its process dies.

    Optuna's own journal locks are files created and deleted around each write; a trial process
    killed inside a write (SIGKILL, the out-of-memory killer) leaves that file behind, and every other
    process then waits for its grace period (30 s) before breaking it. A ``flock`` cannot outlive its
    process. Local file systems only (a journal is for one machine; several machines share an RDB).

    Example:
        >>> import tempfile, os
        >>> lock = FlockJournalLock(os.path.join(tempfile.mkdtemp(), "j.log"))
        >>> lock.acquire()
        True
        >>> lock.release()
    """

    def __init__(self, journal_path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(journal_path) + ".flock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        import fcntl

        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        return True

    def release(self) -> None:
        import fcntl

        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _journal_storage(path: str) -> BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    lock: Any = FlockJournalLock(path) if os.name == "posix" else None
    storage = JournalStorage(JournalFileBackend(path, lock_obj=lock))
    register_lock_file(storage, path + ".optkit.lock")  # the first start and each claim (see _budget.py)
    return storage


def default_storage_url(out_dir: str | os.PathLike[str]) -> str:
    """The embedded default: an SQLite file ``optuna.db`` in ``out_dir`` (created)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(out_dir, 'optuna.db').as_posix()}"


def resolve_storage(storage: str | os.PathLike[str] | BaseStorage | None, out_dir: str | os.PathLike[str],
                    *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                    max_retry: int | None = None) -> tuple[BaseStorage, str]:
    """Open the storage; returns ``(storage, display URL)``.

    ``None`` is the embedded default (:func:`default_storage_url`); ``"memory"`` keeps the study in
    this process only; a path ending in ``.db``/``.sqlite`` is an SQLite file; a path ending in
    ``.log``/``.jsonl`` (or ``journal:PATH``) is an Optuna journal file; anything else is an
    SQLAlchemy URL (``sqlite:///...``, ``postgresql://user@host/db``, ``mysql+pymysql://...``).

    With ``heartbeat_interval`` (seconds), an RDB storage records a heartbeat of every running
    trial; a trial whose heartbeat is older than ``grace_period`` (default: twice the interval) is
    failed by the next worker and, with ``max_retry``, retried with the same parameters (Optuna's
    ``RetryFailedTrialCallback``). Journal files and memory have no heartbeat.

    Raises:
        ConfigError: ``storage``, when it cannot be opened (the message carries the driver's reason).
    """
    if isinstance(storage, BaseStorage):
        return storage, type(storage).__name__
    url = default_storage_url(out_dir) if storage is None else os.fspath(storage)
    text = url.strip()
    if text.lower() in MEMORY_ALIASES:
        return optuna.storages.InMemoryStorage(), "memory"
    if text.startswith("journal:") or (("://" not in text) and text.endswith((".log", ".jsonl"))):
        path = text.removeprefix("journal:")
        try:
            return _journal_storage(path), f"journal:{path}"
        except OSError as exc:
            raise ConfigError("storage", text, "a journal file that can be created and locked",
                              hint=str(exc)) from None
    if "://" not in text:
        if text.endswith((".db", ".sqlite", ".sqlite3")):
            text = f"sqlite:///{text}"
        else:
            raise ConfigError("storage", redact_url(text), "a database URL (sqlite:///optuna.db, "
                              "postgresql://user@host/db, ...), a .db or .log file, or 'memory'")
    engine_kwargs = {"connect_args": {"timeout": 60}} if text.startswith("sqlite") else None
    beat: dict[str, Any] = {}
    if heartbeat_interval:
        beat = {"heartbeat_interval": int(heartbeat_interval),
                "grace_period": int(grace_period or 2 * heartbeat_interval)}
        if max_retry is not None:
            beat.update(_retry_callback(max_retry))
    try:
        rdb = _create_rdb(text, engine_kwargs, beat)
    except ImportError as exc:
        raise _missing_driver(text, exc) from None
    except Exception as exc:  # sqlalchemy's OperationalError, ArgumentError...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError("storage", redact_url(text), "a database URL that can be opened",
                          hint=redact_url(reason[:300])) from None
    return rdb, redact_url(text)


# The pip package of each SQLAlchemy driver that Optuna's RDB storage can use.
DRIVER_PACKAGES = {
    "psycopg": "'psycopg[binary]'  (or: pip install 'lightning-optkit[postgres]')",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "pymysql": "PyMySQL",
    "mysqldb": "mysqlclient",
    "mysqlconnector": "mysql-connector-python",
    "oracledb": "oracledb",
    "cx_oracle": "cx_Oracle",
    "pyodbc": "pyodbc",
}


def _driver_of(url: str) -> str | None:
    """The driver SQLAlchemy picks for ``url`` (``postgresql://`` is psycopg 3 in SQLAlchemy 2.1, psycopg2 before)."""
    from sqlalchemy.engine import make_url

    try:
        return str(make_url(url).get_dialect().driver)
    except Exception:  # an unknown dialect: the caller names the module from the ImportError
        return None


def _missing_driver(url: str, exc: ImportError) -> ConfigError:
    """The ConfigError for a URL whose database driver is not installed: it names the package to install."""
    cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc
    module = (getattr(cause, "name", None) or "").split(".")[0]
    driver = _driver_of(url) or module
    package = DRIVER_PACKAGES.get(driver.lower(), DRIVER_PACKAGES.get(module.lower(), module or driver))
    scheme = url.split("://", 1)[0]
    return ConfigError("storage", redact_url(url), f"a URL whose database driver is installed: {scheme}:// uses "
                       f"the {driver!r} driver, which cannot be imported ({cause})",
                       hint=f"pip install {package}")


def _retry_callback(max_retry: int) -> dict[str, Any]:
    """Optuna's retry of heartbeat-stale trials, under the argument name this Optuna version takes."""
    import inspect

    params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    if "heartbeat_stale_trial_callback" in params and hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
        return {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)}
    return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)}


def _create_rdb(url: str, engine_kwargs: dict[str, Any] | None, beat: dict[str, Any],
                attempts: int = 5) -> optuna.storages.RDBStorage:
    """``RDBStorage(url)``, safe when many processes open an empty database at once.

    Creating the tables (and Optuna's version rows) races: on PostgreSQL two ``CREATE TABLE``s of one
    name end in ``UniqueViolation`` on ``pg_type``. There the creation runs under an advisory lock;
    on every database a creation that still loses a race (``IntegrityError``, "already exists") is
    tried again: by then the other process has created what was missing.
    """
    import random

    from sqlalchemy import create_engine
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
    from sqlalchemy.pool import NullPool

    lock: Any = contextlib.nullcontext()
    if url.startswith("postgresql"):
        lock = postgres_lock(create_engine(url, poolclass=NullPool), "schema")
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings(), lock:
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", FutureWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **beat)
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            racing = isinstance(exc, IntegrityError) or "already exists" in str(exc).lower()
            if not racing or attempt == attempts - 1:
                raise
            lock = contextlib.nullcontext()
            time.sleep(random.uniform(0.05, 0.3))
    raise AssertionError("unreachable")


def storage_file(storage: Any) -> Path | None:
    """The file an SQLite or journal ``storage`` names (``None`` for a server URL, memory or a storage object).

    Example:
        >>> storage_file("journal:out/j.log"), storage_file("postgresql://db/optuna")
        (PosixPath('out/j.log'), None)
    """
    if not isinstance(storage, (str, os.PathLike)):
        return None
    text = os.fspath(storage).strip()
    if text.startswith("journal:"):
        return Path(text.removeprefix("journal:"))
    if text.startswith("sqlite:///"):
        path = text.removeprefix("sqlite:///").split("?", 1)[0]
        return Path(path) if path and path != ":memory:" else None
    if "://" not in text and text.endswith((".db", ".sqlite", ".sqlite3", ".log", ".jsonl")):
        return Path(text)
    return None


def make_storage_folder(storage: Any, out_root: Path) -> None:
    """Create the folder of a storage file that lies inside ``out_dir`` (``out_dir="X", storage="X/study.db"``)
    before it is opened; a folder elsewhere is left to the user (a typo there stays an error)."""
    path = storage_file(storage)
    if path is None:
        return
    folder, root = path.parent.resolve(), out_root.resolve()
    if folder == root or root in folder.parents:
        folder.mkdir(parents=True, exist_ok=True)


def worker_storage(storage: Any, out_root: Path, n_slots: int, heartbeat_interval: int, max_retries: int
                   ) -> tuple[str, dict[str, Any], int | None]:
    """The storage of a study run by worker processes: ``(url, storage kwargs, heartbeat interval or None)``.

    Each process opens it itself, so it must be a URL or a file: the default is a journal file in
    ``out_root`` with several workers (or when one exists already), else its SQLite file. An RDB
    server URL gets heartbeats and retries of trials whose process died.

    Raises:
        ConfigError: ``storage`` is a storage object or the in-memory storage.
    """
    if isinstance(storage, BaseStorage):
        raise ConfigError("storage", type(storage).__name__, "a URL or file path with workers (each trial process "
                          "opens the storage itself)")
    if storage is None:
        journal = Path(out_root, "optuna.journal.log")
        url = f"journal:{journal.as_posix()}" if n_slots > 1 or journal.exists() else None
        if url is None:
            url = f"sqlite:///{Path(out_root, 'optuna.db').as_posix()}"
        out_root.mkdir(parents=True, exist_ok=True)
    else:
        url = os.fspath(storage).strip()
        if is_memory(url):
            raise ConfigError("storage", storage, "a file or database with workers: each trial runs in its own process",
                              hint="leave storage unset for a journal file in out_dir")
    is_rdb = "://" in url and not url.startswith("sqlite")
    kwargs = {"heartbeat_interval": heartbeat_interval, "max_retry": max_retries} if is_rdb else {}
    return url, kwargs, heartbeat_interval if is_rdb else None
