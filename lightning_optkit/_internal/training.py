"""The length of training in optimizer steps, computed in one place for the mixin, the doctor and the finder.

Lightning's ``estimated_stepping_batches`` applies the first epoch's gradient accumulation to every
epoch; under a ``GradientAccumulationScheduler`` that is wrong. :func:`optimizer_steps` counts each
epoch with its own accumulation, as the trainer will run it. Lightning is imported only when a
trainer is asked about.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .errors import ConfigError

__all__ = ["accumulation_at", "accumulation_schedule", "optimizer_steps"]


def accumulation_schedule(trainer: Any) -> Callable[[int], int]:
    """``epoch -> batches accumulated per optimizer step``: a ``GradientAccumulationScheduler``'s, else the trainer's."""
    from lightning.pytorch.callbacks import GradientAccumulationScheduler

    for cb in getattr(trainer, "callbacks", []):
        if isinstance(cb, GradientAccumulationScheduler):
            return cb.get_accumulate_grad_batches
    fixed = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
    return lambda epoch: fixed


def accumulation_at(trainer: Any, epoch: int) -> int:
    """The batches accumulated per optimizer step in ``epoch`` (at least 1)."""
    return max(int(accumulation_schedule(trainer)(int(epoch))), 1)


def optimizer_steps(trainer: Any) -> tuple[int, tuple[int, ...]]:
    """``(total, per_epoch)``: optimizer steps of the whole run and of each epoch, as the trainer will run them.

    Counts optimizer steps, not batches: ``ceil(batches / accumulation)`` per epoch (Lightning steps
    on the last, partial accumulation of an epoch), with the accumulation of each epoch taken from a
    ``GradientAccumulationScheduler`` when there is one, capped by ``max_steps``. Under DDP the
    batches are per rank, as the optimizer steps are. ``per_epoch`` is empty for a loader without a
    length (the run is ``max_steps`` long).

    Raises:
        ConfigError: when the length cannot be known (infinite loader without ``max_steps``,
            ``max_time`` only, no training batch), naming the trainer argument to set.
    """
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()
    batches = trainer.num_training_batches
    max_steps = int(trainer.max_steps if trainer.max_steps is not None else -1)
    max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
    if batches == 0:
        raise ConfigError("trainer.limit_train_batches", getattr(trainer, "limit_train_batches", 0),
                          "a training loader with at least one batch")
    if batches == float("inf") or not math.isfinite(batches):
        if max_steps > 0:
            return max_steps, ()
        raise ConfigError("trainer.max_steps", max_steps,
                          "a positive max_steps: the training loader has no length, so a schedule cannot know it",
                          hint="Trainer(max_steps=...) or give the loader a __len__")
    if max_epochs in (-1, None) and max_steps <= 0:
        raise ConfigError("trainer.max_epochs", max_epochs,
                          "max_epochs or max_steps: training with max_time only has no length a schedule can use",
                          hint="set Trainer(max_steps=...) or Trainer(max_epochs=...)")
    acc = accumulation_schedule(trainer)
    per: list[int] = []
    total, epoch = 0, 0
    while max_epochs == -1 or epoch < max_epochs:
        steps = math.ceil(batches / max(int(acc(epoch)), 1))
        if max_steps > 0 and total + steps >= max_steps:
            per.append(max_steps - total)
            total = max_steps
            break
        per.append(steps)
        total += steps
        epoch += 1
    return total, tuple(per)
