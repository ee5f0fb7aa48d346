"""lightning_optkit: declarative optimizers, schedules and losses for PyTorch Lightning.

Example:
    >>> from lightning_optkit import load_config
    >>> load_config({"optimizer": {"name": "adamw", "lr": 3e-4}}).optimizer.name
    'adamw'
"""

from . import optim as _optim  # noqa: F401  (registers the optimizer checks)
from . import schedules as _schedules  # noqa: F401  (registers the schedule checks)
from .config import ConfigError, OptimConfig, load_config
from .losses import build_loss  # also registers the loss checks
from .lr_finder import find_lr
from .mixin import OptimMixin, build_optimizers

__version__ = "0.1.0"


__all__ = [
    "ConfigError",
    "OptimConfig",
    "OptimMixin",
    "build_loss",
    "build_optimizers",
    "find_lr",
    "load_config",
]
