"""Exact save and restore of what a probe may disturb: parameters, buffers, modes, RNG states.

The probes in this package evaluate the model many times (Hessian-vector products, perturbed
weights); :func:`preserved` guarantees that the model and every random number generator are left
bit-for-bit as they were, whether the probe returns or raises.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["ModelSnapshot", "preserved", "restore", "rng_states", "set_rng_states", "snapshot"]


def rng_states() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and initialized CUDA) global generators."""
    states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                              "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Put back what :func:`rng_states` captured."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


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
    return ModelSnapshot(params, buffers, [(m, m.training) for m in model.modules()], rng_states())


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
    set_rng_states(snap.rng)


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
