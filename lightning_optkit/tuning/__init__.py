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

import importlib
from typing import Any

# Each public name and the private module that defines it; imported on first use, so that
# `import lightning_optkit.tuning` stays cheap and no module of the package needs the package itself.
_EXPORTS: dict[str, str] = {
    "PRESETS": "_presets",
    "AutoHyperbandPruner": "_hyperband",
    "ClassSource": "_sources",
    "ExampleSource": "_sources",
    "FactorySource": "_sources",
    "LightningCLISource": "_sources",
    "ModelSource": "_sources",
    "Param": "_space",
    "PruningCallback": "_pruning",
    "SearchSpace": "_space",
    "best_by_reeval": "_reeval",
    "fit_run": "_refit",
    "infer_direction": "_request",
    "load_search": "_space",
    "make_pruner": "_samplers",
    "make_sampler": "_samplers",
    "read_run": "_refit",
    "search_preset": "_presets",
    "tune": "_tune",
}

__all__ = [
    "PRESETS",
    "AutoHyperbandPruner",
    "ClassSource",
    "ExampleSource",
    "FactorySource",
    "LightningCLISource",
    "ModelSource",
    "Param",
    "PruningCallback",
    "SearchSpace",
    "best_by_reeval",
    "fit_run",
    "infer_direction",
    "load_search",
    "make_pruner",
    "make_sampler",
    "read_run",
    "search_preset",
    "tune",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
