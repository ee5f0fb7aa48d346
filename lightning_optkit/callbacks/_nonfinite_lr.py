"""NonFiniteGuard's LR reduction: scale every learning rate and the schedulers' bases, so it persists.

A reduction that only changed ``param_group["lr"]`` would be undone by the next scheduler step;
scaling the schedulers' base LRs as well (``base_lrs``, ``max_lrs``, plateau LRs, chained and
sequential schedulers' children) makes it compose with any schedule and survive a resume.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..schedules import follow_param_groups
from ._grad_stats import unwrap_optimizer

__all__ = ["scale_lrs"]


def scale_lrs(trainer: Any, factor: float) -> None:
    """Scale every LR and the schedulers' bases, so the reduction persists through any schedule."""
    follow_param_groups(c.scheduler for c in getattr(trainer, "lr_scheduler_configs", []))
    for opt in trainer.optimizers:
        for group in unwrap_optimizer(opt).param_groups:
            for key in ("lr", "initial_lr", "max_lr", "min_lr"):
                if isinstance(group.get(key), (int, float)):
                    group[key] = group[key] * factor
                elif isinstance(group.get(key), Tensor):
                    group[key].mul_(factor)
    seen: set[int] = set()
    for config in getattr(trainer, "lr_scheduler_configs", []):
        _scale_scheduler(config.scheduler, factor, seen)


def _scale_scheduler(sched: Any, factor: float, seen: set[int]) -> None:
    if sched is None or id(sched) in seen:
        return
    seen.add(id(sched))
    for attr in ("base_lrs", "max_lrs", "plateau_lrs"):
        values = getattr(sched, attr, None)
        if isinstance(values, list):
            setattr(sched, attr, [v * factor for v in values])
    for child in getattr(sched, "_schedulers", []) or []:
        _scale_scheduler(child, factor, seen)
    inner = getattr(sched, "plateau", None)
    if inner is not None:
        _scale_scheduler(inner, factor, seen)
    optimizer = getattr(sched, "optimizer", None)
    if optimizer is not None and hasattr(sched, "_last_lr"):
        sched._last_lr = [float(g["lr"]) for g in optimizer.param_groups]
