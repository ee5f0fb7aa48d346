"""Monitored values agreed across ranks (shared by EarlyStopping and Checkpoint)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["mean_over_ranks"]


def mean_over_ranks(trainer: Any, name: str) -> float | None:
    """``trainer.callback_metrics[name]`` averaged over ranks, or None when any rank lacks it.

    A collective call under DDP (one all-reduce of two numbers): every rank must call it at the same
    point, and every rank gets the same answer, so decisions taken from it agree. A value logged
    without ``sync_dist`` differs per rank; this is what makes it safe to act on.
    """
    value = trainer.callback_metrics.get(name)
    present = value is not None
    local = float(torch.as_tensor(value).detach().float().mean()) if present else 0.0
    if trainer.world_size == 1:
        return local if present else None
    t = torch.tensor([local, float(present)], dtype=torch.float64, device=trainer.strategy.root_device)
    t = trainer.strategy.reduce(t, reduce_op="sum")
    total, count = float(t[0]), int(round(float(t[1])))
    return total / count if count == trainer.world_size else None
