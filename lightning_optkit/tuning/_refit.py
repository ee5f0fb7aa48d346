"""The best config as a complete run: ``optkit fit optkit_tune/<study>/best_config.yaml`` trains it again.

``best_config.yaml`` holds the best trial's optim block under ``optim:`` (so
:func:`~lightning_optkit.load_config` and ``optkit fit --example/--model`` read it as before) and,
under ``run:``, everything else the trial trained with::

    optim: {optimizer: {name: adamw, lr: 0.0031}, ...}
    run:
      source: {kind: classes, model: pkg.models.Net, data: pkg.data.DataModule, model_args: {}, data_args: {}}
      model: {n_layers: 2, units: [64, 32], dropout: 0.1}      # the sampled model./data. values
      data: {batch_size: 32}
      trainer: {max_epochs: 10, gradient_clip_val: 0.5}         # the study's Trainer arguments + trainer.*
      seed: 0
      threads: 1
      not_recorded: [callbacks]   # Trainer arguments that are objects: optkit fit warns that it trains without them

The source is one of :meth:`ModelSource.describe`'s forms (an example name, model/data class
paths, a LightningCLI file, an importable factory path). :func:`fit_run` rebuilds it, seeds as the
trial did, builds model and data with the same values and trains with the same Trainer
arguments, so the metric of the last validation is the trial's, to the last bit (on the same
machine and thread count).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import ConfigError, load_config, merge_nested, read_yaml
from ._space import split_overrides

__all__ = ["fit_run", "read_run", "run_block"]

_PLAIN = (int, float, str, bool, type(None))


def run_block(plan: Any, targets: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``run:`` block of a best config: source, sampled model/data values, Trainer arguments, seed.

    Args:
        plan: the study's :class:`~lightning_optkit.tuning._runner.TrialPlan`.
        targets: the best trial's sampled ``{"model": ..., "data": ..., "trainer": ...}``.
    """
    trainer = {k: copy.deepcopy(v) for k, v in plan.trainer_kwargs.items() if _writable(v)}
    not_recorded = sorted(k for k in plan.trainer_kwargs if k not in trainer)
    trainer.update(copy.deepcopy(dict(targets.get("trainer") or {})))
    out: dict[str, Any] = {"source": plan.source.describe()}
    for section in ("model", "data"):
        if targets.get(section):
            out[section] = copy.deepcopy(dict(targets[section]))
    out["trainer"] = trainer
    out["seed"] = plan.seed
    if plan.threads is not None:
        out["threads"] = plan.threads
    if not_recorded:
        out["not_recorded"] = not_recorded
    return out


def _writable(value: Any) -> bool:
    """A value YAML writes and reads back as it is: a scalar, or a list / string-keyed dict of them."""
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_writable(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _writable(v) for k, v in value.items())
    return False


def read_run(path: str | Path) -> dict[str, Any] | None:
    """The ``run:`` block of a YAML file written by ``optkit tune`` (``None`` for a plain optim config).

    Example:
        >>> read_run("configs/digits.yaml") is None
        True
    """
    data = read_yaml(path)
    if isinstance(data, Mapping) and "optim" in data and isinstance(data.get("run"), Mapping):
        return dict(data["run"])
    return None


def fit_run(path: str | Path, *, overrides: Mapping[str, Any] | None = None, log_dir: str | Path = "optkit_runs",
            trainer_overrides: Mapping[str, Any] | None = None, quiet: bool = True, seed: int | None = None) -> Any:
    """Train the run a best config describes; returns the fitted :class:`lightning.Trainer`.

    ``overrides`` are ``--set`` keys: ``optimizer.lr=...`` changes the optim block,
    ``model.units=[64]``/``data.batch_size=16``/``trainer.max_epochs=3`` the run's arguments.
    ``seed``: instead of the run's. Trainer arguments the file lists under ``not_recorded`` (objects
    such as callbacks) are missing from this run: a UserWarning names them.

    Raises:
        ConfigError: the file has no ``run:`` block, or its source cannot be rebuilt here (a
            factory defined in ``__main__`` or a lambda, a LightningCLI config given as a dict).
    """
    import lightning as L
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger

    from ._runner import TRIAL_DEFAULTS
    from ._sources import source_from_description
    from ._targets import build_source

    run = read_run(path)
    if run is None:
        raise ConfigError("run", None, "a best config written by optkit tune (with a run: block)")
    optim_overrides, sets = split_overrides(dict(overrides or {}))
    source = source_from_description(run.get("source") or {})
    optim = load_config(path, optim_overrides).to_dict()
    targets = {s: merge_nested(run.get(s) or {}, sets[s]) for s in ("model", "data")}
    trainer_kwargs = {**source.trainer_defaults(), **(run.get("trainer") or {}), **sets["trainer"],
                      **dict(trainer_overrides or {})}
    if run.get("not_recorded"):
        warnings.warn(f"{path}: the study's Trainer arguments {', '.join(map(str, run['not_recorded']))} were not "
                      "recorded (objects): this run trains without them", UserWarning, stacklevel=2)
    if run.get("threads"):
        torch.set_num_threads(int(run["threads"]))
    L.seed_everything(int(run.get("seed", 0)) if seed is None else int(seed), workers=True, verbose=False)
    module, data = build_source(source, optim, targets)
    logger = TensorBoardLogger(save_dir=str(log_dir), name=source.name, default_hp_metric=False)
    kwargs = {**TRIAL_DEFAULTS, "enable_checkpointing": True, "enable_progress_bar": not quiet,
              "enable_model_summary": not quiet, **trainer_kwargs, "logger": logger}
    trainer = L.Trainer(**kwargs)
    trainer.fit(module, datamodule=data)
    return trainer
