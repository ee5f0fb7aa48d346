"""Optuna tuning of the ``optim:`` block: :func:`tune`, :class:`PruningCallback`, search spaces.

One call (or ``optkit tune``) runs a study over the same dotted key paths the config uses::

    from lightning_optkit.tuning import tune

    study = tune(build, {"optimizer.name": {"choices": ["adamw", "sgd"]},
                         "optimizer.lr": {"low": 1e-5, "high": 1e-1, "log": True},
                         "optimizer.momentum": {"low": 0.8, "high": 0.99, "when": {"optimizer.name": "sgd"}}},
                 config="configs/adamw_warmup_cosine.yaml", monitor="val_acc",
                 n_trials=50, trainer_kwargs={"max_epochs": 10})

``build(optim: dict) -> (LightningModule, LightningDataModule)`` is your factory; a LightningCLI
YAML path works instead, and ``tune(example="digits")`` tunes the built-in demo. Pruning reports
every validation at its optimizer step and works under ``strategy="ddp"`` (rank 0 owns the trial).

Example:
    >>> from lightning_optkit.tuning import SearchSpace
    >>> space = SearchSpace.from_dict({"optimizer.lr": {"low": 1e-4, "high": 1e-1, "log": True}})
    >>> space.validate({"optimizer": {"name": "adamw"}})
    >>> space.searched
    ['optimizer.lr']
"""

from ._dist import DistributedContext
from ._launcher import DeviceSlot, Launcher, plan_slots
from ._presets import PRESETS, search_preset
from ._pruning import PruningCallback
from ._reeval import best_by_reeval
from ._reports import ProgressReporter
from ._runner import TrialPlan, TrialRunner
from ._sources import ClassSource, ExampleSource, FactorySource, LightningCLISource, ModelSource
from ._space import Param, SearchSpace, load_search
from ._study import AutoHyperbandPruner, make_pruner, make_sampler, redact_url, resolve_storage
from ._tune import infer_direction, tune

__all__ = [
    "PRESETS",
    "AutoHyperbandPruner",
    "ClassSource",
    "DeviceSlot",
    "DistributedContext",
    "ExampleSource",
    "FactorySource",
    "Launcher",
    "LightningCLISource",
    "ModelSource",
    "Param",
    "ProgressReporter",
    "PruningCallback",
    "SearchSpace",
    "TrialPlan",
    "TrialRunner",
    "best_by_reeval",
    "infer_direction",
    "load_search",
    "make_pruner",
    "make_sampler",
    "plan_slots",
    "redact_url",
    "resolve_storage",
    "search_preset",
    "tune",
]
