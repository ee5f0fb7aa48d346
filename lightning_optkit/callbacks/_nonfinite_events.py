"""NonFiniteGuard's events: the record of one flagged step, the error it raises, and reading the step records.

The guard keeps one row per optimizer step on the device (columns below); a check reads the rows
since the last one in a single host read and turns the flagged ones into :class:`GuardEvent`\\ s with
:func:`events_from_rows`, a pure function of the rows and the counters it updates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .._internal.text import fmt
from ._nonfinite_detect import BAD, GNORM, GRAD_BAD, LOSS, MEDIAN, SPIKE, batch_finite, where_nonfinite

__all__ = ["GuardEvent", "NonFiniteError", "events_from_rows", "lead_event"]


class NonFiniteError(RuntimeError):
    """Raised by ``NonFiniteGuard(policy="raise")``; ``event`` is the :class:`GuardEvent` that caused it.

    Example:
        >>> err = NonFiniteError("step 3: nonfinite loss", GuardEvent(3, 0, 3, ["nonfinite_loss"], float("nan"), 1.0))
        >>> err.event.step, isinstance(err, RuntimeError)
        (3, True)
    """

    def __init__(self, message: str, event: GuardEvent | None = None) -> None:
        super().__init__(message)
        self.event = event


@dataclass
class GuardEvent:
    """One flagged optimizer step, as written to the JSON event log.

    ``kinds`` holds any of ``nonfinite_loss``, ``nonfinite_grad``, ``loss_spike`` and
    ``nonfinite_params``; ``actions`` what the guard did (``skip`` always, then ``reduce_lr``,
    ``rollback``, ``restore``, ``stop`` or ``raise``).

    Example:
        >>> GuardEvent(7, 0, 7, ["loss_spike"], loss=9.5, grad_norm=3.0, loss_median=1.2,
        ...            actions=["skip"]).message()
        'step 7 (epoch 0, batch 7): loss spike; loss=9.5, grad_norm=3 (running median 1.2) -> skip'
    """

    step: int
    epoch: int
    batch_idx: int
    kinds: list[str]
    loss: float
    grad_norm: float
    loss_median: float | None = None
    where: str = ""
    actions: list[str] = field(default_factory=list)
    detail: str = ""

    def message(self) -> str:
        what = ", ".join(k.replace("_", " ") for k in self.kinds)
        text = (f"step {self.step} (epoch {self.epoch}, batch {self.batch_idx}): {what}; loss={fmt(self.loss)}, "
                f"grad_norm={fmt(self.grad_norm)}")
        if self.loss_median is not None and "loss_spike" in self.kinds:
            text += f" (running median {fmt(self.loss_median)})"
        if self.where:
            text += f"; {self.where}"
        if self.actions:
            text += f" -> {', '.join(self.actions)}"
        if self.detail:
            text += f". {self.detail}"
        return text


def events_from_rows(
    meta: Sequence[tuple[int, int, int]],
    rows: Sequence[Sequence[float]],
    names_per_row: Sequence[tuple[list[str], Tensor | None]],
    consecutive: int,
    restored_in_run: bool,
) -> tuple[list[GuardEvent], int, bool]:
    """The events of the flagged rows, and the updated count of flagged steps in a row and "restored" flag.

    A healthy step resets both counters; each flagged one adds to ``consecutive``.

    Example:
        >>> nan = float("nan")
        >>> rows = [[1.0, 2.0, nan, 0.0, 0.0, 0.0], [nan, 3.0, nan, 0.0, 1.0, 0.0]]
        >>> events, consecutive, restored = events_from_rows([(4, 0, 4), (5, 0, 5)], rows, [], 0, False)
        >>> [(e.step, e.kinds) for e in events], consecutive
        ([(5, ['nonfinite_loss'])], 1)
    """
    names_per_row = list(names_per_row) + [([], None)] * (len(meta) - len(names_per_row))  # rows from a checkpoint
    new: list[GuardEvent] = []
    for (step, epoch, batch_idx), row, (names, norms) in zip(meta, rows, names_per_row):
        if row[BAD] < 0.5:
            consecutive = 0
            restored_in_run = False
            continue
        consecutive += 1
        new.append(_event(step, epoch, batch_idx, row, names, norms))
    return new, consecutive, restored_in_run


def lead_event(new: list[GuardEvent], *, step: int, epoch: int, params_ok: bool, bad_param: str, batch: Any
               ) -> tuple[GuardEvent, list[GuardEvent]]:
    """The event the actions are described on, and the events to record.

    The lead event is the last new one, or a ``remote`` one when only another rank flagged a step.
    It names non-finite parameters, and a non-finite input batch when the current step's loss is
    non-finite (``batch`` is the current step's batch, ``step`` its index).
    """
    event = new[-1] if new else GuardEvent(step=step, epoch=epoch, batch_idx=-1, kinds=["remote"], loss=math.nan,
                                           grad_norm=math.nan)
    if not new:
        new = [event]
    if not params_ok:
        event.kinds.append("nonfinite_params")
        event.where = bad_param
    if batch is not None and event.step == step and "nonfinite_loss" in event.kinds and not batch_finite(batch):
        event.where = (event.where + "; " if event.where else "") + "non-finite values in the input batch"
    return event, new


def _event(step: int, epoch: int, batch_idx: int, row: Sequence[float], names: list[str],
           norms: Any) -> GuardEvent:
    loss_bad = not math.isfinite(row[LOSS])
    kinds = [k for k, flag in (("nonfinite_loss", loss_bad), ("nonfinite_grad", row[GRAD_BAD] > 0.5),
                               ("loss_spike", row[SPIKE] > 0.5 and not loss_bad)) if flag]
    event = GuardEvent(step=step, epoch=epoch, batch_idx=batch_idx, kinds=kinds, loss=row[LOSS],
                       grad_norm=row[GNORM], loss_median=None if math.isnan(row[MEDIAN]) else row[MEDIAN],
                       actions=["skip"])
    event.where = where_nonfinite(loss_bad, row[GRAD_BAD] > 0.5, names, norms)
    return event
