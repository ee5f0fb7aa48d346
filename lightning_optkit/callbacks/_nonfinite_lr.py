"""NonFiniteGuard's LR reduction: scale every learning rate and the schedulers' bases, so it persists.

A reduction that only changed ``param_group["lr"]`` would be undone by the next scheduler step;
scaling the schedulers' base LRs as well (``base_lrs``, ``max_lrs``, plateau LRs, chained and
sequential schedulers' children) makes it compose with any schedule and survive a resume. The
scaling itself is the one the LR finder uses (:func:`lightning_optkit._internal.optimizers.scale_lrs`).
"""

from __future__ import annotations

from typing import Any

from .._internal.optimizers import drives, scale_scheduler_lrs, unwrap_optimizer
from .._internal.optimizers import scale_lrs as scale_optimizer_lrs
from ..schedules import follow_param_groups

__all__ = ["scale_lrs"]


def scale_lrs(trainer: Any, factor: float) -> None:
    """Scale every LR and the schedulers' bases, so the reduction persists through any schedule."""
    schedulers = [c.scheduler for c in getattr(trainer, "lr_scheduler_configs", [])]
    follow_param_groups(schedulers)
    optimizers = [unwrap_optimizer(opt) for opt in trainer.optimizers]
    for opt in optimizers:
        scale_optimizer_lrs(opt, schedulers, factor)
    # a scheduler tied to none of them (built on an optimizer a strategy wrapped, or with no .optimizer):
    # its bases are scaled too, once, or its next step would undo the reduction
    orphans = [s for s in schedulers if not any(drives(s, opt) for opt in optimizers)]
    scale_scheduler_lrs(orphans, factor)
