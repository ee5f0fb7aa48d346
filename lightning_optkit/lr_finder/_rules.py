"""Suggestion rules: from a range-test curve (LR per step, loss per step) to one learning rate.

Every rule reads the same :class:`Curve`: the reference LR of each step, the raw loss (averaged
over ranks), its bias-corrected exponential moving average, and where the test stopped for
divergence. Rules work on a **log-LR axis**: a range test sweeps several decades, and a slope taken
against a linear LR axis divides by the tiny LR spacing of the first steps, so their noise wins
(Lightning's ``suggestion()`` uses ``torch.gradient(losses, spacing=[lrs])`` and lands there).

The window every rule looks at drops the first tenth of the usable points (the moving average is
still settling there) and everything from the divergence on.

Rules (``RULES``):

* ``steepest`` -- the most negative slope ``d loss / d log10(lr)`` before the loss minimum, each
  slope discounted by two standard errors of its noise (the default).
* ``valley`` -- the middle of the longest descending stretch of the curve (fastai's idea: the
  longest decreasing subsequence, robust to bumps), in log-LR.
* ``minimum`` -- the LR of the loss minimum divided by 10 (the classic rule of thumb).
* ``median`` -- the median of ``steepest``, ``valley`` and ``minimum``.

``DEFAULT_RULE`` was chosen by ``benchmarks/lr_finder_quality.py`` (7 tasks, normalized regret against
an oracle grid): ``steepest`` 0.011 mean regret and 7/7 tasks within 0.1, ``median`` 0.066 (6/7),
``minimum`` 0.105 (4/7), ``valley`` 0.292 (2/7), Lightning's suggestion 0.734 (1/7).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..config import ConfigError, did_you_mean

__all__ = [
    "DEFAULT_RULE",
    "RULES",
    "Curve",
    "SuggestionRule",
    "check_rule",
    "smooth",
    "suggest_all",
]


def smooth(losses: Sequence[float], beta: float = 0.98) -> list[float]:
    """Bias-corrected exponential moving average, keyed to the test's own step count.

    ``avg_k = beta * avg_{k-1} + (1 - beta) * loss_k`` and ``smoothed_k = avg_k / (1 - beta ** (k + 1))``,
    with ``k`` counting the steps of *this* test (not the trainer's ``global_step``, which is why a
    test started after some training still gets an unbiased start). A non-finite loss ends the
    curve: it and every later point are NaN.

    Example:
        >>> [round(v, 3) for v in smooth([2.0, 2.0, 1.0], beta=0.5)]
        [2.0, 2.0, 1.429]
    """
    out: list[float] = []
    avg = 0.0
    broken = False
    for k, loss in enumerate(losses):
        value = float(loss)
        if broken or not math.isfinite(value):
            broken = True
            out.append(float("nan"))
            continue
        avg = beta * avg + (1.0 - beta) * value
        out.append(avg / (1.0 - beta ** (k + 1)))
    return out


@dataclass(frozen=True)
class Curve:
    """A range-test curve as the rules see it.

    Attributes:
        lrs: the reference LR of each step.
        losses: raw training loss of each step (mean over micro-batches and ranks).
        smoothed: :func:`smooth` of ``losses``.
        stop: number of usable points; the test diverged at ``stop`` when ``stop < len(lrs)``.
        beta: the smoothing factor of ``smoothed``.

    Example:
        >>> curve = Curve.from_losses([1e-3, 1e-2, 1e-1], [1.0, 0.5, 0.4])
        >>> curve.stop, len(curve.smoothed)
        (3, 3)
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    stop: int
    beta: float = 0.98

    @classmethod
    def from_losses(
        cls, lrs: Sequence[float], losses: Sequence[float], beta: float = 0.98, diverged_at: int | None = None
    ) -> Curve:
        lr = np.asarray(lrs, dtype=float)
        raw = np.asarray(losses, dtype=float)
        sm = np.asarray(smooth(raw, beta), dtype=float)
        finite = np.isfinite(sm)
        stop = int(np.argmin(finite)) if not finite.all() else len(sm)
        if diverged_at is not None:
            stop = min(stop, int(diverged_at))
        return cls(lr, raw, sm, stop, float(beta))

    def window(self) -> tuple[int, int]:
        """``[start, end)``: the points the rules read (settled average, before divergence)."""
        end = self.stop
        start = min(end // 10, max(end - 3, 0))
        return start, end

    def minimum_index(self) -> int | None:
        """Index of the lowest smoothed loss inside the window (``None`` with fewer than 3 points)."""
        start, end = self.window()
        if end - start < 3:
            return None
        return start + int(np.argmin(self.smoothed[start:end]))


def _log_lr(curve: Curve) -> np.ndarray:
    return np.log10(curve.lrs)


def noise_level(curve: Curve) -> float:
    """Step-to-step noise of the raw loss before the minimum (median absolute deviation of its differences)."""
    start, _end = curve.window()
    imin = curve.minimum_index()
    if imin is None:
        return 0.0
    diffs = np.diff(curve.losses[start: imin + 1])
    if len(diffs) < 3:
        return 0.0
    return float(1.4826 * np.median(np.abs(diffs - np.median(diffs))) / math.sqrt(2))


def steepest(curve: Curve, z: float = 2.0) -> float | None:
    """LR of the steepest descent of the smoothed loss against ``log10(lr)``, before the minimum.

    Each slope is discounted by ``z`` standard errors of its noise: a step of the bias-corrected
    average moves by ``(1 - beta) / (1 - beta ** (k + 1)) * (loss_k - smoothed_{k-1})``, so the early
    points (an average of few losses) are much noisier than the later ones, and on a gently falling
    curve a wiggle of the first steps would otherwise look like the steepest descent. With a clean
    curve the discount changes nothing (the benchmark's suggestions are the same with ``z=0``).
    """
    start, _end = curve.window()
    imin = curve.minimum_index()
    if imin is None or imin - start < 2:
        return None
    x = _log_lr(curve)
    if np.ptp(x[start: imin + 1]) <= 0:
        return None
    slope = np.gradient(curve.smoothed[start: imin + 1], x[start: imin + 1])
    idx = np.arange(start, imin + 1)
    k = np.arange(len(curve.lrs) + 1)
    weight = (1.0 - curve.beta) / (1.0 - curve.beta ** (k + 1)) if curve.beta > 0 else np.ones(len(k))
    lo, hi = np.clip(idx - 1, start, imin), np.clip(idx + 1, start, imin)
    span = x[hi] - x[lo]
    noise = noise_level(curve) * np.sqrt(weight[idx] ** 2 + weight[idx + 1] ** 2)
    noise = np.divide(noise, span, out=np.zeros_like(noise), where=span > 0)
    return float(curve.lrs[start + int(np.argmin(slope + z * noise))])


def _longest_descent(values: np.ndarray) -> tuple[int, int]:
    """``(first, last)`` indices of the longest strictly decreasing subsequence (O(n^2), n <= a few hundred)."""
    n = len(values)
    length = [1] * n
    origin = list(range(n))
    for i in range(1, n):
        for j in range(i):
            if values[i] < values[j] and length[j] + 1 > length[i]:
                length[i] = length[j] + 1
                origin[i] = origin[j]
    last = int(np.argmax(length))  # first index reaching the longest length
    return origin[last], last


def valley(curve: Curve) -> float | None:
    """The middle (in log-LR) of the longest descending stretch of the smoothed curve."""
    start, end = curve.window()
    if end - start < 3:
        return None
    first, last = _longest_descent(curve.smoothed[start:end])
    if last - first < 2:
        return None
    x = _log_lr(curve)
    return float(10 ** ((x[start + first] + x[start + last]) / 2.0))


def minimum(curve: Curve) -> float | None:
    """The LR of the lowest smoothed loss, divided by 10."""
    imin = curve.minimum_index()
    if imin is None:
        return None
    return float(curve.lrs[imin] / 10.0)


def median(curve: Curve) -> float | None:
    """The median of ``steepest``, ``valley`` and ``minimum`` (of those that have an answer)."""
    values = sorted(v for v in (steepest(curve), valley(curve), minimum(curve)) if v is not None)
    if not values:
        return None
    if len(values) == 2:
        return float(math.sqrt(values[0] * values[1]))
    return float(values[len(values) // 2])


@dataclass(frozen=True)
class SuggestionRule:
    """One named rule: ``fn(curve) -> lr`` (``None`` when the curve has no answer).

    Example:
        >>> RULES["minimum"].fn(Curve.from_losses([1e-3, 1e-2, 1e-1, 1.0], [1.0, 0.5, 0.2, 9.0], beta=0.0))
        0.01
    """

    name: str
    fn: Callable[[Curve], float | None]
    summary: str


RULES: dict[str, SuggestionRule] = {
    r.name: r
    for r in (
        SuggestionRule("steepest", steepest, "steepest descent of the smoothed loss on a log-LR axis"),
        SuggestionRule("valley", valley, "middle of the longest descending stretch (fastai's valley)"),
        SuggestionRule("minimum", minimum, "LR of the loss minimum / 10"),
        SuggestionRule("median", median, "median of steepest, valley and minimum"),
    )
}

DEFAULT_RULE = "steepest"  # by the benchmark's numbers (module docstring)


def check_rule(rule: str, path: str = "rule") -> str:
    """The canonical rule name, or a :class:`ConfigError` listing the rules."""
    key = str(rule).strip().lower().replace("-", "_") if isinstance(rule, str) else rule
    if key not in RULES:
        raise ConfigError(path, rule, "one of " + ", ".join(RULES), suggestions=did_you_mean(rule, RULES))
    return key  # type: ignore[return-value]


def suggest_all(curve: Curve) -> dict[str, float | None]:
    """Every rule's suggestion for ``curve``.

    Example:
        >>> lrs = np.logspace(-4, 0, 40)
        >>> losses = 1.0 / (1.0 + lrs * 100) + (lrs > 0.3) * 5.0
        >>> out = suggest_all(Curve.from_losses(lrs, losses, beta=0.0))
        >>> sorted(out) == sorted(RULES) and all(1e-4 <= v <= 1.0 for v in out.values())
        True
    """
    out: dict[str, float | None] = {}
    for name, rule in RULES.items():
        value = rule.fn(curve)
        out[name] = None if value is None or not math.isfinite(value) or value <= 0 else float(value)
    return out
