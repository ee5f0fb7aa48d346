"""Schedules as pure functions of the optimizer step.

Convention (the same for every schedule here):

* ``step`` counts optimizer steps already taken: the LR used by the *k*-th optimizer update
  (0-based) is ``base_lr * factor(k)``. Gradient accumulation does not count; only real updates do.
* ``total`` is the number of optimizer steps of the whole run; the last update is ``total - 1``.
* **Warm-up is inside the total.** For ``step < warmup`` the factor rises linearly
  ``warmup_start + (1 - warmup_start) * step / warmup``; with the default ``warmup_start = 0`` the LR
  at step 0 is 0, exactly as HuggingFace's ``get_*_schedule_with_warmup`` and timm's default
  ``warmup_lr_init=0``. Step ``warmup`` is the first at the peak.
* **Decays end at the last update**: the decay runs over the ``n = total - warmup`` remaining steps
  and reaches its final value (``min_lr_ratio``) at ``step = total - 1``, the last LR actually used.
  (HuggingFace's cosine reaches 0 at ``step = total``, an LR no update ever uses; torch's
  ``CosineAnnealingLR(T_max=total - 1)`` and ``OneCycleLR(total_steps=total)`` agree with ours.)
  After the end the factor stays at its final value.

Every function is ``f(t, n, floor, **params) -> factor`` with ``t`` the steps since the end of the
warm-up and ``n`` the number of post-warm-up steps. :class:`ScheduleFn` binds one of them with its
parameters into a picklable callable whose ``__dict__`` holds only plain values, so a scheduler's
``state_dict`` loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CHAINED_KINDS", "DECAYS", "MomentumFn", "ScheduleFn", "onecycle_momentum"]


def _progress(t: int, n: int) -> float:
    """Fraction of the decay done at step ``t`` of ``n``; 1.0 at ``t = n - 1``."""
    if n <= 1:
        return 1.0 if t >= 0 and n == 1 else float(t >= n)
    return min(max(t / (n - 1), 0.0), 1.0)


def constant(t: int, n: int, floor: float) -> float:
    return 1.0


def cosine(t: int, n: int, floor: float) -> float:
    p = _progress(t, n)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))


def linear(t: int, n: int, floor: float) -> float:
    return floor + (1.0 - floor) * (1.0 - _progress(t, n))


def polynomial(t: int, n: int, floor: float, power: float = 1.0) -> float:
    return floor + (1.0 - floor) * (1.0 - _progress(t, n)) ** power


def inverse_sqrt(t: int, n: int, floor: float, timescale: float = 10_000) -> float:
    return max(floor, math.sqrt(timescale / (t + timescale)))


def wsd(t: int, n: int, floor: float, decay_steps: int = 0, decay_shape: str = "linear") -> float:
    """Warmup-stable-decay: flat at the peak, then the last ``decay_steps`` decay to the floor."""
    start = n - decay_steps
    if t < start or decay_steps <= 0:
        return 1.0
    p = _progress(t - start, decay_steps)
    if decay_shape == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * p))
    elif decay_shape == "sqrt":  # "1-sqrt" cooldown (Hägele et al. 2024)
        shape = 1.0 - math.sqrt(p)
    else:
        shape = 1.0 - p
    return floor + (1.0 - floor) * shape


def cosine_restarts(
    t: int, n: int, floor: float, cycle: int = 1, cycle_mult: float = 1.0, peak_decay: float = 1.0
) -> float:
    """SGDR: cosine cycles of length ``cycle``, each ``cycle_mult`` times longer, peaks times ``peak_decay``.

    Within a cycle the factor follows torch's ``CosineAnnealingWarmRestarts`` (the floor is reached
    only in the limit, a restart comes first).
    """
    length, index, pos = max(int(cycle), 1), 0, t
    while pos >= length:
        pos -= length
        index += 1
        length = max(int(round(length * cycle_mult)), 1)
    peak = peak_decay**index
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * pos / length))


def step_decay(t: int, n: int, floor: float, step_size: int = 1, gamma: float = 0.1) -> float:
    return max(floor, gamma ** (t // step_size))


def multistep(t: int, n: int, floor: float, milestones: tuple[int, ...] = (), gamma: float = 0.1) -> float:
    return max(floor, gamma ** bisect.bisect_right(milestones, t))


def exponential(t: int, n: int, floor: float, gamma: float = 1.0) -> float:
    return max(floor, gamma**t)


def _onecycle_phases(n: int, pct_start: float, three_phase: bool) -> list[float]:
    if three_phase:
        return [float(pct_start * n) - 1, float(2 * pct_start * n) - 2, n - 1]
    return [float(pct_start * n) - 1, n - 1]


def _anneal(start: float, end: float, pct: float, strategy: str) -> float:
    if strategy == "linear":
        return (end - start) * pct + start
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _onecycle_value(t: int, n: int, pct_start: float, three_phase: bool, anchors: list[tuple[float, float]],
                    strategy: str) -> float:
    start_step = 0.0
    ends = _onecycle_phases(n, pct_start, three_phase)
    t = min(t, n - 1)
    for i, (end_step, (a, b)) in enumerate(zip(ends, anchors)):
        if t <= end_step or i == len(ends) - 1:
            pct = (t - start_step) / (end_step - start_step)
            return _anneal(a, b, pct, strategy)
        start_step = end_step
    raise AssertionError("unreachable")


def onecycle(
    t: int, n: int, floor: float, pct_start: float = 0.3, div_factor: float = 25.0,
    final_div_factor: float = 1e4, anneal_strategy: str = "cos", three_phase: bool = False, max_lr: float = 1.0,
) -> float:
    """The 1cycle policy exactly as torch's ``OneCycleLR``, as a factor of ``max_lr``.

    The curve is computed in absolute units of the group's ``max_lr`` (as torch does) and divided
    back, so both round the same way (the linear anneal cancels digits near its end).
    """
    initial = max_lr / div_factor
    final = initial / final_div_factor
    top = max_lr
    anchors = [(initial, top), (top, initial), (initial, final)] if three_phase else [(initial, top), (top, final)]
    return _onecycle_value(t, n, pct_start, three_phase, anchors, anneal_strategy) / max_lr


def onecycle_momentum(
    t: int, n: int, pct_start: float = 0.3, anneal_strategy: str = "cos", three_phase: bool = False,
    base_momentum: float = 0.85, max_momentum: float = 0.95,
) -> float:
    """Momentum (or Adam's beta1) cycled inversely to the LR, as torch's ``OneCycleLR``."""
    lo, hi = base_momentum, max_momentum
    anchors = [(hi, lo), (lo, hi), (hi, hi)] if three_phase else [(hi, lo), (lo, hi)]
    return _onecycle_value(t, n, pct_start, three_phase, anchors, anneal_strategy)


DECAYS: dict[str, Callable[..., float]] = {
    "constant": constant,
    "warmup_cosine": cosine,
    "cosine_restarts": cosine_restarts,
    "linear": linear,
    "polynomial": polynomial,
    "inverse_sqrt": inverse_sqrt,
    "wsd": wsd,
    "step": step_decay,
    "multistep": multistep,
    "exponential": exponential,
    "onecycle": onecycle,
}

# decays that torch computes by multiplying the LR by gamma at each milestone (MultiStepLR, StepLR)
CHAINED_KINDS = ("multistep", "step")
_MAX_CHAIN = 64  # beyond this many multiplications, gamma ** k (torch's rounding is not worth the loop)


def _gammas(kind: str, params: dict[str, Any], start: int, t: int) -> list[float] | None:
    """The multipliers applied after step ``start`` up to step ``t`` (post-warm-up steps), in order."""
    gamma = float(params.get("gamma", 0.1))
    if kind == "multistep":
        stones = [m for m in params.get("milestones", ()) if start < m <= t]
        return [gamma ** stones.count(m) for m in sorted(set(stones))]
    size = max(int(params.get("step_size", 1)), 1)
    k = t // size - max(start, 0) // size
    return [gamma] * k if k <= _MAX_CHAIN else None


@dataclass
class ScheduleFn:
    """``factor = ScheduleFn(...)(step)``: one schedule with its resolved lengths, picklable.

    Example:
        >>> fn = ScheduleFn("warmup_cosine", total=100, warmup=10, floor=0.0)
        >>> [round(fn(s), 4) for s in (0, 5, 10, 99, 150)]
        [0.0, 0.5, 1.0, 0.0, 0.0]
    """

    kind: str
    total: int
    warmup: int = 0
    warmup_start: float = 0.0
    floor: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup
        return DECAYS[self.kind](step - self.warmup, self.total - self.warmup, self.floor, **self.params)

    def chain(self, step: int, since: int | None = None) -> list[float] | None:
        """The gammas a ``multistep``/``step`` group's LR is multiplied by from ``since`` to ``step`` (else ``None``)."""
        if self.kind not in CHAINED_KINDS or step < self.warmup:
            return None
        start = -1 if since is None else since - self.warmup
        if since is not None and start < 0:
            return None  # anchored inside the warm-up: the plain ratio of factors
        return _gammas(self.kind, self.params, start, step - self.warmup)

    def chained(self, base: float, step: int, since: int | None = None, ref: float = 1.0) -> float | None:
        """The LR at ``step`` of a ``multistep``/``step`` group, multiplied out as torch does (else ``None``).

        ``base`` is the group's peak LR (``since=None``) or its LR at step ``since``, where the factor
        was ``ref``. ``base * gamma * gamma`` rounds as ``MultiStepLR`` does; ``base * gamma ** 2`` does not.

        Example:
            >>> fn = ScheduleFn("multistep", total=10, params={"milestones": [2, 4], "gamma": 0.1})
            >>> fn.chained(1e-3, 5) == 1e-3 * 0.1 * 0.1, fn.chained(1e-4, 5, since=3, ref=0.1) == 1e-4 * 0.1
            (True, True)
        """
        gammas = self.chain(step, since)
        if gammas is None:
            return None
        lr = base
        for g in gammas:
            lr = lr * g
        if self.floor > 0:
            lr = max(lr, base / ref * self.floor)
        return lr


@dataclass
class MomentumFn:
    """Absolute momentum as a function of the optimizer step (OneCycle's momentum cycling)."""

    total: int
    params: dict[str, Any] = field(default_factory=dict)

    def __call__(self, step: int) -> float:
        return onecycle_momentum(step, self.total, **self.params)
