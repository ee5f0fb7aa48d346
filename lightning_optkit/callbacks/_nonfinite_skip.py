"""NonFiniteGuard's skip: how a flagged optimizer step is skipped, and how often the host checks.

Three ways, chosen once per fit by :func:`choose_skip_mode`:

* ``"found_inf"``: every optimizer accepts a GradScaler-style ``found_inf`` tensor (fused ones do):
  the device flag is handed over and the kernel skips the update, without a host read;
* ``"scaler"``: fp16 AMP without spike detection: the GradScaler skips non-finite steps itself;
* ``"host"``: the flag is read and the gradients of a flagged step are set to ``None``.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from .._internal.optimizers import optimizer_params, unwrap_optimizer
from ._grad_stats import grad_scaler
from ._nonfinite_snapshot import BufferGuard

__all__ = ["apply_skip", "check_interval", "choose_skip_mode", "install_found_inf_hooks"]

_OWNER = "NonFiniteGuard"


def choose_skip_mode(trainer: Any, device: torch.device | None, detect_spikes: bool) -> str:
    """``"found_inf"``, ``"scaler"`` or ``"host"`` (warning once when the host read is a device sync)."""
    scaler = grad_scaler(trainer)
    if scaler is None and all(getattr(unwrap_optimizer(o), "_step_supports_amp_scaling", False)
                              for o in trainer.optimizers):
        return "found_inf"
    if scaler is not None and not detect_spikes:
        return "scaler"  # the scaler skips non-finite gradients; a non-finite loss gives non-finite grads
    if device is not None and device.type != "cpu":
        names = ", ".join(type(unwrap_optimizer(o)).__name__ for o in trainer.optimizers)
        rank_zero_warn(
            f"{_OWNER}: skipping a flagged step with {names} on {device.type} reads one flag per step "
            "(a host-device sync). HINT: use a fused optimizer (fused=True; OptimMixin does this on CUDA) for "
            "a sync-free skip" + (", or detect_spikes=False under fp16 AMP" if scaler is not None else "") + ".")
    return "host"


def check_interval(check_every_n_steps: int | None, skip_mode: str, device: torch.device,
                   log_every_n_steps: int | None, snapshot_every_n_steps: int | None) -> int:
    """Steps between host reads of the records: every step where the flag is read anyway, else logging's pace.

    Example:
        >>> check_interval(None, "found_inf", torch.device("cuda"), 50, 20)
        20
        >>> check_interval(None, "found_inf", torch.device("cpu"), 50, None)
        1
    """
    if check_every_n_steps is not None:
        every = check_every_n_steps
    elif skip_mode == "host" or device.type == "cpu":
        every = 1
    else:
        every = max(int(log_every_n_steps or 1), 1)
    if snapshot_every_n_steps is not None:
        every = min(every, snapshot_every_n_steps)
    return every


def install_found_inf_hooks(trainer: Any) -> list[Any]:
    """Register, on each optimizer, a post-step hook that removes the ``found_inf`` handed to it."""
    return [unwrap_optimizer(opt).register_step_post_hook(_clear_found_inf) for opt in trainer.optimizers]


def apply_skip(mode: str, opt: torch.optim.Optimizer, bad: Tensor, buffers: BufferGuard | None) -> bool | None:
    """Skip this step's update where ``bad`` is set; returns the flag when it was read on the host, else None."""
    if mode == "found_inf":
        opt.grad_scale = None  # type: ignore[attr-defined]
        opt.found_inf = bad.float()  # type: ignore[attr-defined]
        if buffers is not None:
            buffers.restore_where(bad)
        return None
    if mode == "scaler":
        if buffers is not None:
            buffers.restore_where(bad)
        return None
    flagged = bool(bad)  # CPU: a plain read; accelerator: the documented sync
    if flagged:
        for p in optimizer_params(opt):
            p.grad = None
        if buffers is not None:
            buffers.restore()
    return flagged


def _clear_found_inf(optimizer: Any, args: Any, kwargs: Any) -> None:
    for attr in ("found_inf", "grad_scale"):
        if hasattr(optimizer, attr):
            delattr(optimizer, attr)
