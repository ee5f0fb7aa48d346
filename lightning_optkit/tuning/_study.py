"""Samplers and pruners by name, the storage URL, and creating or resuming the study.

Everything here is checked before the first trial: an unknown sampler or pruner name, a storage
that cannot be opened, a study name that is taken, a resumed study whose metric or directions
differ -- each is a :class:`~lightning_optkit.ConfigError` naming the argument, the value and what
is valid, and the study in the storage is left as it was.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.pruners import BasePruner, HyperbandPruner
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage

from ..config import ConfigError, did_you_mean
from ._budget import STARTED_AT_KEY, register_lock_file, storage_lock

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "AutoHyperbandPruner",
    "make_pruner",
    "make_sampler",
    "open_study",
    "redact_url",
    "resolve_storage",
]

SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc")
PRUNERS = ("hyperband", "median", "successive_halving", "none")
_SAMPLER_ALIASES = {"cma": "cmaes", "cma-es": "cmaes", "cma_es": "cmaes", "gaussian_process": "gp", "rand": "random"}
_PRUNER_ALIASES = {"sha": "successive_halving", "asha": "successive_halving", "nop": "none", "off": "none",
                   "false": "none", "no": "none"}


def startup_trials(n_trials: int | None) -> int:
    """Random trials before TPE models the results: a quarter of the budget, between 4 and Optuna's 10.

    Optuna's fixed 10 spends half of a 20-trial study on random search.

    Example:
        >>> [startup_trials(n) for n in (None, 8, 20, 30, 100)]
        [10, 4, 5, 7, 10]
    """
    return 10 if n_trials is None else min(10, max(4, n_trials // 4))


def make_sampler(sampler: str | BaseSampler | None = "tpe", *, seed: int | None = 0, conditional: bool = False,
                 multi_objective: bool = False, n_trials: int | None = None) -> BaseSampler:
    """A sampler by name: ``tpe`` (default, seeded), ``random``, ``cmaes``, ``gp`` or ``qmc``; or the given one.

    TPE is multivariate, and with conditional parameters it groups them (``group=True``), so a
    parameter that exists only for SGD is modelled only on SGD trials. With a trial budget
    (``n_trials``) it samples at random only for the first :func:`startup_trials` of them.

    Example:
        >>> type(make_sampler("random", seed=1)).__name__
        'RandomSampler'
    """
    if isinstance(sampler, BaseSampler):
        return sampler
    name = "tpe" if sampler is None else str(sampler).strip().lower()
    name = _SAMPLER_ALIASES.get(name, name)
    if name not in SAMPLERS:
        raise ConfigError("sampler", sampler, "one of " + ", ".join(SAMPLERS) + ", or an optuna.samplers.BaseSampler",
                          suggestions=did_you_mean(str(sampler), SAMPLERS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=conditional,
                                              n_startup_trials=startup_trials(n_trials))
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "qmc":
            return optuna.samplers.QMCSampler(seed=seed)
        if name == "cmaes":
            if multi_objective:
                raise ConfigError("sampler", sampler, "a sampler for multi-objective studies: tpe, random, gp or qmc")
            if importlib.util.find_spec("cmaes") is None:
                raise ConfigError("sampler", sampler, "an installed sampler: CMA-ES needs the `cmaes` package",
                                  hint="pip install cmaes, or use sampler='tpe'")
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        if importlib.util.find_spec("scipy") is None:
            raise ConfigError("sampler", sampler, "an installed sampler: the GP sampler needs scipy",
                              hint="pip install scipy, or use sampler='tpe'")
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)


class AutoHyperbandPruner(BasePruner):
    """Hyperband whose smallest budget is the optimizer steps between two validations.

    Optuna's :class:`~optuna.pruners.HyperbandPruner` counts its budget in reported steps, and
    :class:`~lightning_optkit.tuning.PruningCallback` reports at optimizer steps, so
    ``min_resource=1`` would mean "one optimizer step" and make a bracket per power of the
    reduction factor. With ``min_resource="auto"`` (the default) it is the first step reported in the
    study (the first validation of the first trial that reported), read from the storage, so a
    resumed study gets the same value. ``max_resource="auto"`` is Optuna's: the last step of the
    first completed trial; nothing is pruned before that trial completes.

    Args:
        min_resource: optimizer steps of the smallest budget, or ``"auto"``.
        max_resource: optimizer steps of a full trial, or ``"auto"``.
        reduction_factor: keep the best ``1 / reduction_factor`` of the trials at each rung.

    Example:
        >>> pruner = AutoHyperbandPruner(reduction_factor=3)
        >>> pruner.min_resource is None  # decided at the first report
        True
    """

    def __init__(self, min_resource: int | str = "auto", max_resource: int | str = "auto",
                 reduction_factor: int = 3, bootstrap_count: int = 0) -> None:
        if min_resource != "auto" and not (isinstance(min_resource, int) and min_resource >= 1):
            raise ConfigError("pruner.min_resource", min_resource, "a positive number of optimizer steps, or 'auto'")
        if max_resource != "auto" and not (isinstance(max_resource, int) and max_resource >= 1):
            raise ConfigError("pruner.max_resource", max_resource, "a positive number of optimizer steps, or 'auto'")
        if not (isinstance(reduction_factor, int) and reduction_factor >= 2):
            raise ConfigError("pruner.reduction_factor", reduction_factor, "an integer >= 2")
        self._max_resource = max_resource
        self._reduction_factor = reduction_factor
        self._bootstrap_count = bootstrap_count
        self.min_resource: int | None = None
        self._inner: HyperbandPruner | None = None
        if isinstance(min_resource, int):
            self._build(min_resource)

    def _build(self, min_resource: int) -> None:
        self.min_resource = min_resource
        self._inner = HyperbandPruner(min_resource=min_resource, max_resource=self._max_resource,
                                      reduction_factor=self._reduction_factor, bootstrap_count=self._bootstrap_count)

    def prune(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if self._inner is None:
            first = None
            for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
                if t.intermediate_values:
                    first = min(t.intermediate_values)
                    break
            if first is None:
                return False
            self._build(max(int(first), 1))
        assert self._inner is not None
        return self._inner.prune(study, trial)


def make_pruner(pruner: str | BasePruner | None = "hyperband", **kwargs: Any) -> BasePruner:
    """A pruner by name: ``hyperband`` (default, see :class:`AutoHyperbandPruner`), ``median``,
    ``successive_halving`` or ``none``; or the given one. ``kwargs`` go to the pruner's constructor.

    Example:
        >>> type(make_pruner("median", n_startup_trials=3)).__name__
        'MedianPruner'
    """
    if isinstance(pruner, BasePruner):
        return pruner
    name = "none" if pruner is None or pruner is False else str(pruner).strip().lower()
    name = _PRUNER_ALIASES.get(name, name)
    if name not in PRUNERS:
        raise ConfigError("pruner", pruner, "one of " + ", ".join(PRUNERS) + ", or an optuna.pruners.BasePruner",
                          suggestions=did_you_mean(str(pruner), PRUNERS))
    try:
        if name == "hyperband":
            return AutoHyperbandPruner(**kwargs)
        if name == "median":
            return optuna.pruners.MedianPruner(**kwargs)
        if name == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(**kwargs)
        if kwargs:
            raise TypeError(f"pruner 'none' takes no arguments, got {sorted(kwargs)}")
        return optuna.pruners.NopPruner()
    except TypeError as exc:
        raise ConfigError("pruner", pruner, f"valid arguments for the {name} pruner ({exc})") from None


# --------------------------------------------------------------------------------------------------
# Storage

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
    if text.lower() in ("memory", ":memory:", "inmemory", "in-memory"):
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

    from ._budget import postgres_lock

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


def _study_names(storage: BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def pick_study_name(storage: BaseStorage, base: str, resume: bool) -> str:
    """``base``, or ``base-2``, ``base-3``... : the first free name (resume: the newest existing)."""
    names = set(_study_names(storage))
    taken = [base] if base in names else []
    k = 2
    while f"{base}-{k}" in names:
        taken.append(f"{base}-{k}")
        k += 1
    if resume and taken:
        return taken[-1]
    return base if base not in names else f"{base}-{k}"


def open_study(
    storage: BaseStorage,
    display: str,
    study_name: str,
    directions: Sequence[str],
    sampler: BaseSampler,
    pruner: BasePruner,
    *,
    resume: bool,
    attrs: dict[str, Any],
    first_trials: Sequence[tuple[dict[str, Any], dict[str, Any]]] = (),
) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when ``resume``; returns ``(study, resumed)``.

    Safe when many processes open the same study at once (a job array with ``--study NAME
    --resume``): under the storage's setup lock (:func:`~lightning_optkit.tuning._budget.storage_lock`)
    exactly one of them creates the study, stores ``attrs`` and the study's start time, and enqueues
    ``first_trials`` (``(params, user_attrs)`` pairs: the base config...); the others join it.

    Raises:
        ConfigError: ``study_name`` taken without ``resume``; ``monitor`` / ``direction`` different
            from the stored study's.
    """
    with storage_lock(storage, f"setup:{study_name}"):
        exists = study_name in _study_names(storage)
        if exists and not resume:
            n = len(storage.get_all_trials(storage.get_study_id_from_name(study_name), deepcopy=False))
            raise ConfigError("study_name", study_name, f"a new study name: {study_name!r} already has {n} trials in "
                              f"{display}", hint="pass resume=True (--resume) to continue it, or choose another name")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(storage=storage, sampler=sampler, pruner=pruner, study_name=study_name,
                                        directions=list(directions), load_if_exists=exists or resume)
        if exists:
            _check_stored(study, study_name, directions, attrs)
        else:
            for key, value in attrs.items():
                study.set_user_attr(key, value)
        if STARTED_AT_KEY not in study.user_attrs:
            study.set_user_attr(STARTED_AT_KEY, time.time())
        live = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.WAITING,
                optuna.trial.TrialState.RUNNING)
        if not study.get_trials(deepcopy=False, states=live):  # new, or only failed trials so far
            for params, user_attrs in first_trials:
                study.enqueue_trial(params, user_attrs=user_attrs)
    return study, exists


