"""Step a run's schedulers as Lightning does and record every parameter group's LR per step.

What ``optkit schedule`` draws: :func:`simulate` takes built optimizers and the scheduler entries
of :func:`~lightning_optkit.schedules.build_scheduler` and returns one :class:`LRTrace` per group.
Nothing is trained and nothing is plotted here (the plot lives with the command).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch.optim.lr_scheduler import ReduceLROnPlateau

from ..config import TrainingLength

__all__ = ["PLATEAU_METRIC", "LRTrace", "simulate"]

#: The metric a plateau scheduler is fed at every epoch end (constant: it never improves).
PLATEAU_METRIC = 1.0


@dataclass
class LRTrace:
    """The LR of one parameter group at every optimizer step (what :func:`simulate` returns).

    ``peak_step`` is the first step at the peak: where a warm-up ends (0 when there is none).

    Example:
        >>> t = LRTrace("lr-SGD", [0.0, 0.05, 0.1, 0.08])
        >>> t.peak, t.peak_step, t.lrs[-1]
        (0.1, 2, 0.08)
    """

    label: str
    lrs: list[float] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return max(self.lrs)

    @property
    def peak_step(self) -> int:
        top = self.peak
        return next(i for i, v in enumerate(self.lrs) if v >= top * (1 - 1e-9))



def _step(entry: dict[str, Any]) -> None:
    """Step one scheduler entry (a plateau scheduler gets :data:`PLATEAU_METRIC`)."""
    sched = entry["scheduler"]
    if entry.get("reduce_on_plateau") or isinstance(sched, ReduceLROnPlateau):
        sched.step(PLATEAU_METRIC)
    else:
        sched.step()


def simulate(optimizers: Sequence[Any], schedulers: Sequence[dict[str, Any]], length: TrainingLength) -> list[LRTrace]:
    """Step the schedulers as Lightning does and record every group's LR at each optimizer step.

    Per optimizer step: the LR in use is recorded, then the ``interval: step`` schedulers step; at the
    end of each epoch the ``interval: epoch`` ones step (a plateau scheduler is fed a constant metric).

    Example:
        >>> import torch
        >>> from lightning_optkit.config import load_config
        >>> from lightning_optkit.schedules import build_scheduler
        >>> cfg = load_config({"optimizer": {"name": "sgd", "lr": 0.1},
        ...                    "scheduler": {"name": "warmup_cosine", "warmup": 2}})
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> length = TrainingLength(6, (3, 3))
        >>> [round(v, 3) for v in simulate([opt], build_scheduler(cfg.blocks()[0][1], opt, length), length)[0].lrs]
        [0.0, 0.05, 0.1, 0.075, 0.025, 0.0]
    """
    traces: list[tuple[Any, dict[str, Any], LRTrace]] = []
    for optimizer in optimizers:
        groups = optimizer.param_groups
        label = getattr(optimizer, "optkit_label", f"lr-{type(optimizer).__name__}")
        for k, group in enumerate(groups):
            name = group.get("name") or (f"pg{k + 1}" if len(groups) > 1 else "")
            traces.append((optimizer, group, LRTrace(f"{label}/{name}" if name else label)))
    by_interval: dict[str, list[dict[str, Any]]] = {"step": [], "epoch": []}
    for entry in schedulers:
        by_interval[entry.get("interval", "epoch")].append(entry)
    epochs = length.steps_per_epoch or (length.total_steps,)
    step = 0
    with warnings.catch_warnings():
        # no optimizer.step() here: nothing is trained, so torch's order check does not apply
        warnings.filterwarnings("ignore", message=r".*lr_scheduler\.step\(\)` before `optimizer\.step\(\)")
        for epoch, steps in enumerate(epochs):
            for batch in range(steps):
                if step >= length.total_steps:
                    break
                for _opt, group, trace in traces:
                    trace.lrs.append(float(group["lr"]))
                for entry in by_interval["step"]:
                    if (batch + 1) % int(entry.get("frequency", 1) or 1) == 0:
                        _step(entry)
                step += 1
            for entry in by_interval["epoch"]:
                if (epoch + 1) % int(entry.get("frequency", 1) or 1) == 0:
                    _step(entry)
    return [t for _o, _g, t in traces]

