"""The range test's settings: :class:`RangeTestSettings` (validated when built) and the LR of each step."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .._internal.checks import in_interval
from ..config import ConfigError, did_you_mean
from ._rules import DEFAULT_RULE, check_rule

__all__ = ["AUTO_VAL_BATCHES", "RangeTestSettings", "sweep_lrs"]

_MODES = ("exponential", "linear")
_SNAPSHOTS = ("memory", "disk")
_MAX_STEPS = 10_000
#: held-out batches per step of ``val_batches="auto"`` when the run has validation data (the number
#: ``benchmarks/lr_finder_quality.py`` measures; each step costs ~30-45 % more on its tasks)
AUTO_VAL_BATCHES = 2
_VAL_EXPECTED = 'a whole number of held-out batches >= 0 (0: no held-out loss), or "auto"'


def _number(path: str, value: Any, *, lo: float | None = None, lo_open: bool = True, integer: bool = False,
            expected: str) -> None:
    if not in_interval(value, lo, lo_open=lo_open, integer=integer):
        raise ConfigError(path, value, expected)


@dataclass(frozen=True)
class RangeTestSettings:
    """The arguments of one LR range test, validated when built.

    Attributes:
        min_lr: the first LR of the sweep (> 0).
        max_lr: the last LR of the sweep (> ``min_lr``).
        num_steps: optimizer steps of the test (at most 10000; 100 is plenty).
        mode: ``"exponential"`` (evenly spaced in log-LR, the default) or ``"linear"``.
        rule: the suggestion rule whose LR is applied (see :data:`RULES`).
        val_batches: held-out batches (from the validation loader) whose loss is measured after every
            step, for Smith's look at the validation loss; 0 to skip; ``"auto"`` (the default):
            :data:`AUTO_VAL_BATCHES` when the run has validation data and automatic optimization, else 0.
        divergence_threshold: stop when the smoothed loss exceeds ``threshold x`` its best value
            (``None`` to never stop before ``max_lr``; a non-finite loss always stops).
        beta: smoothing factor of the bias-corrected moving average (0 = no smoothing).
        schedule_aware: scale the recommendation so that the schedule's mean LR ahead equals the
            suggestion (see :mod:`._apply`); off: the peak is the suggestion.
        optimizer: index of the optimizer to test when ``configure_optimizers`` returns several.
        snapshot: ``"memory"`` (copies of the tensors in memory) or ``"disk"`` (one temporary file).
        snapshot_dir: folder of the on-disk copy (default: the trainer's log dir or root dir).

    Example:
        >>> RangeTestSettings(min_lr=1e-6, max_lr=1.0, num_steps=50).mode
        'exponential'
        >>> RangeTestSettings(min_lr=1.0, max_lr=0.1)
        Traceback (most recent call last):
        ...
        lightning_optkit.config.ConfigError: max_lr: got 0.1; expected a finite number > min_lr (1).
    """

    min_lr: float = 1e-7
    max_lr: float = 10.0
    num_steps: int = 100
    mode: str = "exponential"
    rule: str = DEFAULT_RULE
    val_batches: int | str = "auto"
    divergence_threshold: float | None = 4.0
    beta: float = 0.98
    schedule_aware: bool = True
    optimizer: int | None = None
    snapshot: str = "memory"
    snapshot_dir: str | None = None

    def __post_init__(self) -> None:
        _number("min_lr", self.min_lr, lo=0.0, expected="a finite number > 0")
        _number("max_lr", self.max_lr, lo=float(self.min_lr), expected=f"a finite number > min_lr ({self.min_lr:g})")
        _number("num_steps", self.num_steps, lo=2, lo_open=False, integer=True,
                expected=f"an integer number of optimizer steps in [2, {_MAX_STEPS}]")
        if self.num_steps > _MAX_STEPS:
            raise ConfigError("num_steps", self.num_steps, f"an integer number of optimizer steps in [2, {_MAX_STEPS}]",
                              hint="a range test needs ~100 steps; more only re-trains the model")
        object.__setattr__(self, "num_steps", int(self.num_steps))
        mode = self.mode.lower() if isinstance(self.mode, str) else self.mode
        if mode not in _MODES:
            raise ConfigError("mode", self.mode, "one of " + ", ".join(_MODES), suggestions=did_you_mean(self.mode, _MODES))
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "rule", check_rule(self.rule))
        if isinstance(self.val_batches, str) and self.val_batches.lower() == "auto":
            object.__setattr__(self, "val_batches", "auto")
        else:
            _number("val_batches", self.val_batches, lo=0, lo_open=False, integer=True, expected=_VAL_EXPECTED)
            object.__setattr__(self, "val_batches", int(self.val_batches))
        if self.divergence_threshold is not None:
            _number("divergence_threshold", self.divergence_threshold, lo=1.0,
                    expected="a finite number > 1 (stop when the loss exceeds threshold x its best), or None")
        _number("beta", self.beta, lo=0.0, lo_open=False, expected="a number in [0, 1) (0: no smoothing)")
        if self.beta >= 1:
            raise ConfigError("beta", self.beta, "a number in [0, 1) (0: no smoothing)")
        if not isinstance(self.schedule_aware, bool):
            raise ConfigError("schedule_aware", self.schedule_aware, "true or false")
        if self.optimizer is not None:
            _number("optimizer", self.optimizer, lo=0, lo_open=False, integer=True,
                    expected="the index (>= 0) of the optimizer to test, or None")
        snap = self.snapshot.lower() if isinstance(self.snapshot, str) else self.snapshot
        if snap not in _SNAPSHOTS:
            raise ConfigError("snapshot", self.snapshot, "one of " + ", ".join(_SNAPSHOTS),
                              suggestions=did_you_mean(self.snapshot, _SNAPSHOTS))
        object.__setattr__(self, "snapshot", snap)
        if self.snapshot_dir is not None and not isinstance(self.snapshot_dir, (str, os.PathLike)):
            raise ConfigError("snapshot_dir", self.snapshot_dir, "a folder path or None")


def sweep_lrs(settings: RangeTestSettings) -> list[float]:
    """The LR of each step: ``num_steps`` values from ``min_lr`` to ``max_lr``, both included.

    Example:
        >>> [round(v, 6) for v in sweep_lrs(RangeTestSettings(min_lr=1e-3, max_lr=1e-1, num_steps=3))]
        [0.001, 0.01, 0.1]
    """
    n, lo, hi = settings.num_steps, settings.min_lr, settings.max_lr
    if settings.mode == "linear":
        return [lo + (hi - lo) * k / (n - 1) for k in range(n)]
    return [lo * (hi / lo) ** (k / (n - 1)) for k in range(n)]
