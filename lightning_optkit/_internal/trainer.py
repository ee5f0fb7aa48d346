"""What callbacks and probes read off, or send to, a Lightning trainer: the logging step, cadences,
the log folder and the loggers. Nothing here imports Lightning or torch.

Example:
    >>> due(9, 10), due(10, 10), due(3, None)
    (True, False, False)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["due", "log_metrics", "log_step", "resolve_log_dir"]


def log_step(trainer: Any) -> int:
    """The x-axis value Lightning's own ``self.log`` uses for this training step."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    value = getattr(loop, "_batches_that_stepped", None)
    return int(trainer.global_step if value is None else value)


def due(step: int, every: int | None) -> bool:
    """Whether the 0-based optimizer step ``step`` is on an ``every``-step cadence (the trainer's rule)."""
    return bool(every) and (step + 1) % int(every) == 0  # type: ignore[operator]


def log_metrics(trainer: Any, metrics: Mapping[str, float], step: int) -> None:
    """Send ``metrics`` to every logger of the trainer (loggers are rank-zero-only themselves)."""
    if not metrics:
        return
    for logger in getattr(trainer, "loggers", []):
        logger.log_metrics(dict(metrics), step=step)


def resolve_log_dir(trainer: Any) -> str:
    """The trainer's log directory; call it on every rank (it broadcasts)."""
    path = getattr(trainer, "log_dir", None) or getattr(trainer, "default_root_dir", None) or os.getcwd()
    return str(path)
