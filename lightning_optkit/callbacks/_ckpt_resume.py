"""Exact resume: random-number-generator states and fast-forwarding the training loader mid-epoch.

Lightning restores weights, optimizers, schedulers, loop counters and callback states. Two things
it leaves out decide whether a resumed run repeats the uninterrupted one bit for bit:

* **Random states.** Dropout, ``RandomSampler`` (``shuffle=True``) and the loader's worker seeds
  draw from the global generators. They are not in a Lightning checkpoint.
* **The position in the epoch.** A plain ``DataLoader`` has no state; resumed mid-epoch, Lightning
  starts it from the beginning of the epoch again (and warns), so the resumed epoch sees the first
  batches twice and never sees the last ones.

:class:`~lightning_optkit.callbacks.Checkpoint` stores, per rank, the random states at the save
and at the start of the epoch (captured just before the epoch's loader iterator is created), and
on resume replays the epoch start: it restores the epoch-start states, re-creates the loader
iterator (which draws the same seeds, so ``RandomSampler`` yields the same permutation), skips the
batches already trained on (by index for a map-style dataset in the main process, without loading
them; otherwise by loading and dropping them), then restores the states of the save.
"""

from __future__ import annotations

import random
from typing import Any

import torch

__all__ = ["capture_rng", "fast_forward", "restore_rng", "stateful_loaders"]


def capture_rng() -> dict[str, Any]:
    """The global random states (torch CPU and CUDA, numpy, python), as weights_only-loadable values."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _python_state()}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached": float(cached)}
    except ImportError:  # pragma: no cover - numpy ships with torch wheels
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [int(version), list(internal), gauss]


def restore_rng(state: dict[str, Any]) -> None:
    """Set the global random states from :func:`capture_rng`'s result."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state.get("numpy")
    if numpy_state is not None:
        import numpy as np

        np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                             numpy_state["has_gauss"], numpy_state["cached"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def stateful_loaders(combined_loader: Any) -> bool:
    """Whether any training loader restores its own position (``state_dict``/``load_state_dict``)."""
    return any(callable(getattr(dl, "state_dict", None)) and callable(getattr(dl, "load_state_dict", None))
               for dl in getattr(combined_loader, "flattened", []))


def fast_forward(combined_loader: Any, batches: int) -> str:
    """Advance a freshly created training iterator by ``batches`` batches; returns how.

    ``"indices"``: the single loader is map-style and loads in the main process, so the sampler is
    advanced without loading any data. ``"batches"``: batches were loaded and dropped (worker
    processes, iterable datasets, several loaders).
    """
    if batches <= 0:
        return "none"
    from torch.utils.data.dataloader import _DatasetKind, _SingleProcessDataLoaderIter

    mode_iter = getattr(combined_loader, "_iterator", None)
    iterators = getattr(mode_iter, "iterators", None)
    if (
        iterators is not None
        and len(iterators) == 1
        and isinstance(iterators[0], _SingleProcessDataLoaderIter)
        and iterators[0]._dataset_kind == _DatasetKind.Map
    ):
        it = iterators[0]
        for _ in range(batches):
            next(it._sampler_iter)
        it._num_yielded += batches
        mode_iter._idx += batches
        return "indices"
    for _ in range(batches):
        next(combined_loader)
    return "batches"
