"""Creating or resuming the study: its name, its stored settings, its start time and deadline, its seed.

Everything here is checked before the first trial: a study name that is taken, a resumed study
whose metric, directions or seed differ -- each is a :class:`~lightning_optkit.ConfigError` naming
the argument, the value and what is valid, and the study in the storage is left as it was.
Samplers and pruners by name are in ``_samplers.py``, the storage in ``_storage.py``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage

from ..config import ConfigError
from ._budget import STARTED_AT_KEY, storage_lock

__all__ = ["open_study", "pick_study_name", "study_deadline", "study_seed"]


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


def study_seed(study: optuna.Study, seed: int, *, given: bool) -> int:
    """The seed of a resumed study's trials and re-evaluation runs: the one it was created with.

    A ``seed`` passed explicitly that differs is a ConfigError (mixing seeds would compare re-evaluation
    runs of different seeds); a default one (0, or the YAML's ``seed_everything``) gives way to the study's.
    """
    stored = (study.user_attrs.get("optkit.plan") or {}).get("seed")
    if stored is None or int(stored) == seed:
        return seed
    if given:
        raise ConfigError("seed", seed, f"the seed of study {study.study_name!r}: {stored} (a resumed study keeps "
                          "the seed it was created with)", hint=f"omit --seed (seed=), or pass the study's: "
                          f"--seed {stored}")
    return int(stored)
