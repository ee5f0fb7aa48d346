"""How far to trust a range-test curve: the recommended interval, a confidence, and what to do when
the curve is weak (too flat, too noisy, or rising from its first steps).

The interval's width was calibrated on the development half of ``benchmarks/lr_finder_quality.py``
(``--tune`` re-derives it): in the units of the LR to configure (:func:`peak_interval`), it holds the
oracle's best grid LR (within half a grid step) on 39/45 development range tests at a median width of
0.60 decades; on the held-out half 24/45, mostly missing where the best LR lies above the safety
margin that caps the interval's top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._rules import (
    FAST_BETA,
    MARGIN,
    RISE,
    Curve,
    _step_noise,
    agreeing,
    divergence_index,
    evidence,
    noise_level,
    smooth,
)

__all__ = ["INTERVAL_WIDEN", "Assessment", "assess", "diverged_at_once", "peak_interval"]

#: the recommended interval spans the (agreeing) evidence and the suggestion widened by this factor on
#: each side, its top at most the margin LR. Chosen by ``benchmarks/lr_finder_quality.py --tune`` on 46 tasks
#: (round 2): one point per range test whose interval holds the best grid LR (+- half a grid step) and one
#: per range test whose every LR scores within 0.1; 1.5 scores 90 + 89 of 138 (median width 0.51 decades),
#: 2 scores 95 + 71, 1.25 scores 83 + 95
INTERVAL_WIDEN = 1.5


@dataclass(frozen=True)
class Assessment:
    """How far to trust a curve: a recommended interval, a confidence, and what to do when it is weak.

    Attributes:
        status: ``"ok"``, ``"flat"`` (the loss barely moved against its noise), ``"noisy"`` (it moved,
            but not by much more than its noise) or ``"diverged_at_once"`` (no descent before the
            loss rose: there is no suggestion).
        interval: ``(low, high)``, constant LRs: the span of the agreeing evidence (``steepest / 3``,
            ``minimum``, :func:`agreeing`) and the suggestion, widened by :data:`INTERVAL_WIDEN` on each
            side, its top held at ``margin_lr`` (but never below the suggestion); ``None`` without a
            suggestion. :func:`peak_interval` carries it to a schedule's peak.
        confidence: 0 (a guess) .. 1 (features agree within a fraction of a decade, clean descent).
        divergence_lr: the LR where the loss climbed back by ``RISE`` of its descent (``None``: never).
        margin_lr: ``divergence_lr / margin``, the highest LR the default rule and the schedule peak use.
        advice: what to change when the curve is weak (empty when ``status == "ok"``).
    """

    status: str
    interval: tuple[float, float] | None
    confidence: float
    divergence_lr: float | None
    margin_lr: float | None
    advice: str


def _signal(curve: Curve) -> tuple[float, float]:
    """``(drop, noise)``: the smoothed loss's descent to its minimum and the raw loss's step noise."""
    start, _end = curve.window()
    imin = curve.minimum_index()
    if imin is None:
        return 0.0, 0.0
    return float(curve.smoothed[start] - curve.smoothed[imin]), noise_level(curve)


def diverged_at_once(curve: Curve, rise: float = RISE, cut: int | None = -1) -> bool:
    """True when the loss rose before it ever descended: the test stopped for divergence within its
    first 10 steps (or its first tenth), or the minimum of the (fast) curve lies in the first tenth
    and the loss then rose well above where it started. ``cut``: :func:`divergence_index` when the
    caller has it already (``-1``: compute it)."""
    n = len(curve.lrs)
    head = max(n // 10, 3)
    if curve.stop <= head or (curve.stop < n and curve.stop < 10):  # stopped for divergence within 10 steps
        return True
    fast = np.asarray(smooth(curve.losses[: curve.stop], FAST_BETA), dtype=float)
    imin = int(np.argmin(fast))
    cut = divergence_index(curve, rise) if cut == -1 else cut
    if imin >= head or cut is None or cut > max(2 * head, imin + 3):
        return False
    # a real rise above where the sweep started, not the wiggle of a flat curve whose lowest point comes early
    raw = curve.losses[: curve.stop]
    diffs = np.diff(raw)
    noise = _step_noise(diffs) if len(diffs) else 0.0
    return float(np.max(fast[head:]) - np.median(raw[:head])) > 5.0 * noise


def assess(curve: Curve, suggestion: float | None, margin: float = MARGIN, rise: float = RISE) -> Assessment:
    """The :class:`Assessment` of ``curve`` for ``suggestion`` (see its attributes).

    Example:
        >>> from lightning_optkit.lr_finder._rules import guarded
        >>> lrs = np.logspace(-4, 0, 60)
        >>> c = Curve.from_losses(lrs, np.where(lrs < 0.1, 1.0 / (1.0 + lrs * 100), 9.0), beta=0.0)
        >>> a = assess(c, guarded(c))
        >>> a.status, a.interval[0] <= guarded(c) <= a.interval[1]
        ('ok', True)
    """
    cut = divergence_index(curve, rise)
    div_lr = None if cut is None else float(curve.lrs[min(cut, len(curve.lrs) - 1)])
    margin_lr = None if div_lr is None else div_lr / margin
    if diverged_at_once(curve, rise, cut):
        return Assessment("diverged_at_once", None, 0.0, div_lr, margin_lr,
                          "the loss rose from the first steps: lower min_lr (100x), check the loss and the data "
                          "(a bug, unnormalised inputs), or use a larger batch")
    drop, noise = _signal(curve)
    ratio = drop / noise if noise > 0 else (math.inf if drop > 0 else 0.0)
    status, advice = "ok", ""
    if ratio < 1.0:
        status, advice = "flat", ("the loss barely moved against its step noise: use more num_steps, a wider range "
                                  "(a higher max_lr) or a larger batch")
    elif ratio < 3.0:
        status, advice = "noisy", "the descent is within a few noise levels: use a larger batch or more num_steps"
    if suggestion is None:
        return Assessment(status, None, 0.0, div_lr, margin_lr, advice or "no rule found a descending stretch")
    kept = [*agreeing(evidence(curve)).values(), suggestion]
    low, high = min(kept) / INTERVAL_WIDEN, max(kept) * INTERVAL_WIDEN
    if margin_lr is not None:
        low, high = min(low, margin_lr), min(high, margin_lr)
    low, high = min(low, suggestion), max(high, suggestion)
    values = [*evidence(curve).values(), suggestion]  # confidence: every feature, disagreeing ones too
    agree = min(max(1.0 - math.log10(max(values) / min(values)) / 2.0, 0.0), 1.0)
    signal = min(max((ratio - 1.0) / 9.0, 0.0), 1.0) if math.isfinite(ratio) else 1.0
    return Assessment(status, (float(low), float(high)), round(min(agree, signal), 3), div_lr, margin_lr, advice)


def peak_interval(interval: tuple[float, float] | None, suggestion: float | None, recommended: float | None,
                  margin_lr: float | None) -> tuple[float, float] | None:
    """The constant-LR ``interval`` carried to the LR to configure: both ends times
    ``recommended / suggestion`` (the schedule-aware peak's factor), the top never above
    ``max(margin_lr, recommended)``; equal to ``interval`` for a constant LR.

    Example:
        >>> peak_interval((1e-3, 1e-2), 4e-3, 8e-3, 1.5e-2)
        (0.002, 0.015)
        >>> peak_interval((1e-3, 1e-2), 4e-3, 4e-3, None)
        (0.001, 0.01)
    """
    if interval is None or not suggestion or not recommended:
        return interval
    ratio = recommended / suggestion
    low, high = interval[0] * ratio, interval[1] * ratio
    if margin_lr is not None:
        high = min(high, max(margin_lr, recommended))
    return (float(min(low, recommended)), float(max(high, recommended)))
