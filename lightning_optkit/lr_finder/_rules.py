"""Suggestion rules: from a range-test curve (LR per step, loss per step) to one learning rate.

Every rule reads the same :class:`Curve`: the reference LR of each step, the raw loss (averaged
over ranks), its bias-corrected exponential moving average, and where the test stopped for
divergence. Rules work on a **log-LR axis**: a range test sweeps several decades, and a slope taken
against a linear LR axis divides by the tiny LR spacing of the first steps, so their noise wins
(Lightning's ``suggestion()`` uses ``torch.gradient(losses, spacing=[lrs])`` and lands there).

The window every rule looks at drops the first tenth of the usable points (the moving average is
still settling there) and everything from the divergence on.

Rules (``RULES``):

* ``guarded`` (the default) -- the geometric mean of ``steepest / 3`` and ``minimum`` (``minimum`` alone
  when the two lie more than 1.5 decades apart, :func:`agreeing`), capped at ``1 / 3`` of the LR where
  the loss has climbed back by 5 % of its descent and by more than 5 standard deviations of its noise
  (:func:`divergence_index`, read on a lightly smoothed copy of the raw loss).
* ``steepest`` -- the most negative slope ``d loss / d log10(lr)`` before the loss minimum, each
  slope discounted by two standard errors of its noise (the previous default: on curves it was not
  chosen on it often sits near the cliff).
* ``valley`` -- the middle of the longest descending stretch of the curve (fastai's idea: the
  longest decreasing subsequence, robust to bumps), in log-LR.
* ``minimum`` -- the LR of the loss minimum divided by 10 (the classic rule of thumb).
* ``median`` -- the median of ``steepest``, ``valley`` and ``minimum``.

``DEFAULT_RULE`` and ``guarded``'s constants are chosen by ``benchmarks/lr_finder_quality.py --tune``
(normalized regret against a 21-LR x 3-seed oracle grid per task; the numbers are in the README and
``docs/lr_finder.md``). Round 1 chose them on a development half of 30 tasks and reported the other
half and 16 fresh tasks written blind; round 2 (the margin 6 -> 3, the interval's widening 2 -> 1.5)
chose them on those 46 tasks, all seen by then, and reports a second blind set of 16 tasks
(``benchmarks/_lr_tasks_fresh2.py``) scored once, after this module was committed.
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


def reads_held_out(lrs: Sequence[float], val_losses: Sequence[float] | None) -> bool:
    """True when the rules read the held-out curve: it was measured at every step and starts finite.

    Example:
        >>> reads_held_out([1e-3, 1e-2], [0.9, float("nan")]), reads_held_out([1e-3, 1e-2], None)
        (True, False)
    """
    return val_losses is not None and len(val_losses) == len(lrs) and len(val_losses) > 0 \
        and math.isfinite(val_losses[0])


def rules_curve(lrs: Sequence[float], losses: Sequence[float], val_losses: Sequence[float] | None = None,
                beta: float = 0.98, diverged_at: int | None = None) -> Curve:
    """The curve the rules read: the held-out loss when it was measured (validation-aware mode,
    ``val_batches > 0``) and is finite from the first step, else the training loss.

    A training loss keeps falling at LRs that already hurt held-out data when a model overfits; the
    held-out loss of the same sweep sees that. ``find_lr`` measures it by default when the run has
    validation data (``val_batches="auto"``: 2 batches a step, ~40 % more time per test in the benchmark);
    BatchNorm layers normalize the probe with its own batch statistics (their running statistics lag a
    sweep). In ``benchmarks/lr_finder_quality.py`` it took the default's mean regret on the first fresh
    set (16 tasks written blind) from 0.189 to 0.113 (11/16 -> 12/16 within 0.1) at round 1's constants.

    Example:
        >>> rules_curve([1e-3, 1e-2, 1e-1], [1.0, 0.5, 0.4], [1.1, 0.9, 1.3]).losses.tolist()
        [1.1, 0.9, 1.3]
    """
    if reads_held_out(lrs, val_losses):
        return Curve.from_losses(lrs, val_losses, beta, diverged_at)  # type: ignore[arg-type]
    return Curve.from_losses(lrs, losses, beta, diverged_at)


def _log_lr(curve: Curve) -> np.ndarray:
    return np.log10(curve.lrs)


def _step_noise(diffs: np.ndarray) -> float:
    """The per-step noise behind step-to-step differences: their median absolute deviation, as a std / sqrt(2)."""
    return float(1.4826 * np.median(np.abs(diffs - np.median(diffs))) / math.sqrt(2))


def noise_level(curve: Curve) -> float:
    """Step-to-step noise of the raw loss before the minimum (median absolute deviation of its differences)."""
    start, _end = curve.window()
    imin = curve.minimum_index()
    if imin is None:
        return 0.0
    diffs = np.diff(curve.losses[start: imin + 1])
    if len(diffs) < 3:
        return 0.0
    return _step_noise(diffs)


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


# ------------------------------------------------------------------ divergence and the guarded rule

#: constants of ``guarded``, chosen by ``benchmarks/lr_finder_quality.py --tune``. ``MARGIN``: round 1 took 6
#: on the development half (15 tasks); on the 46 tasks of round 2, scored on the LR ``find_lr`` recommends
#: from the held-out loss, 3 holds 41/46 within 0.1 regret at mean 0.056 against 39/46 at 0.068 for 6 (2 and 4
#: are within 0.003 of 3; on the training loss 3 and 6 score 38/46 at 0.102 and 0.105)
RISE = 0.05
MARGIN = 3.0
STEEPEST_DIVISOR = 3.0
#: a rise only counts once it also clears this many standard deviations of the fast curve's own noise
#: (on a curve whose descent is smaller than its noise, 5 % of the descent is a wiggle, not a cliff).
#: With :data:`AGREEMENT_DECADES` it fixes the one development miss, a range test of a noisy autoencoder
#: capped decades low by a wiggle (mean regret 0.051 -> 0.028, 14/15 -> 15/15 within 0.1); 4 to 6 give
#: the same suggestions there, 3 or less keeps the miss, 8 or more loses another task. Each of the two
#: alone changes the mean by less than 0.002.
RISE_NOISE_Z = 5.0
#: decades between ``steepest / 3`` and ``minimum`` beyond which the steepest descent is taken for noise
#: and left out (0.75 to 2 give the same suggestions on the development half; ``--tune`` takes the middle
#: of that plateau)
AGREEMENT_DECADES = 1.5
FAST_BETA = 0.8


def divergence_index(curve: Curve, rise: float = RISE, fast_beta: float = FAST_BETA,
                     noise_z: float | None = None) -> int | None:
    """Index where the loss has climbed back by ``rise`` of its descent (``None``: it never rose).

    Read on a lightly smoothed copy of the raw loss (``beta = fast_beta``, a lag of a few steps
    instead of the ~50 steps of the main average, which puts the rise too far right). The climb must
    also clear ``noise_z`` standard deviations of that copy's noise (the raw step noise times
    ``sqrt((1 - fast_beta) / (1 + fast_beta))``; ``None``: :data:`RISE_NOISE_Z`): on a curve that
    barely descends, 5 % of the descent is smaller than one wiggle. A test stopped for divergence
    diverged at its stop point at the latest.

    Example:
        >>> lrs = np.logspace(-4, 0, 40)
        >>> losses = np.where(lrs < 0.1, 1.0 / (1.0 + lrs * 100), 9.0)
        >>> 0.1 <= float(lrs[divergence_index(Curve.from_losses(lrs, losses, beta=0.0))]) < 0.13
        True
    """
    fast = np.asarray(smooth(curve.losses[: curve.stop], fast_beta), dtype=float)
    start, end = curve.window()
    if end - start < 3:
        return 0 if curve.stop < len(curve.lrs) else None
    imin = start + int(np.argmin(fast[start:end]))
    drop = float(fast[start] - fast[imin])
    diffs = np.diff(curve.losses[start:end])
    wiggle = _step_noise(diffs) * math.sqrt((1.0 - fast_beta) / (1.0 + fast_beta)) if len(diffs) > 2 else 0.0
    z = RISE_NOISE_Z if noise_z is None else noise_z
    level = fast[imin] + max(rise * max(drop, 1e-12), z * wiggle)
    above = np.nonzero(fast[imin + 1: end] > level)[0]
    if len(above):
        return int(imin + 1 + above[0])
    return curve.stop if curve.stop < len(curve.lrs) else None


def evidence(curve: Curve, steepest_divisor: float = STEEPEST_DIVISOR) -> dict[str, float]:
    """The features ``guarded`` combines, each scaled to an LR to train at: ``steepest / 3`` and
    ``minimum`` (the LR of the loss minimum / 10); those with an answer."""
    out = {}
    for name, fn, scale in (("steepest", steepest, 1.0 / steepest_divisor), ("minimum", minimum, 1.0)):
        value = fn(curve)
        if value is not None and math.isfinite(value) and value > 0:
            out[name] = float(value) * scale
    return out


def agreeing(values: dict[str, float], decades: float | None = None) -> dict[str, float]:
    """``values`` without ``steepest`` when it lies more than ``decades`` (``None``:
    :data:`AGREEMENT_DECADES`) from ``minimum``.

    The minimum / 10 is the steadier feature; a steepest descent that far from it sits on a wiggle
    of a noisy curve (the first steps, where the average is of few losses) and would drag the
    geometric mean by half its distance.

    Example:
        >>> agreeing({"steepest": 1e-6, "minimum": 1e-2})
        {'minimum': 0.01}
        >>> agreeing({"steepest": 3e-3, "minimum": 1e-2}) == {"steepest": 3e-3, "minimum": 1e-2}
        True
    """
    limit = AGREEMENT_DECADES if decades is None else decades
    if "steepest" in values and "minimum" in values and \
            abs(math.log10(values["steepest"] / values["minimum"])) > limit:
        return {k: v for k, v in values.items() if k != "steepest"}
    return dict(values)


def guarded(curve: Curve, margin: float = MARGIN, rise: float = RISE,
            steepest_divisor: float = STEEPEST_DIVISOR) -> float | None:
    """The geometric mean of ``steepest / 3`` and ``minimum``, at most ``1 / margin`` of the LR where the loss rises.

    One feature alone fails on curves it was not tuned on: the steepest descent of the lagging
    average sits near the cliff on some curves and a decade low on others, the minimum / 10 is the
    steadier of the two (a steepest descent more than a decade from it is dropped, :func:`agreeing`);
    the rise point (:func:`divergence_index`) caps both with a safety margin. The constants
    (``margin`` 3, ``rise`` 0.05, ``steepest / 3``) were chosen by ``benchmarks/lr_finder_quality.py
    --tune`` (:data:`MARGIN`); the valley was left out there (it sits 1-2 decades low on the
    smoothed curve and made every combination worse).
    """
    values = agreeing(evidence(curve, steepest_divisor))
    if "minimum" not in values:
        return None
    lr = float(10 ** np.mean(np.log10(list(values.values()))))
    cut = divergence_index(curve, rise)
    if cut is not None:
        lr = min(lr, float(curve.lrs[cut]) / margin)
    return lr


#: exponent of the schedule's peak factor (``1 / mean LR factor``) that ``guarded`` applies per schedule
#: kind (1: the schedule's mean LR equals the suggestion, 0: peak = suggestion, the constant-LR value).
#: Checked on the development half: ``warmup_cosine`` (2 tasks) scores 0.024 mean regret at 1 and 0.026
#: at 0 (the margin caps the peak on one of them); ``onecycle`` (1 task) 0.022 at 1 and 0.009 at 0,
#: both well within 0.1 and a gain of 0.001 on the half's mean, short of the 0.01 that a change needs,
#: so both keep the mean-LR rule. ``wsd`` has no development task: it holds its peak for most of the
#: run, so it gets the constant-LR value (its factor is about 1.05, so this moves its peak by 5 %).
#: Kinds not listed get 1.
PEAK_EXPONENT: dict[str, float] = {"warmup_cosine": 1.0, "onecycle": 1.0, "wsd": 0.0}


def schedule_peak(curve: Curve, suggestion: float, factor: float, schedule: str, margin: float = MARGIN,
                  rise: float = RISE) -> float:
    """The peak LR to configure for ``schedule``: ``suggestion * factor ** PEAK_EXPONENT[schedule]``,
    never above ``1 / margin`` of the divergence LR (a peak that overshoots the cliff ruins a run
    however short its stay there).

    Example:
        >>> lrs = np.logspace(-4, 0, 40)
        >>> c = Curve.from_losses(lrs, np.where(lrs < 0.1, 1.0 / (1.0 + lrs * 100), 9.0), beta=0.0)
        >>> schedule_peak(c, 0.001, 100.0, "onecycle") == float(lrs[divergence_index(c)]) / MARGIN
        True
    """
    peak = suggestion * factor ** PEAK_EXPONENT.get(schedule, 1.0)
    cut = divergence_index(curve, rise)
    if cut is not None:
        peak = min(peak, max(float(curve.lrs[cut]) / margin, suggestion))
    return float(peak)


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
        SuggestionRule("guarded", guarded, "geometric mean of steepest/3 and minimum/10, a margin below the rise"),
    )
}

DEFAULT_RULE = "guarded"  # by the benchmark's development half (module docstring)


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
