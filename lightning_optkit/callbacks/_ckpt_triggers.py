"""Checkpoint's triggers: facts about the fit loop that decide when a save happens.

Lightning keeps these facts in private loop state; they are read here, in one place, with a
fallback where a Lightning version lacks the private helper.
"""

from __future__ import annotations

from typing import Any

__all__ = ["epoch_save_at_train_end", "optimizer_stepped", "validation_follows"]


def epoch_save_at_train_end(trainer: Any, setting: bool | None) -> bool:
    """Whether epoch saves happen at the end of the training epoch (else after validation).

    ``setting`` is ``save_on_train_epoch_end``; None decides as Lightning does: after the epoch
    when validation runs once per epoch at its end, or not at all.
    """
    if setting is not None:
        return setting
    if getattr(trainer, "_val_check_time_interval", None) is not None:
        return False
    if trainer.check_val_every_n_epoch != 1:
        return False
    nval = trainer.num_val_batches
    nval = sum(nval) if isinstance(nval, list) else nval
    if not trainer.enable_validation or nval == 0:
        return True
    return trainer.val_check_interval == 1.0


def validation_follows(trainer: Any) -> bool:
    """Whether validation runs after the current training batch."""
    epoch_loop = trainer.fit_loop.epoch_loop
    try:
        return bool(epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher))
    except Exception:  # a Lightning without this private helper: fall back to the epoch's last batch
        return bool(trainer.enable_validation and epoch_loop.batch_progress.is_last_batch)


def optimizer_stepped(trainer: Any) -> bool:
    """Whether the batch that just ended took an optimizer step (not an accumulation micro-batch)."""
    try:
        return not trainer.fit_loop.epoch_loop._should_accumulate()
    except Exception:
        return True
