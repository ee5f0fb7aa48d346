"""Exact save and restore of what a probe may disturb: parameters, buffers, modes, RNG states.

The probes in this package evaluate the model many times (Hessian-vector products, perturbed
weights); :func:`preserved` guarantees that the model and every random number generator are left
bit-for-bit as they were, whether the probe returns or raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._internal.rng import collect_rng_state, restore_rng_state

__all__ = ["ModelSnapshot", "preserved", "restore", "snapshot"]


@dataclass
class ModelSnapshot:
    """Copies of a module's parameters and buffers, its modules' modes and flags, and the RNG states."""

    params: list[tuple[torch.Tensor, torch.Tensor, bool]]
    buffers: list[tuple[torch.Tensor, torch.Tensor]]
    modes: list[tuple[nn.Module, bool]]
    rng: dict[str, Any]


def snapshot(model: nn.Module) -> ModelSnapshot:
    """Capture ``model`` (values copied, so later in-place changes do not reach the snapshot)."""
    with torch.no_grad():
        params = [(p, p.detach().clone(), p.requires_grad) for p in model.parameters()]
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
    return ModelSnapshot(params, buffers, [(m, m.training) for m in model.modules()], collect_rng_state())


def restore(snap: ModelSnapshot) -> None:
    """Write the snapshot back in place (bitwise), including modes, ``requires_grad`` flags and RNGs."""
    with torch.no_grad():
        for p, saved, flag in snap.params:
            p.copy_(saved)
            p.requires_grad_(flag)
        for b, saved in snap.buffers:
            b.copy_(saved)
    for module, training in snap.modes:
        module.training = training
    restore_rng_state(snap.rng)


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[ModelSnapshot]:
    """Run a block and restore ``model`` and the RNG states afterwards, even on an exception.

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> before = net.weight.clone()
        >>> with preserved(net):
        ...     _ = net.weight.data.add_(1.0); _ = torch.rand(3)
        >>> torch.equal(net.weight, before)
        True
    """
    snap = snapshot(model)
    try:
        yield snap
    finally:
        restore(snap)
