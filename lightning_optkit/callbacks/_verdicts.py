"""The TrainingDoctor's verdicts: capacity (over/underfitting), convergence state, and the sharpness
findings of a ``SharpnessMonitor`` in the same trainer (found by its attributes: callbacks never import
``diagnostics``, which sits above them).

All functions here are pure (host floats in, a small record out), so they are tested without a run.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Capacity", "Convergence", "capacity_verdict", "convergence_state", "sharpness_monitors",
           "sharpness_summary"]

#: Capacity verdicts, in the order they are tested.
CAPACITY_VERDICTS = ("overfitting", "underfitting", "good fit", "inconclusive")
#: Convergence states.
CONVERGENCE_STATES = ("converging fast", "converging slowly", "converged", "stalled", "worsening")


@dataclass
class Capacity:
    """Train vs validation score: ``verdict`` is one of :data:`CAPACITY_VERDICTS`.

    ``metric`` is ``"accuracy"`` (the logged keys ``train_key`` / ``val_key``) or ``"loss"`` (scores
    ``1 - loss / initial training loss``: the fraction of the starting loss removed).
    ``informational``: the verdict is reported but raises no code (loss scores without thresholds of
    their own).
    """

    verdict: str
    metric: str
    train: float
    val: float
    gap: float
    train_key: str | None
    val_key: str | None
    message: str
    informational: bool = False


@dataclass
class Convergence:
    """The recent trend of the training loss: ``state`` is one of :data:`CONVERGENCE_STATES`."""

    state: str
    recent_improvement: float
    total_improvement: float
    window_steps: int
    message: str


def capacity_verdict(train: float, val: float, *, metric: str, high: float = 0.9, low: float = 0.7,
                     fit_gap: float = 0.05, train_key: str | None = None, val_key: str | None = None) -> Capacity:
    """The guide's rule on higher-is-better scores: train > ``high`` and val < ``low`` -> overfitting;
    both < ``low`` -> underfitting; ``|train - val| < fit_gap`` -> good fit; else inconclusive.

    Example:
        >>> capacity_verdict(0.99, 0.55, metric="accuracy").verdict
        'overfitting'
        >>> capacity_verdict(0.97, 0.95, metric="accuracy").verdict
        'good fit'
    """
    gap = train - val
    what = "accuracy" if metric == "accuracy" else "loss score (1 - loss / initial loss)"
    if train > high and val < low:
        verdict, why = "overfitting", f"train {what} {train:.3f} > {high:g} but validation {val:.3f} < {low:g}"
    elif train < low and val < low:
        verdict, why = "underfitting", f"train {what} {train:.3f} and validation {val:.3f} both < {low:g}"
    elif abs(gap) < fit_gap:
        verdict, why = "good fit", f"train {what} {train:.3f} and validation {val:.3f} within {fit_gap:g}"
    else:
        verdict, why = "inconclusive", (f"train {what} {train:.3f}, validation {val:.3f}: gap {gap:+.3f}, "
                                        "neither clearly over- nor underfitting")
    return Capacity(verdict, metric, train, val, gap, train_key, val_key, why)


def convergence_state(losses: Sequence[float], *, window: float = 0.2, fast: float = 0.1, converged: float = 0.01,
                      stalled: float = 0.05) -> Convergence | None:
    """Compare the median loss of the last ``window`` fraction of the steps with the window before.

    ``r = (before - last) / |before|``: ``r >= fast`` converging fast, ``r >= converged`` converging
    slowly, ``r <= -converged`` worsening, else converged -- or ``stalled`` when the whole run removed
    less than ``stalled`` of the initial loss (median of the first 5 steps). ``None`` with fewer than
    10 finite values.

    Example:
        >>> convergence_state([1 / (t + 1) for t in range(100)]).state
        'converging fast'
        >>> convergence_state([2.0 - 1 / (t + 1) ** 0.01 for t in range(100)]).state
        'stalled'
    """
    vals = [v for v in losses if math.isfinite(v)]
    if len(vals) < 10:
        return None
    w = max(2, int(len(vals) * window))
    w = min(w, len(vals) // 2)
    last, before = statistics.median(vals[-w:]), statistics.median(vals[-2 * w:-w])
    initial = statistics.median(vals[:5])
    recent = (before - last) / max(abs(before), 1e-12)
    total = (initial - last) / max(abs(initial), 1e-12)
    if recent >= fast:
        state = "converging fast"
    elif recent >= converged:
        state = "converging slowly"
    elif recent <= -converged:
        state = "worsening"
    elif total < stalled:
        state = "stalled"
    else:
        state = "converged"
    message = (f"the median training loss of the last {w} recorded steps is {last:.4g}, "
               f"{recent * 100:+.1f}% better than the {w} before ({before:.4g}); "
               f"{total * 100:.1f}% below the start ({initial:.4g})")
    return Convergence(state, recent, total, w, message)


def sharpness_monitors(callbacks: Iterable[Any]) -> list[Any]:
    """Callbacks that look like a ``SharpnessMonitor`` (``history`` list, ``flagged``, ``first_flag_step``)."""
    return [cb for cb in callbacks
            if isinstance(getattr(cb, "history", None), list) and isinstance(getattr(cb, "flagged", None), bool)
            and hasattr(cb, "first_flag_step")]


def sharpness_summary(monitor: Any) -> dict[str, Any] | None:
    """Evidence for the doctor when ``monitor`` flagged training above its stability edge, else ``None``."""
    if not monitor.flagged:
        return None
    above = [h for h in monitor.history if h.get("above_edge")]
    worst = max(above, key=lambda h: h.get("ratio") or 0.0) if above else {}
    return {"first_step": monitor.first_flag_step, "checks": len(monitor.history), "checks_above": len(above),
            "worst_ratio": worst.get("ratio"), "lambda_max": worst.get("lambda_max"),
            "lambda_max_preconditioned": worst.get("lambda_max_preconditioned"), "edge": worst.get("edge"),
            "edge_kind": worst.get("edge_kind"), "last_step": (above[-1]["step"] if above else monitor.first_flag_step)}
