"""Capture and restore of the random number generators a probe or a range test may advance.

One place for the global generators (``random``, NumPy, torch CPU and every initialized CUDA device)
and for the private ``torch.Generator`` objects a DataLoader draws from; the LR finder's snapshot and
the diagnostics' probes both use it.

Example:
    >>> import torch
    >>> state = collect_rng_state()
    >>> a = torch.rand(2)
    >>> restore_rng_state(state)
    >>> torch.equal(a, torch.rand(2))
    True
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

__all__ = ["collect_rng_state", "loader_generators", "restore_rng_state"]


def collect_rng_state() -> dict[str, Any]:
    """The state of every global random number generator (python, numpy, torch CPU, CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`collect_rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def loader_generators(loaders: Iterable[Any]) -> list[torch.Generator]:
    """The ``torch.Generator`` objects DataLoaders draw from: their own, their samplers', their batch
    samplers' (each once)."""
    found: dict[int, torch.Generator] = {}
    for loader in loaders:
        batch_sampler = getattr(loader, "batch_sampler", None)
        candidates = [loader, getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)]
        for obj in candidates:
            gen = getattr(obj, "generator", None)
            if isinstance(gen, torch.Generator):
                found[id(gen)] = gen
    return list(found.values())
