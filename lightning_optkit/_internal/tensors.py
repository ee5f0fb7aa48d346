"""Tensor helpers shared by the health callbacks, the tuning pruner and the losses.

Example:
    >>> import torch
    >>> first_nonfinite([torch.ones(2), torch.tensor([1.0, float("nan")])])
    1
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["first_nonfinite", "reduce_loss"]


def first_nonfinite(params: Sequence[Tensor]) -> int | None:
    """The index of the first tensor holding a NaN or an infinity, or ``None`` (one host read)."""
    if not params:
        return None
    device = params[0].device
    norms = torch.stack([n.to(device) for n in torch._foreach_norm([p.detach() for p in params])])
    bad = ~torch.isfinite(norms)
    if not bool(bad.any()):
        return None
    return int(bad.nonzero()[0])


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """``loss`` reduced as torch's losses do: ``"mean"``, ``"sum"`` or ``"none"`` (unchanged).

    Example:
        >>> float(reduce_loss(torch.tensor([1.0, 3.0]), "mean")), reduce_loss(torch.tensor([1.0, 3.0]), "none").shape
        (2.0, torch.Size([2]))
    """
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
