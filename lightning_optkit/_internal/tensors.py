"""Tensor checks shared by the health callbacks and the tuning pruner.

Example:
    >>> import torch
    >>> first_nonfinite([torch.ones(2), torch.tensor([1.0, float("nan")])])
    1
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["first_nonfinite"]


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
