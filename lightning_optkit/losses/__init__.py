"""Losses by name: a registry over every ``torch.nn`` loss plus focal, Dice and composite losses.

``build_loss`` turns a ``loss:`` config block into an ``nn.Module``; importing this package also
registers a config validator, so :func:`lightning_optkit.load_config` rejects a misspelt loss name
or kwarg at load time (``ConfigError`` at ``loss.name`` / ``loss.<kwarg>``).

Example:
    >>> import torch
    >>> from lightning_optkit.losses import build_loss
    >>> loss = build_loss({"name": "focal", "gamma": 2.0})
    >>> loss(torch.randn(8, 5), torch.randint(0, 5, (8,))).shape
    torch.Size([])

Composite configs (entries take ``coef`` = mixing weight, and ``label`` = name in ``last_parts``)::

    loss:
      name: weighted_sum
      losses:
        - {name: cross_entropy, weight: [1.0, 3.0]}    # `weight` = CE class weights, as in torch
        - {name: dice, coef: 0.5}
"""

from ._build import LossSource, build_loss, validate_loss_config
from ._composite import UncertaintyWeightedLoss, WeightedSumLoss
from ._dice import BinaryDiceLoss, DiceLoss
from ._focal import BinaryFocalLoss, FocalLoss
from ._registry import Check, LossInfo, available_losses, get_loss_info, register_loss, resolve_loss

__all__ = [
    "BinaryDiceLoss",
    "BinaryFocalLoss",
    "Check",
    "DiceLoss",
    "FocalLoss",
    "LossInfo",
    "LossSource",
    "UncertaintyWeightedLoss",
    "WeightedSumLoss",
    "available_losses",
    "build_loss",
    "get_loss_info",
    "register_loss",
    "resolve_loss",
    "validate_loss_config",
]
