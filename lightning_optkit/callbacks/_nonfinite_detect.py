"""NonFiniteGuard's detection: the per-step flags, computed on the device, and where a non-finite value is.

Per optimizer step the guard needs the step's loss (summed over its micro-batches, unscaled under
AMP, averaged over ranks), whether the gradient norm is finite and whether the loss is a spike
against the running window of recent losses. All of it stays on the device: one row per step
(columns ``LOSS`` ... ``GRAD_BAD``) that the host reads only at check steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._internal.ranks import device_sum, world_size
from .._internal.tensors import first_nonfinite
from ._grad_stats import grad_scaler, param_names, unscaled_loss

__all__ = [
    "BAD", "GNORM", "GRAD_BAD", "LOSS", "MEDIAN", "N_COLUMNS", "SPIKE",
    "batch_finite", "loss_and_grad_flag", "module_of", "params_finite", "spike_flag", "step_row", "where_nonfinite",
]

# columns of one per-step record (kept on the device until a check reads them)
LOSS, GNORM, MEDIAN, SPIKE, BAD, GRAD_BAD = range(6)
N_COLUMNS = 6


def loss_and_grad_flag(trainer: Any, loss_acc: Tensor | None, gnorm: Tensor, device: torch.device
                       ) -> tuple[Tensor, Tensor]:
    """The step's loss as every rank sees it, and whether its gradient is non-finite (device tensors, no sync).

    Under AMP the loss seen by ``on_before_backward`` is scaled, so it is divided by the scale; the
    GradScaler skips steps with non-finite gradients itself, so those are not flagged here. Under DDP
    one two-element ``all_reduce`` makes every rank see the mean loss and the same gradient flag.
    """
    loss = loss_acc if loss_acc is not None else torch.zeros((), device=device)
    loss = unscaled_loss(loss.to(device), trainer)  # on_before_backward saw the scaled loss
    scaler = grad_scaler(trainer)
    grad_bad = ~torch.isfinite(gnorm)
    if scaler is not None:
        grad_bad = torch.zeros_like(grad_bad)  # the GradScaler skips these steps and rescales
    if world_size(trainer) > 1:  # one small all-reduce on the device: every rank sees the same values
        both = device_sum(trainer, torch.stack([loss, grad_bad.float()]))
        loss = both[0] / world_size(trainer)
        grad_bad = both[1] > 0
    return loss, grad_bad


def spike_flag(window: Tensor, loss: Tensor, *, active: bool, zscore: float, ratio: float
               ) -> tuple[Tensor, Tensor]:
    """The running median of ``window`` and whether ``loss`` is a spike against it (device tensors).

    A spike exceeds the median by ``zscore`` robust standard deviations (``1.4826 * MAD``) and by
    ``(ratio - 1) * |median|``. A NaN loss is never a spike (it is flagged as non-finite instead).

    Example:
        >>> window = torch.tensor([1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.0])
        >>> med, spike = spike_flag(window, torch.tensor(9.0), active=True, zscore=6.0, ratio=2.0)
        >>> float(med), bool(spike)
        (1.0, True)
    """
    if active:
        med = torch.nanmedian(window)
        mad = torch.nanmedian((window - med).abs())
        limit = torch.maximum(mad * (zscore * 1.4826), med.abs() * (ratio - 1.0))
        spike = (loss - med) > limit  # False for NaN; an inf loss is flagged as non-finite on the host
    else:
        med = torch.full((), math.nan, device=loss.device)
        spike = torch.zeros((), dtype=torch.bool, device=loss.device)
    return med, spike


def step_row(loss: Tensor, gnorm: Tensor, med: Tensor, spike: Tensor, bad: Tensor, grad_bad: Tensor) -> Tensor:
    """One per-step record, in the column order above (the loss is read back as "not finite" on the host)."""
    return torch.stack([loss.float(), gnorm.float(), med.float(), spike.float(), bad.float(), grad_bad.float()])


def params_finite(trainer: Any) -> tuple[bool, str]:
    """Whether every parameter is finite (one host read), and the first offender's module."""
    module = trainer.lightning_module
    params = list(module.parameters())
    first = first_nonfinite(params)
    if first is None:
        return True, ""
    name = param_names(trainer, [params[first]])[0]
    return False, f"non-finite weights in {module_of(name)} ({name})"


def module_of(name: str) -> str:
    """The module path of a parameter name.

    Example:
        >>> module_of("encoder.0.weight"), module_of("scale")
        ('encoder.0', 'scale')
    """
    return name.rsplit(".", 1)[0] if "." in name else name


def where_nonfinite(loss_bad: bool, grad_bad: bool, names: list[str], norms: Tensor | None) -> str:
    """Which module the non-finite gradient comes from (reads that step's per-parameter norms: events only)."""
    if not grad_bad or norms is None or not names:
        return ""
    bad = [i for i, v in enumerate(norms.tolist()) if not math.isfinite(v)]
    if not bad:
        return ""
    if not loss_bad:
        # finite loss: backward runs output -> input, so the non-finite value was born at the last one
        return f"non-finite gradient appears in {module_of(names[bad[-1]])} ({names[bad[-1]]}) during backward"
    return f"non-finite gradients from {module_of(names[bad[0]])} ({names[bad[0]]}) on"


def batch_finite(batch: Any) -> bool:
    """Whether every floating-point tensor in ``batch`` (nested lists, tuples, mappings) is finite.

    Example:
        >>> batch_finite({"x": torch.tensor([1.0, float("nan")]), "y": torch.tensor([1])})
        False
    """
    if isinstance(batch, Tensor):
        return not batch.is_floating_point() or bool(torch.isfinite(batch).all())
    if isinstance(batch, Mapping):
        return all(batch_finite(v) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        return all(batch_finite(v) for v in batch)
    return True
