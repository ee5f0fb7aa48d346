"""Helpers over torch optimizers: the optimizer behind Lightning's wrapper, its parameters, and LR scaling.

LR scaling is shared by the LR finder (applying a suggestion to the live optimizer) and the
non-finite guard (reducing the LR after a bad step): both scale every LR setting of the groups and
their schedulers' bases, so the change composes with any schedule and survives a resume.

Example:
    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(1))
    >>> opt = torch.optim.SGD([p], lr=0.1)
    >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5)
    >>> scale_lrs(opt, [sched], 0.5)
    >>> opt.param_groups[0]["lr"], sched.base_lrs
    (0.05, [0.05])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["drives", "optimizer_params", "scale_lrs", "scale_scheduler_lrs", "unwrap_optimizer"]

_GROUP_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
_SCHED_LIST_ATTRS = ("base_lrs", "_last_lr", "max_lrs", "min_lrs", "plateau_lrs")
_SCHED_SCALAR_ATTRS = ("eta_min",)


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer behind a Lightning ``LightningOptimizer`` (or ``optimizer`` itself)."""
    return getattr(optimizer, "_optimizer", optimizer)


def optimizer_params(optimizer: Any) -> list[Tensor]:
    """Every parameter of ``optimizer``, in group order, without duplicates."""
    seen: set[int] = set()
    out: list[Tensor] = []
    for group in unwrap_optimizer(optimizer).param_groups:
        for p in group["params"]:
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def scale_lrs(optimizer: torch.optim.Optimizer, schedulers: Sequence[Any], factor: float) -> None:
    """Multiply every LR setting of ``optimizer``'s groups and of its schedulers by ``factor``.

    Groups: ``lr``, ``initial_lr``, ``max_lr``, ``min_lr`` (floats, or tensors scaled in place).
    Schedulers of this optimizer (chained and sequential ones' children and the plateau inside a
    plateau-with-warm-up included): ``base_lrs``, ``_last_lr``, ``max_lrs``, ``min_lrs``,
    ``plateau_lrs`` and ``eta_min``, so the next scheduler step does not undo the change.
    """
    for group in optimizer.param_groups:
        for key in _GROUP_LR_KEYS:
            value = group.get(key)
            if isinstance(value, torch.Tensor):
                value.mul_(factor)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                group[key] = value * factor
    seen: set[int] = set()
    for sched in schedulers:
        if drives(sched, optimizer):
            _scale_scheduler(sched, factor, seen)


def scale_scheduler_lrs(schedulers: Sequence[Any], factor: float) -> None:
    """Multiply the LR settings of ``schedulers`` (not of any optimizer's groups) by ``factor``, each once."""
    seen: set[int] = set()
    for sched in schedulers:
        _scale_scheduler(sched, factor, seen)


def drives(scheduler: Any, optimizer: Any) -> bool:
    """Whether ``scheduler`` sets the LRs of ``optimizer``: the same object, or a wrapper around the same
    param groups (DeepSpeed's and other optimizer wrappers share the inner optimizer's group list)."""
    own = getattr(scheduler, "optimizer", None)
    return own is optimizer or getattr(own, "param_groups", None) is getattr(optimizer, "param_groups", False)


def _scale_scheduler(sched: Any, factor: float, seen: set[int]) -> None:
    if id(sched) in seen:
        return
    seen.add(id(sched))
    for attr in _SCHED_LIST_ATTRS:
        values = getattr(sched, attr, None)
        if isinstance(values, list) and all(isinstance(v, (int, float)) for v in values):
            setattr(sched, attr, [v * factor for v in values])
    for attr in _SCHED_SCALAR_ATTRS:
        value = getattr(sched, attr, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(sched, attr, value * factor)
    for child in getattr(sched, "_schedulers", []) or []:
        _scale_scheduler(child, factor, seen)
    plateau = getattr(sched, "plateau", None)
    if plateau is not None:
        _scale_scheduler(plateau, factor, seen)
