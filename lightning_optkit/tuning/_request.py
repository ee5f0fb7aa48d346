"""A tuning request: every argument of :func:`~lightning_optkit.tuning.tune`, checked and resolved once.

:func:`resolve_request` is the one place where ``tune()``'s arguments are checked: the model
source, the metric(s) and directions, the search space against the base config and the model's
signatures, the trainer arguments, the seed, the budget, the sampler and pruner, the process pool
(``workers=``). Each mistake is a :class:`~lightning_optkit.ConfigError` naming the argument, raised
before any training. What comes out is a frozen :class:`TuneRequest`: a recipe turns it into
another request (``_staged.py``), a run mode runs it (``_modes.py``).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from ..config import ConfigError, load_config
from ._dist import DistributedContext
from ._pool._slots import DeviceSlot, plan_slots
from ._presets import PRESETS
from ._reeval import DEFAULT_REEVAL, DEFAULT_REEVAL_SEEDS, check_reeval
from ._runner import TrialPlan, quiet_lightning
from ._samplers import make_pruner, make_sampler
from ._sources import ExampleSource, ModelSource, as_source, source_from_description
from ._space import SearchSpace, load_search
from ._space_check import _construct_optimizers
from ._storage import is_memory, worker_storage
from ._targets import validate_targets

__all__ = ["DEFAULT_TRIALS", "EXAMPLE_DEFAULTS", "PoolSettings", "TuneRequest", "infer_direction", "resolve_request"]

# What `--example NAME` tunes by default: metric, direction, trials (the main job: >= 20 trials on 2 CPU cores in
# well under 5 minutes; see benchmarks/tune_demo_time.py).
EXAMPLE_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"monitor": "val_acc", "direction": "maximize", "n_trials": 30, "threads": 1},
}
DEFAULT_TRIALS = 20

_MAXIMIZE = ("acc", "auc", "f1", "precision", "recall", "iou", "map", "score", "r2", "bleu", "rouge", "psnr",
             "ssim", "reward", "top1", "top5")
_MINIMIZE = ("loss", "err", "mse", "mae", "rmse", "perplexity", "ppl", "nll", "wer", "cer", "fid", "bpd")


def infer_direction(metric: str) -> str:
    """``minimize`` for losses and errors, ``maximize`` for accuracies and scores; ConfigError when unclear.

    Example:
        >>> infer_direction("val_loss"), infer_direction("val_acc")
        ('minimize', 'maximize')
    """
    name = metric.lower()
    if any(k in name for k in _MINIMIZE):
        return "minimize"
    if any(k in name for k in _MAXIMIZE):
        return "maximize"
    raise ConfigError("direction", None, f"'minimize' or 'maximize': the name {metric!r} does not say which")


@dataclass(frozen=True)
class PoolSettings:
    """How ``workers=`` runs the trials: the device slots and the storage every trial process opens."""

    slots: tuple[DeviceSlot, ...]
    url: str
    storage_kwargs: dict[str, Any]
    heartbeat_interval: int | None  # only for an RDB server (heartbeats of trials in other processes)
    gpu: bool


@dataclass(frozen=True)
class TuneRequest:
    """``tune()``'s arguments, checked and resolved (see :func:`tune` for what each means).

    Built by :func:`resolve_request`; a recipe returns a changed copy (:meth:`with_space`); a run
    mode reads it. ``first_configs`` are ``enqueue=`` as complete optim blocks; ``study_attrs`` are
    set on the study when the run ends (a recipe's record); ``pool`` is ``None`` without workers.

    Example:
        >>> request = resolve_request(example="digits", n_trials=3)
        >>> request.monitors, request.directions, request.n_trials, request.pool
        (('val_acc',), ('maximize',), 3, None)
    """

    source: ModelSource
    space: SearchSpace
    base: dict[str, Any]
    first_configs: tuple[dict[str, Any], ...]
    enqueue_base: bool
    monitors: tuple[str, ...]
    directions: tuple[str, ...]
    trainer_kwargs: dict[str, Any]
    seed: int
    seed_given: bool
    n_trials: int | None
    timeout: float | None
    study_timeout: float | None
    sampler_spec: str | BaseSampler
    sampler: BaseSampler
    pruner: BasePruner
    storage: Any
    study_name: str | None
    resume: bool
    out_dir: Path
    dist: DistributedContext
    pool: PoolSettings | None
    tensorboard: bool = True
    plots: bool = True
    summary: bool = True
    progress: bool | None = None
    threads: int | None = None
    catch: tuple[type[Exception], ...] = ()
    verbose: bool = False
    max_retries: int = 2
    grace_period: int | None = None
    recipe: str | None = None
    reeval: int = DEFAULT_REEVAL
    reeval_seeds: int = DEFAULT_REEVAL_SEEDS
    study_attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def reeval_k(self) -> int:
        """Configs to re-evaluate: ``reeval``, or 0 for a multi-objective study."""
        return self.reeval if len(self.monitors) == 1 else 0

    def plan(self) -> TrialPlan:
        """A fresh :class:`TrialPlan` of the request (its ``seed`` and ``out_dir`` are set once the study is open)."""
        return TrialPlan(source=self.source, space=self.space, base=self.base, monitors=self.monitors,
                         directions=self.directions, trainer_kwargs=self.trainer_kwargs, seed=self.seed,
                         out_dir=self.out_dir, tensorboard=self.tensorboard, threads=self.threads)

    def first_trials(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The ``(params, user_attrs)`` a new study enqueues first: the base config, then ``enqueue=``'s configs."""
        out = [(self.space.base_params(self.base)[0], {"optkit.enqueued": "base config"})] if self.enqueue_base else []
        out += [(self.space.base_params(extra)[0], {"optkit.enqueued": f"enqueue[{i}]"})
                for i, extra in enumerate(self.first_configs)]
        return out

    def with_space(self, space: SearchSpace, first_configs: Sequence[Mapping[str, Any]], *, enqueue_base: bool,
                   **changes: Any) -> TuneRequest:
        """This request with another search space and first trials, checked as :func:`resolve_request` checks them."""
        space.validate(load_config(self.base))
        configs = tuple(_enqueued_configs(self.base, list(first_configs)))
        space = validate_targets(space, self.source, self.trainer_kwargs)
        sampler = make_sampler(self.sampler_spec, seed=self.seed, conditional=space.has_conditions,
                               multi_objective=len(self.monitors) > 1, n_trials=self.n_trials)
        return dataclasses.replace(self, space=space, first_configs=configs, enqueue_base=enqueue_base,
                                   sampler=sampler, **changes)


def resolve_request(
    model: Any = None, search: Any = None, *, config: Any = None, overrides: Mapping[str, Any] | None = None,
    example: str | None = None, model_args: Mapping[str, Any] | None = None,
    data_args: Mapping[str, Any] | None = None, monitor: str | Sequence[str] | None = None,
    direction: str | Sequence[str] | None = None, n_trials: int | None = None, timeout: float | None = None,
    study_timeout: float | None = None, sampler: str | BaseSampler = "tpe", pruner: str | BasePruner | None = "hyperband",
    storage: Any = None, study_name: str | None = None, resume: bool = False, enqueue_base: bool = True,
    enqueue: Sequence[Mapping[str, Any]] = (), trainer_kwargs: Mapping[str, Any] | None = None,
    seed: int | None = None, out_dir: str | os.PathLike[str] = "optkit_tune", workers: int | None = None,
    devices: Any = None, devices_per_trial: int = 1, max_retries: int = 2, heartbeat_interval: int = 30,
    reeval: int = DEFAULT_REEVAL, reeval_seeds: int = DEFAULT_REEVAL_SEEDS, **outputs: Any,
) -> TuneRequest:
    """Check and resolve :func:`~lightning_optkit.tuning.tune`'s arguments (the same names) into a request.

    ``outputs`` are the arguments taken as they are: ``tensorboard``, ``plots``, ``summary``,
    ``progress``, ``catch``, ``verbose``, ``grace_period``, ``recipe``, and ``threads`` (checked).

    Raises:
        ConfigError: the first bad argument, naming it, the value and what is valid.
    """
    check_reeval(reeval, reeval_seeds)
    catch = _check_catch(outputs.pop("catch", ()))
    source = as_source(model, example=example, model_args=model_args, data_args=data_args)
    defaults = EXAMPLE_DEFAULTS.get(source.name, {}) if isinstance(source, ExampleSource) else {}
    monitors, directions = _monitors_and_directions(
        monitor if monitor is not None else defaults.get("monitor", "val_loss"),
        direction if direction is not None or monitor is not None else defaults.get("direction"),
    )
    space, base, first_configs = _space_and_base(source, search, config, overrides, enqueue)
    tk = {**source.trainer_defaults(), **dict(trainer_kwargs or {})}
    _check_trainer_kwargs(tk)
    space = validate_targets(space, source, tk)  # model./data./trainer. keys against the signatures (_targets.py)
    seed_value = seed if seed is not None else (source.seed() if source.seed() is not None else 0)
    if not isinstance(seed_value, int) or isinstance(seed_value, bool):
        raise ConfigError("seed", seed_value, "an integer")
    n_trials, threads = _budget(n_trials, timeout, study_timeout, outputs.pop("threads", None), defaults)
    sampler_obj = make_sampler(sampler, seed=seed_value, conditional=space.has_conditions,
                               multi_objective=len(monitors) > 1, n_trials=n_trials)
    pruner_obj = make_pruner(pruner)
    with quiet_lightning(bool(outputs.get("verbose", False))):
        dist = DistributedContext.from_trainer_kwargs(tk)
    if dist.enabled and is_memory(storage):
        raise ConfigError("storage", storage, "a file or database under DDP, so that every rank can read the study")
    request = TuneRequest(
        source=source, space=space, base=base, first_configs=tuple(first_configs), enqueue_base=enqueue_base,
        monitors=monitors, directions=directions, trainer_kwargs=tk, seed=seed_value, seed_given=seed is not None,
        n_trials=n_trials, timeout=timeout, study_timeout=study_timeout, sampler_spec=sampler, sampler=sampler_obj,
        pruner=pruner_obj, storage=storage, study_name=study_name, resume=resume, out_dir=Path(out_dir), dist=dist,
        pool=None, threads=threads, catch=catch, max_retries=max_retries, reeval=reeval,
        reeval_seeds=reeval_seeds, **outputs,
    )
    if workers is None and devices is None:
        return request
    pool = _pool_settings(request, workers=workers, devices=devices, devices_per_trial=devices_per_trial,
                          heartbeat_interval=heartbeat_interval)
    return dataclasses.replace(request, pool=pool, dist=DistributedContext())  # trial processes run DDP themselves


def _monitors_and_directions(monitor: str | Sequence[str], direction: str | Sequence[str] | None
                             ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    monitors = (monitor,) if isinstance(monitor, str) else tuple(monitor)
    if not monitors or not all(isinstance(m, str) and m for m in monitors):
        raise ConfigError("monitor", monitor, "a metric name such as 'val_loss', or a list of them")
    if direction is None:
        directions = tuple(infer_direction(m) for m in monitors)
    else:
        directions = (direction,) if isinstance(direction, str) else tuple(direction)
    if len(directions) != len(monitors):
        raise ConfigError("direction", list(directions), f"{len(monitors)} direction(s), one per monitored metric")
    out = []
    for d in directions:
        d_norm = str(d).strip().lower()
        d_norm = {"min": "minimize", "max": "maximize"}.get(d_norm, d_norm)
        if d_norm not in ("minimize", "maximize"):
            raise ConfigError("direction", d, "'minimize' or 'maximize'")
        out.append(d_norm)
    return monitors, tuple(out)


def _space_and_base(source: ModelSource, search: Any, config: Any, overrides: Mapping[str, Any] | None,
                    enqueue: Any) -> tuple[SearchSpace, dict[str, Any], list[dict[str, Any]]]:
    """The search space, the base config (checked against each other) and ``enqueue=`` as complete blocks."""
    if search is None:
        if isinstance(source, ExampleSource) and source.name in PRESETS:
            search = source.name
        else:
            raise ConfigError("search", None, "a search space: a dict {key path: spec}, a YAML file with `search:`, "
                              "or a preset: " + ", ".join(sorted(PRESETS)))
    space, search_base = load_search(search)
    if config is None:
        config = source.base_config() or search_base
    if config is None:
        raise ConfigError("config", None, "the base optim block to tune (a YAML path, a dict or an OptimConfig)")
    base_cfg = load_config(config, overrides)
    base = base_cfg.to_dict()
    space.validate(base_cfg)
    return space, base, _enqueued_configs(base, enqueue)


def _check_trainer_kwargs(kwargs: Mapping[str, Any]) -> None:
    if "logger" in kwargs:
        raise ConfigError("trainer_kwargs.logger", kwargs["logger"], "no logger: each trial logs to TensorBoard "
                          "under the study's folder", hint="pass tensorboard=False to turn the logging off")
    if all(kwargs.get(k) in (None, -1) for k in ("max_epochs", "max_steps", "max_time")):
        raise ConfigError("trainer_kwargs.max_epochs", None, "a length for each trial: max_epochs or max_steps",
                          hint="trainer_kwargs={'max_epochs': 10}; Lightning's default (1000 epochs) is rarely meant")
    callbacks = kwargs.get("callbacks")
    if callbacks is not None and not isinstance(callbacks, (list, tuple)):
        raise ConfigError("trainer_kwargs.callbacks", callbacks, "a list of callbacks (copied for each trial)")


def _budget(n_trials: Any, timeout: Any, study_timeout: Any, threads: Any, defaults: Mapping[str, Any]
            ) -> tuple[int | None, int | None]:
    """``(n_trials, threads)`` with their defaults, and the timeouts, checked."""
    if n_trials is None and timeout is None:
        n_trials = int(defaults.get("n_trials", DEFAULT_TRIALS))
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
        raise ConfigError("n_trials", n_trials, "a positive integer")
    for key, value in (("timeout", timeout), ("study_timeout", study_timeout)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ConfigError(key, value, "a positive number of seconds")
    if threads is None:
        threads = defaults.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError("threads", threads, "a positive integer (torch.set_num_threads), or None")
    return n_trials, threads


def _enqueued_configs(base: dict[str, Any], enqueue: Any) -> list[dict[str, Any]]:
    """``enqueue=`` as complete optim blocks: each item is one (``optimizer:`` at the top) or overrides of ``base``."""
    if isinstance(enqueue, (Mapping, str, bytes)) or not isinstance(enqueue, Sequence):
        raise ConfigError("enqueue", enqueue, "a list of configs: optim blocks or {dotted key: value} overrides")
    out = []
    for i, item in enumerate(enqueue):
        if not isinstance(item, Mapping):
            raise ConfigError(f"enqueue.{i}", item, "an optim block or a mapping of dotted overrides")
        try:
            cfg = load_config(base, dict(item)) if any("." in str(k) for k in item) else load_config(dict(item))
            _construct_optimizers(cfg)  # what only the optimizer's constructor checks (betas in [0, 1)...)
            out.append(cfg.to_dict())
        except ConfigError as err:
            raise ConfigError(f"enqueue.{i}.{err.path}", err.value, err.expected, suggestions=err.suggestions,
                              hint=err.hint) from None
    return out


def _pool_settings(request: TuneRequest, *, workers: int | None, devices: Any, devices_per_trial: int,
                   heartbeat_interval: int) -> PoolSettings:
    """Check the process pool's arguments before anything starts; choose its storage (see :func:`tune`)."""
    max_retries = request.max_retries
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ConfigError("max_retries", max_retries, "a number of retries >= 0")
    if isinstance(heartbeat_interval, bool) or not isinstance(heartbeat_interval, int) or heartbeat_interval < 1:
        raise ConfigError("heartbeat_interval", heartbeat_interval, "a positive number of seconds")
    slots = plan_slots(workers, "auto" if devices is None else devices, devices_per_trial, threads=request.threads)
    per_trial = request.trainer_kwargs.get("devices")
    if isinstance(per_trial, int) and not isinstance(per_trial, bool) and per_trial > 1 \
            and per_trial != devices_per_trial:  # (a source's default devices=1 just gives way to the slot)
        raise ConfigError("trainer_kwargs.devices", per_trial,
                          f"unset or {devices_per_trial} with workers: devices_per_trial={devices_per_trial} sets "
                          "the devices of each trial", hint=f"use devices_per_trial={per_trial} "
                          "(--devices-per-trial) and let devices= (--devices) list what the workers share")
    source_from_description(request.plan().describe()["source"])  # a factory in __main__ cannot be rebuilt in a worker
    if request.trainer_kwargs.get("callbacks"):
        raise ConfigError("trainer_kwargs.callbacks", request.trainer_kwargs["callbacks"],
                          "no callback objects with workers: each trial runs in a new process that rebuilds it",
                          hint="put the callbacks in a LightningCLI YAML (trainer.callbacks), or build them in "
                               "your LightningModule's configure_callbacks()")
    try:
        pickle.dumps((request.sampler, request.pruner))
    except Exception as exc:
        raise ConfigError("sampler", request.sampler, f"a sampler and pruner that can be pickled for the workers "
                          f"({exc})") from None
    url, kwargs, beat = worker_storage(request.storage, request.out_dir, len(slots), heartbeat_interval, max_retries)
    return PoolSettings(slots=tuple(slots), url=url, storage_kwargs=kwargs, heartbeat_interval=beat,
                        gpu=any(s.devices for s in slots))


def _check_catch(catch: Any) -> tuple[type[Exception], ...]:
    """``catch=``: exception classes a trial may raise without stopping the study (``Exception`` subclasses:
    Ctrl-C and ``SystemExit`` always stop it).

    Example:
        >>> _check_catch([ValueError])
        (<class 'ValueError'>,)
    """
    items = (catch,) if isinstance(catch, type) else tuple(catch)
    for item in items:
        if not (isinstance(item, type) and issubclass(item, Exception)):
            raise ConfigError("catch", item, "Exception subclasses (KeyboardInterrupt and SystemExit always stop the "
                                             "study)")
    return items
