"""Every use of Optuna's private API, in one place, each behind a small named function.

Checked against Optuna 5.1.0. An Optuna upgrade that moves one of these names breaks here only;
no other module of ``lightning_optkit`` touches a private Optuna name. Why each is needed:

- ``Study._storage`` / ``Study._study_id`` / ``FrozenTrial._trial_id`` (and ``Trial._trial_id``): the
  process pool writes to a trial by id (fail a trial whose process died, store who runs it, re-read it,
  send its heartbeat), and the locks of ``_budget`` key on the study's storage; the public
  ``Study`` API only reaches the current trial of an ask/tell loop.
- ``optuna.storages._heartbeat`` (``is_heartbeat_enabled``, ``fail_stale_trials``,
  ``get_heartbeat_thread``) and ``BaseHeartbeat._get_stale_trial_ids``: heartbeats of trials run in
  other processes (``Study.optimize`` only beats for trials it runs itself).
- ``_CachedStorage._backend``: Optuna wraps an ``RDBStorage`` in a caching layer; the SQLAlchemy
  engine and the lock file registered for the backend are reached through it.
- ``Study._stop_flag`` / ``Study._thread_local.in_optimize_loop``: the in-process claim loop runs
  trials as ``Study.optimize`` does, so a sampler may stop the study (``GridSampler``, its grid
  exhausted) through ``Study.stop()``, which is only allowed inside an optimize loop.

The ``optuna.storages._heartbeat`` imports stay inside the functions, as they were at their call sites.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.storages import BaseStorage


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage ``study`` reads and writes (``Study._storage``)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The storage's id of ``study`` (``Study._study_id``)."""
    return study._study_id


def trial_id(trial: Any) -> int:
    """The storage's id of a ``Trial`` or ``FrozenTrial`` (``_trial_id``)."""
    return trial._trial_id


def backend_of(storage: BaseStorage) -> Any:
    """The storage a caching wrapper (``optuna.storages._CachedStorage``) keeps as ``_backend``, or None."""
    return getattr(storage, "_backend", None)


def backend_engine(storage: BaseStorage) -> Any:
    """The SQLAlchemy engine of the storage behind a caching wrapper (``_backend.engine``), or None."""
    return getattr(backend_of(storage), "engine", None)


def heartbeat_enabled(storage: BaseStorage) -> bool:
    """Whether ``storage`` records trial heartbeats (``optuna.storages._heartbeat.is_heartbeat_enabled``)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the study's trials whose heartbeat is stale (``optuna.storages._heartbeat.fail_stale_trials``)."""
    from optuna.storages._heartbeat import fail_stale_trials as _fail_stale

    _fail_stale(study)


def stale_ids(study: optuna.Study) -> set[int]:
    """Storage ids of the study's RUNNING trials whose heartbeat is stale (``_get_stale_trial_ids``)."""
    return set(storage_of(study)._get_stale_trial_ids(study_id(study)))  # type: ignore[attr-defined]


def beat_once(study: optuna.Study, trial: Any) -> None:
    """Record one heartbeat of ``trial`` now (the storage's ``record_heartbeat``, by private trial id)."""
    storage_of(study).record_heartbeat(trial_id(trial))  # type: ignore[attr-defined]


def heartbeat_thread(study: optuna.Study, trial: Any) -> contextlib.AbstractContextManager[Any]:
    """A context that beats for ``trial`` while it runs (``optuna.storages._heartbeat.get_heartbeat_thread``)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial_id(trial), storage_of(study))


def set_trial_user_attr(study: optuna.Study, trial: Any, key: str, value: Any) -> None:
    """Store a user attribute of any trial of ``study`` by its storage id (not only the current one)."""
    storage_of(study).set_trial_user_attr(trial_id(trial), key, value)


def set_trial_failed(study: optuna.Study, trial: Any) -> bool:
    """Mark any trial of ``study`` FAIL by its storage id; False when its state did not change."""
    return storage_of(study).set_trial_state_values(trial_id(trial), state=optuna.trial.TrialState.FAIL)


def reload_trial(study: optuna.Study, trial: Any) -> optuna.trial.FrozenTrial:
    """``trial`` as the storage holds it now, read by its storage id."""
    return storage_of(study).get_trial(trial_id(trial))


@contextlib.contextmanager
def optimize_loop(study: optuna.Study) -> Iterator[None]:
    """Run the body as ``Study.optimize`` runs its loop: clear the stop flag, allow ``Study.stop()`` inside."""
    study._stop_flag = False
    study._thread_local.in_optimize_loop = True
    try:
        yield
    finally:
        study._thread_local.in_optimize_loop = False


def stop_requested(study: optuna.Study) -> bool:
    """Whether ``Study.stop()`` was called (by a sampler, e.g. ``GridSampler`` with its grid exhausted)."""
    return study._stop_flag
