"""What the TrainingDoctor records: the host-side history of a fit (:class:`Series`) and the device-side
ring buffer that fills it (:class:`StepRecorder`) without a host-device sync between checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ._grad_stats import StepLoss, unscaled_loss

__all__ = ["Series", "StepRecorder", "read_lr"]


@dataclass
class Series:
    """Per-optimizer-step history, decimated (every other point dropped) when it outgrows ``limit``.

    Example:
        >>> s = Series(limit=4)
        >>> for step in range(10):
        ...     s.add(step, 1.0, 1.0, 0.1, [])
        >>> s.steps, s.stride
        ([0, 4, 8], 4)
    """

    limit: int = 20_000
    stride: int = 1
    count: int = 0
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    gnorm: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    groups: list[list[float]] = field(default_factory=list)

    def add(self, step: int, loss: float, gnorm: float, lr: float, groups: list[float]) -> None:
        """Append one optimizer step (or skip it, at the current stride)."""
        self.count += 1
        if (self.count - 1) % self.stride:
            return
        self.steps.append(step)
        self.loss.append(loss)
        self.gnorm.append(gnorm)
        self.lr.append(lr)
        self.groups.append(groups)
        if len(self.steps) > self.limit:
            for name in ("steps", "loss", "gnorm", "lr", "groups"):
                setattr(self, name, getattr(self, name)[::2])
            self.stride *= 2


def read_lr(opt: Any) -> Any:
    """The LR to record for ``opt``: the largest group LR as a host float, or the first group's tensor LR
    (read later, at the check, so that this step makes no host-device sync)."""
    if any(isinstance(g["lr"], Tensor) for g in opt.param_groups):
        return opt.param_groups[0]["lr"]
    return max((g["lr"] for g in opt.param_groups), key=float, default=math.nan)


class StepRecorder:
    """A device buffer of optimizer steps (loss, total gradient norm, one norm per layer group)
    plus a "ever had a non-zero gradient" flag per parameter; :meth:`flush` moves it into a
    :class:`Series` with one ``.tolist()``.

    The buffer is laid out for one set of parameters with gradients (the gradient cache's layout);
    when that set changes, the owner flushes and calls :meth:`restart`.
    """

    def __init__(self) -> None:
        self.ring: Tensor | None = None
        self.meta: list[tuple[int, Any, bool]] = []  # (step, lr, has a loss) per row
        self.cols = 0
        self.loss = StepLoss()
        self.nonzero: Tensor | None = None
        self.nonzero_names: list[str] = []
        self.layout_key: int | None = None

    @property
    def pending(self) -> int:
        """Steps recorded on the device and not yet flushed."""
        return len(self.meta)

    def add_loss(self, loss: Tensor) -> None:
        """Accumulate the loss of one backward (several per step under gradient accumulation)."""
        self.loss.add(loss)

    def drop_loss(self) -> None:
        """Forget the accumulated loss (a step without gradients records nothing)."""
        self.loss.take()

    def layout_changed(self, stats: Any) -> bool:
        """Whether the gradient cache's set of parameters differs from the one the buffer was laid out for."""
        return stats.layout_key != self.layout_key

    def restart(self, stats: Any, n_groups: int, rows: int) -> None:
        """Lay the buffer out for ``stats``'s parameters, ``n_groups`` layer groups and ``rows`` steps
        between flushes (after a flush)."""
        self.layout_key = stats.layout_key
        self.nonzero = torch.zeros(len(stats), dtype=torch.bool, device=stats.device)
        self.nonzero_names = list(stats.names)
        self.cols = 2 + n_groups
        self.ring = torch.zeros(rows + 1, self.cols, device=stats.device)

    def record(self, step: int, lr: Any, stats: Any, grouping: Any, trainer: Any) -> None:
        """Write this step's loss (unscaled under AMP), gradient norms and LR; device ops only."""
        assert self.ring is not None and self.nonzero is not None
        step_loss = self.loss.take()
        has_loss = step_loss is not None  # no backward (training_step returned None): no loss to record
        loss = step_loss if has_loss else torch.zeros((), device=stats.device)
        loss = unscaled_loss(loss, trainer)
        norms = stats.norms(2.0)
        self.nonzero |= norms != 0  # NaN != 0 counts as "had a gradient"
        _, groups = stats.group_norms(grouping, 2.0)
        n = len(self.meta)
        self.ring[n, 0] = loss.to(stats.device)
        self.ring[n, 1] = stats.total(2.0)
        self.ring[n, 2:] = groups
        self.meta.append((step, lr, has_loss))  # a tensor LR is read at the check

    def flush(self, series: Series, ever_grad: dict[str, bool]) -> None:
        """Read the device records into ``series`` and ``ever_grad`` (the one sync of a check)."""
        if self.ring is not None and self.meta:
            rows = self.ring[: len(self.meta)].tolist()
            for (step, lr, has_loss), row in zip(self.meta, rows):
                if has_loss:
                    series.add(step, row[0], row[1], float(lr), row[2:])
            self.meta = []
        if self.nonzero is not None and self.nonzero_names:
            for name, seen in zip(self.nonzero_names, self.nonzero.tolist()):
                if seen:
                    ever_grad[name] = True
