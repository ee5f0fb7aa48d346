"""Capture and restore of the random number generators a probe or a range test may advance.

One place for the global generators (``random``, NumPy, torch CPU and every initialized CUDA device)
and for the private ``torch.Generator`` objects a DataLoader draws from; the LR finder's snapshot,
the diagnostics' probes and ``Checkpoint``'s exact resume (in the portable form) all use it.

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


def collect_rng_state(*, portable: bool = False) -> dict[str, Any]:
    """The state of every global random number generator (python, numpy, torch CPU, CUDA).

    ``portable=True`` gives only values ``torch.load(weights_only=True)`` accepts (tensors, lists,
    numbers, strings), for states stored in checkpoints; :func:`restore_rng_state` takes either form.

    Example:
        >>> state = collect_rng_state(portable=True)
        >>> type(state["python"]).__name__, sorted(state["numpy"])
        ('list', ['cached', 'has_gauss', 'keys', 'kind', 'pos'])
    """
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if portable:
        version, internal, gauss = state["python"]
        state["python"] = [int(version), list(internal), gauss]
        kind, keys, pos, has_gauss, cached = state["numpy"]
        state["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached": float(cached)}
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`collect_rng_state` returned (either form; a missing numpy or CUDA entry is skipped)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state.get("numpy")
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["cached"])
    if numpy_state is not None:
        np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
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
