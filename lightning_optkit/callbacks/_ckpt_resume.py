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

import contextlib
import warnings
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from .._internal.rng import collect_rng_state, restore_rng_state

__all__ = ["ResumeHooks", "fast_forward", "stateful_loaders"]

# Lightning warns that a mid-epoch resume of a plain DataLoader is unreliable; with the fast-forward
# below it is exact, so the warning is silenced between on_train_start and the first batch of a resume.
_LIGHTNING_RESUME_WARNING = r"You're resuming from a checkpoint that ended before the epoch ended"


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


class _FirstFetch:
    """Stands in for the fit loop's data iterator until the first batch of a resumed run is fetched."""

    def __init__(self, callback: ResumeHooks, trainer: Any, inner: Any) -> None:
        self.callback, self.trainer, self.inner = callback, trainer, inner

    def __iter__(self) -> _FirstFetch:
        return self

    def __next__(self) -> Any:
        fetcher = self.trainer.fit_loop._data_fetcher
        if fetcher is not None and fetcher.iterator is self:
            fetcher.iterator = self.inner
        self.callback._on_first_fetch(self.trainer)
        return next(self.inner)


class ResumeHooks:
    """The resuming half of :class:`~lightning_optkit.callbacks.Checkpoint`: random states and the loader position.

    A mixin: ``Checkpoint`` holds the state (``restore_rng``, ``_pending`` from ``load_state_dict``,
    the epoch-start random states) and calls :meth:`_prepare_resume` from ``on_train_start``; the
    hooks below replay the start of the resumed epoch, fast-forward the loader to the saved batch
    and restore the random states of the save.
    """

    restore_rng: bool
    _pending: dict[str, Any] | None
    _epoch_start_seen: bool
    _rng_epoch: dict[str, Any] | None
    _rng_epoch_index: int
    _plateau_epoch: int
    _warning_filter: Any

    def _prepare_resume(self, trainer: Any) -> None:
        """On train start: wrap the data iterator to act at the first fetch, note a plateau step to take."""
        self._epoch_start_seen = False
        if self._pending is None and trainer.ckpt_path:
            self._pending = {}  # a checkpoint without our state: still fast-forward the loader
        fetcher = trainer.fit_loop._data_fetcher
        if self._pending is not None and fetcher is not None and fetcher.iterator is not None:
            fetcher.iterator = _FirstFetch(self, trainer, fetcher.iterator)
            if not stateful_loaders(trainer.fit_loop._combined_loader):
                warnings.filterwarnings("ignore", message=_LIGHTNING_RESUME_WARNING)
                self._warning_filter = warnings.filters[0]
        # Resumed before the last batch of an epoch, Lightning will end that epoch "restarting" and skip
        # its epoch-interval plateau step (fit_loop.on_advance_end); remember to take it ourselves.
        fit_loop = trainer.fit_loop
        self._plateau_epoch = -1
        if (trainer.ckpt_path and fit_loop.restarted_mid_epoch
                and fit_loop.epoch_loop.batch_progress.current.processed < trainer.num_training_batches):
            self._plateau_epoch = trainer.current_epoch

    def _unsilence(self) -> None:
        if self._warning_filter is not None:
            with contextlib.suppress(ValueError):
                warnings.filters.remove(self._warning_filter)
            self._warning_filter = None

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._unsilence()
        self._epoch_start_seen = True
        pending, self._pending = self._pending, None
        if pending:  # resumed at an epoch boundary: continue from the random states of the save
            state = self._rank_state(trainer, pending, "save")
            if self.restore_rng and state is not None:
                restore_rng_state(state)
        if self.restore_rng:
            self._rng_epoch = collect_rng_state(portable=True)
            self._rng_epoch_index = trainer.current_epoch
            fit_loop = trainer.fit_loop
            lightning_iterates = (trainer.current_epoch > 0 and not fit_loop.is_resuming
                                  and not fit_loop.epoch_loop.restarting)
            if not lightning_iterates:
                # this epoch's iterator was made before this hook (first epoch of a fit, or of a
                # resumed one): make it again from the captured state, as Lightning does otherwise
                fetcher = fit_loop._data_fetcher
                if fetcher is not None and fetcher._combined_loader is not None:
                    iter(fetcher)

    def _rank_state(self, trainer: Any, pending: dict[str, Any], key: str) -> dict[str, Any] | None:
        rng = pending.get("rng")
        if not rng or not rng.get(key):
            return None
        states = rng[key]
        if rng.get("world_size") != trainer.world_size or len(states) != trainer.world_size:
            rank_zero_warn("Checkpoint: the checkpoint's random states are from a run with "
                           f"{rng.get('world_size')} processes, this run has {trainer.world_size}; they are not "
                           "restored, so the resumed run is not an exact continuation.")
            return None
        return states[trainer.global_rank]

    def _on_first_fetch(self, trainer: Any) -> None:
        self._unsilence()
        pending, self._pending = self._pending, None
        if pending is None or self._epoch_start_seen:
            return
        fit_loop = trainer.fit_loop
        combined = fit_loop._combined_loader
        done = fit_loop.epoch_loop.batch_progress.current.ready
        save_state = self._rank_state(trainer, pending, "save") if self.restore_rng else None
        if done == 0:
            # a new epoch that Lightning started without on_train_epoch_start (restart after the last batch)
            if save_state is not None:
                restore_rng_state(save_state)
                self._rng_epoch, self._rng_epoch_index = save_state, trainer.current_epoch
                iter(combined)
            return
        if stateful_loaders(combined):
            if save_state is not None:
                restore_rng_state(save_state)
            return
        epoch_state = self._rank_state(trainer, pending, "epoch") if save_state is not None else None
        if epoch_state is not None and pending["rng"].get("epoch_index") == trainer.current_epoch:
            restore_rng_state(epoch_state)
            self._rng_epoch, self._rng_epoch_index = epoch_state, trainer.current_epoch
            iter(combined)  # the same seeds and sampler permutation as when the epoch began
        try:
            how = fast_forward(combined, done)
        except StopIteration:
            rank_zero_warn(f"Checkpoint: could not skip {done} batches of epoch {trainer.current_epoch}: the "
                           "training loader is shorter than when the checkpoint was written.")
            return
        if save_state is not None:
            restore_rng_state(save_state)
        rank_zero_info(f"Checkpoint: resumed in epoch {trainer.current_epoch} after batch {done}; skipped the "
                       f"{done} batches already trained on ({'by sampler index' if how == 'indices' else 'by loading them'}).")

    def _take_skipped_plateau_step(self, trainer: Any) -> None:
        """Step plateau schedulers at the end of the epoch a run resumed in, where Lightning skips them.

        Runs after every other ``on_train_epoch_end`` hook (checkpoint callbacks run last) and after a
        save at this point, whose copy of the scheduler state already includes this step (see
        :func:`lightning_optkit.mixin.settle_pending_plateau_steps`).
        """
        fit_loop = trainer.fit_loop
        if trainer.current_epoch != self._plateau_epoch:
            return
        self._plateau_epoch = -1
        if fit_loop.restarting and fit_loop.epoch_loop._num_ready_batches_reached():
            fit_loop.epoch_loop.update_lr_schedulers("epoch", update_plateau_schedulers=True)

    # -- random states written into each checkpoint ---------------------------------------------------
    def _gather_rng(self, trainer: Any) -> dict[str, Any]:
        local = [collect_rng_state(portable=True), self._rng_epoch]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, local)
        else:
            gathered = [local]
        epochs = [g[1] for g in gathered]
        return {"world_size": len(gathered), "save": [g[0] for g in gathered],
                "epoch": epochs if all(e is not None for e in epochs) else None,
                "epoch_index": self._rng_epoch_index}

    def _local_rng(self) -> dict[str, Any]:
        """This rank's states only: for a save that is not ours (``trainer.save_checkpoint``, an emergency)."""
        return {"world_size": 1, "save": [collect_rng_state(portable=True)],
                "epoch": [self._rng_epoch] if self._rng_epoch is not None else None,
                "epoch_index": self._rng_epoch_index}