def _check_stored(study: optuna.Study, study_name: str, directions: Sequence[str], attrs: dict[str, Any]) -> None:
    """A resumed study must have the same directions and metric(s); until a trial finished, ``attrs`` are renewed."""
    stored = [d.name.lower() for d in study.directions]
    if stored != [d.lower() for d in directions]:
        raise ConfigError("direction", list(directions) if len(directions) > 1 else directions[0],
                          f"the directions of the stored study {study_name!r}: {', '.join(stored)}")
    monitor = study.user_attrs.get("optkit.monitor")
    finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                        optuna.trial.TrialState.PRUNED))
    if monitor is not None and list(monitor) != list(attrs.get("optkit.monitor", monitor)) and finished:
        raise ConfigError("monitor", attrs.get("optkit.monitor"),
                          f"the metric(s) of the stored study {study_name!r}: {', '.join(monitor)}",
                          hint="values of different metrics cannot be compared; start a new study")
    if not finished:  # nothing to compare yet (e.g. the first trial failed on a misspelt metric)
        for key, value in attrs.items():
            study.set_user_attr(key, value)


def study_deadline(study: optuna.Study, study_timeout: float | None) -> float | None:
    """When the study must stop starting trials (seconds since the epoch): its start time + ``study_timeout``.

    The start time is the study's ``optkit.started_at`` attribute (set when it was created); a study
    made by an older version falls back to its first trial's start, or now.
    """
    if study_timeout is None:
        return None
    started = study.user_attrs.get(STARTED_AT_KEY)
    if started is None:
        starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start is not None]
        started = min(starts).timestamp() if starts else time.time()
    return float(started) + float(study_timeout)
