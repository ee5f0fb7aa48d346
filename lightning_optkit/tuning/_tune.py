"""tune(): an Optuna study over the optim block, from a factory, a LightningCLI YAML or a built-in example.

``tune()`` only connects the pieces: its arguments are checked and resolved into a request
(``_request.py``), a recipe may turn that request into another (``_staged.py``), and a run mode
runs it (``_modes.py``: DDP follower, in process, or a pool of worker processes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage

from ..config import OptimConfig
from ._modes import run_request
from ._reeval import DEFAULT_REEVAL, DEFAULT_REEVAL_SEEDS
from ._request import EXAMPLE_DEFAULTS, infer_direction, resolve_request
from ._space import SearchSpace
from ._staged import recipe_for

__all__ = ["EXAMPLE_DEFAULTS", "infer_direction", "tune"]

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
        (Lines marked ``+SKIP`` are not run as doctests: trains models for a few seconds; tests/test_tuning_tune.py runs it for real.)
        >>> from lightning_optkit.demo import make_example
        >>> study = tune(lambda optim: make_example("digits", optim),
        ...              {"optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True}},
        ...              config="configs/digits.yaml", monitor="val_acc", n_trials=4,
        ...              trainer_kwargs={"max_epochs": 2})          # doctest: +SKIP
        >>> study.best_params                                        # doctest: +SKIP
        {'optimizer.lr': 0.0124...}
    """
    started = time.perf_counter()
    recipe_step = recipe_for(recipe)
    request = resolve_request(
        model, search, config=config, overrides=overrides, example=example, model_args=model_args,
        data_args=data_args, monitor=monitor, direction=direction, n_trials=n_trials, timeout=timeout,
        study_timeout=study_timeout, sampler=sampler, pruner=pruner, storage=storage, study_name=study_name,
        resume=resume, enqueue_base=enqueue_base, enqueue=enqueue, trainer_kwargs=trainer_kwargs, seed=seed,
        out_dir=out_dir, workers=workers, devices=devices, devices_per_trial=devices_per_trial,
        max_retries=max_retries, heartbeat_interval=heartbeat_interval, reeval=reeval, reeval_seeds=reeval_seeds,
        tensorboard=tensorboard, plots=plots, summary=summary, progress=progress, threads=threads, catch=catch,
        verbose=verbose, grace_period=grace_period, recipe=recipe,
    )
    if recipe_step is not None:
        request = recipe_step(request)
    study = run_request(request, started)
    for key, value in request.study_attrs.items():  # a recipe's record (optkit.staged), once the run is over
        study.set_user_attr(key, value)
    return study


