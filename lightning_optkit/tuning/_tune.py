"""tune(): an Optuna study over the optim block, from a factory, a LightningCLI YAML or a built-in example."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from ..config import ConfigError, OptimConfig, load_config
from ._budget import Budget, claim_trial, process_record
from ._dist import DistributedContext, Stop
from ._optuna_private import optimize_loop, stop_requested
from ._presets import PRESETS
from ._reeval import DEFAULT_REEVAL, DEFAULT_REEVAL_SEEDS, check_reeval, in_process, reeval_report, reevaluate
from ._reports import ProgressReporter, format_summary, write_best_config, write_plots, write_trials_csv
from ._runner import TrialPlan, TrialRunner, quiet_lightning
from ._sources import ExampleSource, as_source
from ._space import SearchSpace, load_search
from ._study import make_pruner, make_sampler, open_study, pick_study_name, resolve_storage, study_deadline
from ._targets import validate_targets

__all__ = ["EXAMPLE_DEFAULTS", "infer_direction", "tune"]

# What `--example NAME` tunes by default: metric, direction, trials (the main job: ≥ 20 trials on 2 CPU cores in
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


def tune(
    model: Any = None,
    search: SearchSpace | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    config: OptimConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    example: str | None = None,
    model_args: Mapping[str, Any] | None = None,
    data_args: Mapping[str, Any] | None = None,
    monitor: str | Sequence[str] | None = None,
    direction: str | Sequence[str] | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    study_timeout: float | None = None,
    sampler: str | BaseSampler = "tpe",
    pruner: str | BasePruner | None = "hyperband",
    storage: str | os.PathLike[str] | BaseStorage | None = None,
    study_name: str | None = None,
    resume: bool = False,
    enqueue_base: bool = True,
    enqueue: Sequence[Mapping[str, Any]] = (),
    trainer_kwargs: Mapping[str, Any] | None = None,
    seed: int | None = None,
    out_dir: str | os.PathLike[str] = "optkit_tune",
    tensorboard: bool = True,
    plots: bool = True,
    summary: bool = True,
    progress: bool | None = None,
    threads: int | None = None,
    catch: Sequence[type[Exception]] = (),
    verbose: bool = False,
    workers: int | None = None,
    devices: str | Sequence[int | str] | None = None,
    devices_per_trial: int = 1,
    max_retries: int = 2,
    heartbeat_interval: int = 30,
    grace_period: int | None = None,
    recipe: str | None = None,
    reeval: int = DEFAULT_REEVAL,
    reeval_seeds: int = DEFAULT_REEVAL_SEEDS,
) -> optuna.Study:
    """Tune the ``optim:`` block with Optuna; returns the study.

    Every trial samples the search space, applies it to the base config, builds the model and data
    with that config, trains with ``trainer_kwargs`` and the seed, reports every validation at its
    optimizer step (:class:`~lightning_optkit.tuning.PruningCallback`) and returns the monitored
    metric of the last validation. Arguments are checked before any training; the base config is
    the first trial (unless ``enqueue_base=False``). At the end it writes, under
    ``out_dir/<study name>/``: ``best_config.yaml`` (the best trial's complete optim block, with the
    command that trains it again), ``trials.csv``, ``plots/*.png`` and ``tensorboard/trial_NNNN/``
    (hparams of every trial), and prints a summary table.

    Args:
        model: where model and data come from: a factory ``build(optim: dict) -> (LightningModule,
            LightningDataModule)`` (or its ``"pkg.mod:build"`` path), or a LightningCLI YAML (path or
            dict) with ``model``/``data`` as ``class_path``/``init_args`` -- then the base config is
            ``model.init_args.optim`` and ``trainer:`` gives the trainer arguments.
        search: the search space: a dict ``{dotted key path: spec}``, a YAML file with ``search:``,
            a preset name (``digits``, ``adamw``, ``optimizers``, ``schedules``, ``finetune``) or a
            :class:`SearchSpace`. Default with ``example=``: the example's preset.
        config: the base optim block (default: from the LightningCLI YAML, the example, or the
            ``optim:`` beside ``search:`` in the preset/file).
        overrides: dotted keys set on the base config (``{"optimizer.lr": 1e-3}``).
        example: a built-in example (``"digits"``) instead of ``model``.
        model_args / data_args: more constructor arguments of the example's model / datamodule.
        monitor: the metric logged in validation (default ``val_loss``; the example's own, e.g.
            ``val_acc``), or a list for a multi-objective study (no pruning then).
        direction: ``minimize``/``maximize`` (default: from the metric's name), or one per metric.
        n_trials: finished (complete or pruned) trials the study should have, counted over every
            process and machine that shares it; a resumed study runs only the missing ones. With
            or without ``workers`` each trial claims its place under a lock shared by every process
            (``_budget.claim_trial``), so the study never holds more. Default 20 (the example's own
            default, e.g. 30), unless a timeout.
        timeout: this process stops starting trials, and re-evaluation runs, after this many seconds.
        study_timeout: the study stops starting trials (and re-evaluation runs) this many seconds after
            it was created, on every process and machine that shares it (``--study-timeout``).
        sampler: ``tpe`` (seeded, multivariate), ``random``, ``cmaes``, ``gp``, ``qmc``, or a sampler.
        pruner: ``hyperband`` (its smallest budget is one validation interval), ``median``,
            ``successive_halving``, ``none``, or a pruner.
        storage: an SQLAlchemy URL, a ``.db`` file, a journal ``.log`` file, ``"memory"`` or a
            storage. Default: the SQLite file ``out_dir/optuna.db`` (``optuna-dashboard`` opens it).
        study_name: default: the model's name, with ``-2``, ``-3``... when taken.
        resume: continue the study ``study_name`` (default: the newest of the model's name).
        enqueue_base: run the base config as the first trial of a new study.
        enqueue: more configs to run first (after the base), each a complete optim block or
            dotted overrides of the base (``{"optimizer.lr": 3e-3}``); their values must lie in
            the search space (keys outside it, or values out of range, are sampled instead).
        trainer_kwargs: ``L.Trainer`` arguments of every trial (``max_epochs`` or ``max_steps`` is
            needed; ``strategy="ddp"`` with several devices runs each trial on all of them).
            Callbacks are copied for each trial.
        seed: ``L.seed_everything`` before each trial, and the sampler's seed (default 0, or the
            LightningCLI YAML's ``seed_everything``). A resumed study keeps the seed it was created
            with: another explicit ``seed`` is a ConfigError.
        out_dir: the folder for the storage and the outputs.
        tensorboard / plots / summary / progress: turn the outputs off (``progress=None``: on).
        threads: ``torch.set_num_threads`` during the study (``None``: unchanged).
        catch: exception types that fail a trial without stopping the study.
        verbose: keep Lightning's and Optuna's per-trial log lines.
        workers: run each trial in a fresh process, ``workers`` at once (``None``: every trial in this
            process, as before). Several workers share the study through its storage: the default
            becomes a journal file ``out_dir/optuna.journal.log``; give a PostgreSQL/MySQL URL to
            share one study between machines (each runs the same command). See docs/tuning_scale.md.
        devices: GPUs the workers share: ``"auto"`` (``torch.cuda.device_count()``), a list of ids
            (``[0, 1]`` or ``"0,1"``) or ``"cpu"``. Each trial process sees only its slot
            (``CUDA_VISIBLE_DEVICES``); without GPUs each gets ``cpu_count // workers`` threads.
            Default with ``workers``: ``"auto"``.
        devices_per_trial: devices per trial, DDP inside the trial when > 1: GPUs, or on a CPU-only
            machine (``devices="cpu"``) CPU processes (gloo), the threads split among them.
        max_retries: a trial whose process died is marked FAIL and retried with the same parameters
            this many times.
        heartbeat_interval / grace_period: seconds, for an RDB storage with ``workers``: a trial whose
            machine stops beating for ``grace_period`` (default 2 x interval) is failed and retried.
        recipe: ``"staged"``: for each candidate optimizer (the choices of ``optimizer.name``), an
            LR range test narrows its learning rate to the recommendation / 4 .. x 4; then TPE and
            Hyperband tune everything in one study where each optimizer samples its own narrowed
            range (``optimizer.lr@<optimizer>``), starting with each optimizer at its recommended
            LR. See ``_staged.py``.
        reeval / reeval_seeds: after the search, train the top ``reeval`` configs again with
            ``reeval_seeds`` new seeds each (derived from ``seed``, never equal to it; with ``workers``
            in the worker processes) and choose the best config by the mean over all its runs (the
            search run included); ``best_config.yaml`` and the summary give that mean ± sd beside the
            search-time value, and the steps re-evaluation took. The runs are kept in the study user
            attribute ``optkit.reeval`` (no trials: the sampler never sees them); a rerun does not
            redo them. ``0`` turns it off. Single-objective studies only. See ``_reeval.py``.

    Raises:
        ConfigError: for every bad argument (search space, sampler, pruner, storage, study name,
            metric...), naming it, the value and what is valid; a metric that is never logged
            fails at the first validation of the first trial. The study stays in the storage and
            can be resumed.

    Example:
        >>> from lightning_optkit.demo import make_example
        >>> study = tune(lambda optim: make_example("digits", optim),
        ...              {"optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True}},
        ...              config="configs/digits.yaml", monitor="val_acc", n_trials=4,
        ...              trainer_kwargs={"max_epochs": 2})          # doctest: +SKIP
        >>> study.best_params                                        # doctest: +SKIP
        {'optimizer.lr': 0.0124...}
    """
    check_reeval(reeval, reeval_seeds)
    if recipe is not None:
        args = dict(locals())
        from ._staged import RECIPES, tune_staged

        if recipe not in RECIPES:
            raise ConfigError("recipe", recipe, "one of " + ", ".join(RECIPES) + ", or None")
        return tune_staged(args)
    started = time.perf_counter()
    source = as_source(model, example=example, model_args=model_args, data_args=data_args)
    defaults = EXAMPLE_DEFAULTS.get(source.name, {}) if isinstance(source, ExampleSource) else {}

    # -- the metric, the space and the base config ------------------------------------------------------
    monitors, directions = _monitors_and_directions(
        monitor if monitor is not None else defaults.get("monitor", "val_loss"),
        direction if direction is not None or monitor is not None else defaults.get("direction"),
    )
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
    first_configs = _enqueued_configs(base, enqueue)

    # -- the trials' trainer, seed and run length -------------------------------------------------------
    tk = {**source.trainer_defaults(), **dict(trainer_kwargs or {})}
    _check_trainer_kwargs(tk)
    space = validate_targets(space, source, tk)  # model./data./trainer. keys against the signatures (_targets.py)
    seed_given = seed is not None
    seed = seed if seed is not None else (source.seed() if source.seed() is not None else 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError("seed", seed, "an integer")
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
    sampler_obj = make_sampler(sampler, seed=seed, conditional=space.has_conditions, multi_objective=len(monitors) > 1,
                               n_trials=n_trials)
    pruner_obj = make_pruner(pruner)
    out_root = Path(out_dir)
    with quiet_lightning(verbose):
        dist = DistributedContext.from_trainer_kwargs(tk)
    if dist.enabled and isinstance(storage, str) and storage.strip().lower() in ("memory", ":memory:"):
        raise ConfigError("storage", storage, "a file or database under DDP, so that every rank can read the study")

    plan = TrialPlan(source=source, space=space, base=base, monitors=monitors, directions=directions,
                     trainer_kwargs=tk, seed=seed, out_dir=out_root, tensorboard=tensorboard, threads=threads)

    # -- ranks other than 0 follow rank 0's trials ------------------------------------------------------------
    if dist.expected_rank() != 0:
        with quiet_lightning(verbose):
            dist.start()
        saved_threads = _set_threads(threads)
        try:
            with quiet_lightning(verbose):
                stop = TrialRunner(plan, dist).follow()
        finally:
            if saved_threads is not None:
                _set_threads(saved_threads)
        if stop.study_name is None:
            raise RuntimeError(f"optkit tune: rank 0 stopped before the study started ({stop.error})")
        store, _ = resolve_storage(storage, out_root)
        return optuna.load_study(study_name=stop.study_name, storage=store)

    # -- rank 0: the storage and the study, before any other process starts ------------------------------
    launch = None
    if workers is not None or devices is not None:
        launch = _launch_settings(plan, storage, out_root, workers=workers, devices=devices,
                                  devices_per_trial=devices_per_trial, threads=threads, max_retries=max_retries,
                                  heartbeat_interval=heartbeat_interval, sampler=sampler_obj, pruner=pruner_obj)
        storage = launch["url"]
        dist = DistributedContext()  # the trial processes run DDP themselves, if asked
    try:
        _make_storage_folder(storage, out_root)
        store, display = resolve_storage(storage, out_root, **(launch or {}).get("storage_kwargs", {}))
        name = study_name or pick_study_name(store, source.name, resume)
        attrs = {"optkit.monitor": list(monitors), "optkit.plan": plan.describe()}
        with quiet_lightning(verbose):
            study, resumed = open_study(store, display, name, directions, sampler_obj, pruner_obj, resume=resume,
                                        attrs=attrs, first_trials=_first_trials(space, base, first_configs,
                                                                                 enqueue_base))
        plan.seed = _study_seed(study, plan.seed, given=seed_given)
    except BaseException as exc:
        if dist.enabled and "LOCAL_RANK" in os.environ:  # torchrun started the other ranks already: release them
            dist.start()
            dist.broadcast(Stop(error=f"{type(exc).__name__}: {exc}"))
        raise
    plan.out_dir = out_root / name
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    if resumed and study.user_attrs.get("optkit.plan", {}).get("search") not in (None, space.to_dict()):
        warnings.warn(f"the search space differs from the one study {name!r} started with; the sampler treats "
                      "changed parameters as new ones", UserWarning, stacklevel=2)
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    remaining = None if n_trials is None else max(n_trials - finished, 0)
    deadline = study_deadline(study, study_timeout)

    if launch is not None:
        return _run_launcher(study, plan, launch, display, name, remaining, finished, started, n_trials=n_trials,
                             timeout=timeout, monitors=monitors, directions=directions, progress=progress,
                             plots=plots, summary=summary, tensorboard=tensorboard, catch=catch, verbose=verbose,
                             max_retries=max_retries, grace_period=grace_period, deadline=deadline,
                             reeval=(reeval, reeval_seeds))
    with quiet_lightning(verbose):
        dist.start()
    saved_threads = _set_threads(threads)
    reporter = ProgressReporter(monitors, directions, total=remaining, timeout=timeout,
                                enabled=progress if progress is not None else True)
    runner = TrialRunner(plan, dist)
    error: BaseException | None = None
    stop_at = _stop_at(timeout, deadline)
    try:
        if remaining == 0:
            print(f"optkit tune: study {name!r} already has {finished} finished trials (n_trials={n_trials})", flush=True)
        elif Budget(None, deadline).expired():
            print(f"optkit tune: study {name!r} is past its study_timeout: no trial started", flush=True)
        else:
            with quiet_lightning(verbose):
                _run_claimed(study, runner, Budget(n_trials, stop_at), tuple(catch), reporter)
        reporter.close()
        with quiet_lightning(verbose):
            reevaluate(study, monitors[0], plan.seed, reeval if len(monitors) == 1 else 0, reeval_seeds,
                       in_process(runner), progress=progress is not False, deadline=stop_at)
    except BaseException as exc:
        error = exc
        raise
    finally:
        reporter.close()
        dist.broadcast(Stop(error=None if error is None else f"{type(error).__name__}: {error}", study_name=name))
        if saved_threads is not None:
            _set_threads(saved_threads)
        _finish(study, plan, display, time.perf_counter() - started, plots=plots, summary=summary,
                failed=error is not None, ran=reporter.done - reporter.failed, n_trials=n_trials,
                reeval=(reeval, reeval_seeds))
    return study


def _study_seed(study: optuna.Study, seed: int, *, given: bool) -> int:
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


def _stop_at(timeout: float | None, deadline: float | None) -> float | None:
    """When this process stops starting trials and re-evaluation runs (seconds since the epoch): ``timeout``
    seconds from now, or the study's ``deadline`` if sooner."""
    ends = [t for t in (None if timeout is None else time.time() + timeout, deadline) if t is not None]
    return min(ends) if ends else None


def _run_claimed(study: optuna.Study, runner: TrialRunner, budget: Budget, catch: tuple[type[Exception], ...],
                 reporter: ProgressReporter) -> None:
    """Run trials in this process, each claimed under the study's lock (as the launcher's workers do), until the
    budget is full on every process that shares the study or its deadline (this process's ``timeout`` or the
    study's ``study_timeout``) passed."""
    from ._launcher import WORKER_KEY

    # as in Study.optimize: a sampler may stop the study (GridSampler, its grid exhausted) when told a trial
    with optimize_loop(study):
        while not stop_requested(study):
            trial = claim_trial(study, budget,
                                record=lambda t: t.set_user_attr(WORKER_KEY, process_record(slot="in-process")))
            if trial is None:
                return
            try:
                value = runner(trial)
            except optuna.TrialPruned:
                frozen = study.tell(trial, state=TrialState.PRUNED)
            except catch as exc:
                optuna.logging.get_logger("optuna").warning(f"Trial {trial.number} failed with {exc!r}")
                frozen = study.tell(trial, state=TrialState.FAIL)
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)
                raise
            else:
                frozen = study.tell(trial, value)
            reporter(study, frozen)


def _storage_file(storage: Any) -> Path | None:
    """The file an SQLite or journal ``storage`` names (``None`` for a server URL, memory or a storage object)."""
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


def _make_storage_folder(storage: Any, out_root: Path) -> None:
    """Create the folder of a storage file that lies inside ``out_dir`` (``out_dir="X", storage="X/study.db"``)
    before it is opened; a folder elsewhere is left to the user (a typo there stays an error)."""
    path = _storage_file(storage)
    if path is None:
        return
    folder, root = path.parent.resolve(), out_root.resolve()
    if folder == root or root in folder.parents:
        folder.mkdir(parents=True, exist_ok=True)


def _first_trials(space: SearchSpace, base: dict[str, Any], configs: Sequence[dict[str, Any]],
                  enqueue_base: bool) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The ``(params, user_attrs)`` a new study enqueues first: the base config, then ``enqueue=``'s configs."""
    out = [(space.base_params(base)[0], {"optkit.enqueued": "base config"})] if enqueue_base else []
    out += [(space.base_params(extra)[0], {"optkit.enqueued": f"enqueue[{i}]"}) for i, extra in enumerate(configs)]
    return out


def _enqueued_configs(base: dict[str, Any], enqueue: Any) -> list[dict[str, Any]]:
    """``enqueue=`` as complete optim blocks: each item is one (``optimizer:`` at the top) or overrides of ``base``."""
    if isinstance(enqueue, (Mapping, str, bytes)) or not isinstance(enqueue, Sequence):
        raise ConfigError("enqueue", enqueue, "a list of configs: optim blocks or {dotted key: value} overrides")
    from ._space import _construct_optimizers

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


def _launch_settings(plan: TrialPlan, storage: Any, out_root: Path, *, workers: int | None, devices: Any,
                     devices_per_trial: int, threads: int | None, max_retries: int, heartbeat_interval: int,
                     sampler: BaseSampler, pruner: BasePruner) -> dict[str, Any]:
    """Check the launcher's arguments before anything starts; choose the storage (see :func:`tune`)."""
    import pickle

    from ._launcher import plan_slots
    from ._sources import source_from_description

    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ConfigError("max_retries", max_retries, "a number of retries >= 0")
    if isinstance(heartbeat_interval, bool) or not isinstance(heartbeat_interval, int) or heartbeat_interval < 1:
        raise ConfigError("heartbeat_interval", heartbeat_interval, "a positive number of seconds")
    slots = plan_slots(workers, "auto" if devices is None else devices, devices_per_trial, threads=threads)
    gpu = any(s.devices for s in slots)
    per_trial = plan.trainer_kwargs.get("devices")
    if isinstance(per_trial, int) and not isinstance(per_trial, bool) and per_trial > 1 \
            and per_trial != devices_per_trial:  # (a source's default devices=1 just gives way to the slot)
        raise ConfigError("trainer_kwargs.devices", per_trial,
                          f"unset or {devices_per_trial} with workers: devices_per_trial={devices_per_trial} sets "
                          "the devices of each trial", hint=f"use devices_per_trial={per_trial} "
                          "(--devices-per-trial) and let devices= (--devices) list what the workers share")
    source_from_description(plan.describe()["source"])  # a factory defined in __main__ cannot be rebuilt in a worker
    if plan.trainer_kwargs.get("callbacks"):
        raise ConfigError("trainer_kwargs.callbacks", plan.trainer_kwargs["callbacks"],
                          "no callback objects with workers: each trial runs in a new process that rebuilds it",
                          hint="put the callbacks in a LightningCLI YAML (trainer.callbacks), or build them in "
                               "your LightningModule's configure_callbacks()")
    try:
        pickle.dumps((sampler, pruner))
    except Exception as exc:
        raise ConfigError("sampler", sampler, f"a sampler and pruner that can be pickled for the workers ({exc})") \
            from None
    if isinstance(storage, BaseStorage):
        raise ConfigError("storage", type(storage).__name__, "a URL or file path with workers (each trial process "
                          "opens the storage itself)")
    if storage is None:
        journal = Path(out_root, "optuna.journal.log")
        url = f"journal:{journal.as_posix()}" if len(slots) > 1 or journal.exists() else None
        if url is None:
            url = f"sqlite:///{Path(out_root, 'optuna.db').as_posix()}"
        out_root.mkdir(parents=True, exist_ok=True)
    else:
        url = os.fspath(storage).strip()
        if url.lower() in ("memory", ":memory:", "inmemory", "in-memory"):
            raise ConfigError("storage", storage, "a file or database with workers: each trial runs in its own process",
                              hint="leave storage unset for a journal file in out_dir")
    is_rdb = "://" in url and not url.startswith("sqlite")
    kwargs = {"heartbeat_interval": heartbeat_interval, "max_retry": max_retries} if is_rdb else {}
    return {"url": url, "slots": slots, "gpu": gpu, "storage_kwargs": kwargs,
            "heartbeat_interval": heartbeat_interval if is_rdb else None, "sampler": sampler, "pruner": pruner}


def _run_launcher(study: optuna.Study, plan: TrialPlan, launch: dict[str, Any], display: str, name: str,
                  remaining: int | None, finished: int, started: float, *, n_trials: int | None,
                  timeout: float | None, monitors: Sequence[str], directions: Sequence[str], progress: bool | None,
                  plots: bool, summary: bool, tensorboard: bool, catch: Sequence[type[Exception]], verbose: bool,
                  max_retries: int, grace_period: int | None, deadline: float | None,
                  reeval: tuple[int, int]) -> optuna.Study:
    from ._launcher import Launcher

    reporter = ProgressReporter(monitors, directions, total=remaining, timeout=timeout,
                                enabled=progress if progress is not None else True)
    slots = launch["slots"]
    where = ", ".join(f"[{','.join(s.devices)}]" if s.devices else
                      (f"{s.processes} DDP processes x " if s.processes > 1 else "") + f"{s.threads} thread(s)"
                      for s in slots)
    if progress is not False:
        print(f"optkit tune: study {name!r} in {display}: {len(slots)} worker process(es), one per trial: {where}",
              flush=True)
    launcher = Launcher(study, launch["url"], plan.out_dir, slots, n_trials=n_trials, timeout=timeout,
                        deadline=deadline, max_retries=max_retries, sampler=launch["sampler"], pruner=launch["pruner"],
                        heartbeat_interval=launch["heartbeat_interval"], grace_period=grace_period,
                        gpu=launch["gpu"], tensorboard=tensorboard, catch=tuple(catch), verbose=verbose,
                        on_trial_end=reporter)
    error: BaseException | None = None
    stop_at = _stop_at(timeout, deadline)
    try:
        if remaining == 0:
            print(f"optkit tune: study {name!r} already has {finished} finished trials (n_trials={n_trials})", flush=True)
        launcher.keep_server = True  # re-evaluation runs in the same fork server
        launcher.run()  # with the budget spent: only fails the trials left RUNNING by dead processes
        reporter.close()
        reevaluate(study, monitors[0], plan.seed, reeval[0] if len(monitors) == 1 else 0, reeval[1],
                   launcher.reevaluate, progress=progress is not False, deadline=stop_at)
    except BaseException as exc:
        error = exc
        raise
    finally:
        launcher.close()
        reporter.close()
        _finish(study, plan, display, time.perf_counter() - started, plots=plots, summary=summary,
                failed=error is not None, ran=launcher.ran, n_trials=n_trials, reeval=reeval)
    return study


def _set_threads(threads: int | None) -> int | None:
    if threads is None:
        return None
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    return saved


def _finish(study: optuna.Study, plan: TrialPlan, display: str, elapsed: float, *, plots: bool, summary: bool,
            failed: bool, ran: int | None = None, n_trials: int | None = None,
            reeval: tuple[int, int] = (0, 0)) -> None:
    """Write the outputs (also after an error or Ctrl-C, for what finished) and print the summary."""
    out = plan.out_dir
    report = reeval_report(study, plan.monitors[0], plan.seed, *reeval) if len(plan.monitors) == 1 else None
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    if not finished:
        if summary and not failed:
            print(format_summary(study, plan, elapsed=elapsed, storage=display, ran=ran, n_trials=n_trials))
        return
    best_path, reproduce, extras = write_best_config(study, plan, out, reeval=report)
    csv_path = write_trials_csv(study, plan, out / "trials.csv")
    written, notes = write_plots(study, plan, out / "plots") if plots else ([], [])
    if not summary:
        return
    import yaml

    from ._reports import chosen_trial, trial_config

    lines = ["", format_summary(study, plan, elapsed=elapsed, storage=display, ran=ran, n_trials=n_trials), ""]
    if report is not None:
        lines.extend([*report.lines(), ""])
    best = chosen_trial(study, report)
    if best is not None and best_path is not None:
        values = ", ".join(f"{m} = {v:.4f}" for m, v in zip(plan.monitors, best.values or []))
        best_line = report.best_line() if report is not None else None
        lines.append(f"best trial {best.number}: " + (f"{best_line}" if best_line else values))
        lines.append(f"best config ({best_path}):")
        lines.extend("  " + ln for ln in yaml.safe_dump(trial_config(best, plan), sort_keys=False).rstrip().splitlines())
        for i, line in enumerate(reproduce):
            lines.append(("reproduce: " if i == 0 else "           ") + line)
        lines.extend(f"also: {p}" for p in extras)
    else:
        lines.append("no trial completed: no best config")
    lines.append(f"trials: {csv_path}")
    if written:
        lines.append(f"plots: {', '.join(str(p) for p in written)}")
    lines.extend(f"plots: {n}" for n in notes)
    if plan.tensorboard:
        lines.append(f"tensorboard: tensorboard --logdir {out / 'tensorboard'}")
    if display.startswith(("sqlite", "postgresql", "mysql")):
        lines.append(f"dashboard: optuna-dashboard {display}")
    print("\n".join(lines), flush=True)
