"""lightning_optkit: declarative optimizers, schedules and losses for PyTorch Lightning.

The public names are imported on first use (PEP 562), so ``optkit --version`` and ``optkit --help``
start without torch or Lightning; ``from lightning_optkit import OptimMixin`` works as usual.

Example:
    >>> from lightning_optkit import load_config
    >>> load_config({"optimizer": {"name": "adamw", "lr": 3e-4}}).optimizer.name
    'adamw'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it (imported when the name is first read)
_LAZY = {
    "ConfigError": "lightning_optkit.config",
    "OptimConfig": "lightning_optkit.config",
    "load_config": "lightning_optkit.config",
    "build_loss": "lightning_optkit.losses",
    "find_lr": "lightning_optkit.lr_finder",
    "OptimMixin": "lightning_optkit.mixin",
    "build_optimizers": "lightning_optkit.mixin",
}
_SUBMODULES = ("callbacks", "config", "demo", "diagnostics", "losses", "lr_finder", "mixin", "optim", "schedules",
               "tuning")

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .config import ConfigError, OptimConfig, load_config
    from .losses import build_loss
    from .lr_finder import find_lr
    from .mixin import OptimMixin, build_optimizers


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})


__all__ = [
    "ConfigError",
    "OptimConfig",
    "OptimMixin",
    "build_loss",
    "build_optimizers",
    "find_lr",
    "load_config",
]
