"""Reductions over DDP ranks: sums and means of device tensors, and monitored metrics agreed by every rank.

Every function is a collective under DDP: every rank must call it at the same point, and every rank
gets the same answer. On a single process each returns its input (or its value) unchanged.

Example:
    >>> import torch
    >>> rank_mean(torch.tensor([1.0, 2.0])).tolist()  # a single process
    [1.0, 2.0]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["device_mean", "device_sum", "mean_over_ranks", "rank_mean", "world_size"]


def world_size(trainer: Any) -> int:
    """The number of processes of ``trainer``'s job (1 without a trainer attribute)."""
    return int(getattr(trainer, "world_size", 1) or 1)


def _dist_ready() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized()


def _all_reduce_sum(tensor: Tensor) -> Tensor:
    """A copy of ``tensor`` summed over the processes of ``torch.distributed``: the collective is only enqueued."""
    dist = torch.distributed
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def device_sum(trainer: Any, tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over the ranks, left on the device: an all-reduce and nothing else.

    ``trainer.strategy.reduce`` runs a ``barrier()`` before its all-reduce, which blocks the host until
    every rank arrives (with NCCL, a host-device sync): fine at a check step, not on every step. Where
    ``torch.distributed`` runs the job (DDP), this calls ``all_reduce`` directly, which only enqueues
    the collective; every rank calls it at the same point of every optimizer step, so it cannot hang.
    """
    if world_size(trainer) <= 1:
        return tensor
    if _dist_ready():
        return _all_reduce_sum(tensor)
    return trainer.strategy.reduce(tensor.clone(), reduce_op="sum")


def device_mean(trainer: Any, tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over the ranks, left on the device: :func:`device_sum` divided by the world size."""
    world = world_size(trainer)
    return tensor if world <= 1 else device_sum(trainer, tensor) / world


def rank_mean(values: Tensor) -> Tensor:
    """Mean of ``values`` over the processes of ``torch.distributed`` (a no-op without it or with one rank).

    SUM then divide, since gloo has no ``AVG``; needs no trainer (a loss module calls it).
    """
    if not _dist_ready():
        return values
    world = torch.distributed.get_world_size()
    if world <= 1:
        return values
    return _all_reduce_sum(values) / world


def mean_over_ranks(trainer: Any, name: str) -> float | None:
    """``trainer.callback_metrics[name]`` averaged over ranks, or None when any rank lacks it.

    One all-reduce of two numbers under DDP. A value logged without ``sync_dist`` differs per rank;
    this is what makes it safe to act on (EarlyStopping and Checkpoint decide from it).
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
