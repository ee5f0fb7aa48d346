"""LRFinderResult: the curve of one range test, every rule's suggestion, and its plot."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ._rules import reads_held_out

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["LRFinderResult"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


@dataclass
class LRFinderResult:
    """The outcome of one LR range test.

    Attributes:
        lrs: the reference LR of each step (``optimizer.lr`` with the mixin; every param group kept
            its ratio to it).
        losses: raw training loss of each step (mean over the step's micro-batches and over ranks).
        smoothed: bias-corrected moving average of ``losses`` (what the rules read).
        val_losses: held-out loss after each step when ``val_batches > 0``, else ``None``.
        suggestions: every rule's LR for a constant schedule (``None`` where a rule has no answer).
        rule: the rule whose value is :attr:`suggestion`.
        recommended_lr: the value to configure as the reference LR, after the schedule-aware peak rule
            (equal to :attr:`suggestion` for a constant LR); ``None`` without a suggestion.
        schedule: the schedule the recommendation was made for (``"constant"``, ``"onecycle"``...).
        peak_factor: the schedule's factor, ``1 / (its mean LR / its peak LR)``: the peak whose mean LR
            equals the suggestion. ``recommended_lr`` is ``suggestion * peak_factor ** e`` (``e`` per
            schedule, :data:`~lightning_optkit.lr_finder._rules.PEAK_EXPONENT`), never above
            ``max(margin_lr, suggestion)``.
        diverged_at: index of the step where the test stopped because the loss diverged, or ``None``.
        reference: what the swept LR stands for (``"optimizer.lr"``, ``"param_groups[0].lr"``...).
        applied: whether :attr:`recommended_lr` was written into the config / optimizer.
        epoch: the training epoch the test ran at (``None`` outside a fit).
        message: a one-line account of the outcome (why there is no suggestion, where it diverged).
        status: ``"ok"``, ``"flat"`` (the loss barely moved against its noise), ``"noisy"`` (it moved by
            only a few noise levels) or ``"diverged_at_once"`` (it rose before it descended: no suggestion).
        interval: ``(low, high)``, the recommended range of constant LRs: the span of the rules'
            agreeing evidence and the suggestion, widened by a factor calibrated on the benchmark's
            development half, its top at most :attr:`margin_lr`; ``None`` without a suggestion.
            :attr:`recommended_interval` is the same range for the LR to configure (a schedule's peak).
        confidence: 0 (a guess) .. 1 (the rules agree within a fraction of a decade on a clean descent).
        cliff_lr: where the loss climbed back by 5 % of its descent and by more than its own noise
            (``None``: it never rose).
        margin_lr: ``cliff_lr`` divided by the safety margin: the default rule and the schedule peak
            stay at or below it.
        advice: what to change when the curve is weak (more steps, a wider range, a larger batch).

    Example:
        >>> r = LRFinderResult(lrs=[1e-3, 1e-2, 1e-1], losses=[1.0, 0.6, 9.0], smoothed=[1.0, 0.6, 9.0],
        ...                    suggestions={"valley": 1e-2}, rule="valley", recommended_lr=1e-2)
        >>> r.suggestion, r.diverged
        (0.01, False)
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestions: dict[str, float | None]
    rule: str
    recommended_lr: float | None = None
    val_losses: list[float] | None = None
    schedule: str = "constant"
    peak_factor: float = 1.0
    diverged_at: int | None = None
    reference: str = "optimizer.lr"
    applied: bool = False
    epoch: int | None = None
    message: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    interval: tuple[float, float] | None = None
    confidence: float | None = None
    cliff_lr: float | None = None
    margin_lr: float | None = None
    advice: str = ""

    @property
    def suggestion(self) -> float | None:
        """The constant-LR suggestion of :attr:`rule`."""
        return self.suggestions.get(self.rule)

    @property
    def recommended_interval(self) -> tuple[float, float] | None:
        """:attr:`interval` carried to the LR to configure: times ``recommended_lr / suggestion``, its
        top at most ``max(margin_lr, recommended_lr)``; equal to :attr:`interval` for a constant LR.

        Example:
            >>> r = LRFinderResult(lrs=[1e-3], losses=[1.0], smoothed=[1.0], suggestions={"guarded": 4e-3},
            ...                    rule="guarded", recommended_lr=8e-3, interval=(1e-3, 1e-2), margin_lr=1.5e-2)
            >>> r.recommended_interval
            (0.002, 0.015)
        """
        from ._verdict import peak_interval

        return peak_interval(self.interval, self.suggestion, self.recommended_lr, self.margin_lr)

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    @property
    def diverged_lr(self) -> float | None:
        """The LR at which the loss diverged (``None`` when it did not)."""
        return None if self.diverged_at is None else self.lrs[self.diverged_at]

    @property
    def num_steps(self) -> int:
        """Optimizer steps the test took (fewer than asked when it diverged)."""
        return len(self.lrs)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN and infinities become ``None``); :meth:`from_dict` reads it back."""
        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, list):
                return [clean(x) for x in v]
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        return clean(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LRFinderResult:
        def unclean(values: list[Any] | None) -> list[float] | None:
            return None if values is None else [float("nan") if v is None else float(v) for v in values]

        data = dict(data)
        for key in ("losses", "smoothed", "val_losses"):
            data[key] = unclean(data.get(key))
        if data.get("interval") is not None:
            data["interval"] = tuple(data["interval"])
        return cls(**data)

    def summary(self) -> str:
        """A small text table: every rule's suggestion, the recommended LR and how the test ended.

        Example:
            >>> r = LRFinderResult(lrs=[1e-3, 1e-2], losses=[1.0, 0.5], smoothed=[1.0, 0.5],
            ...                    suggestions={"valley": 1e-2, "minimum": 1e-3}, rule="valley", recommended_lr=1e-2)
            >>> print(r.summary().splitlines()[1])
              valley           0.01  <- default
        """
        lines = [f"LR range test: {self.num_steps} steps, {_fmt(self.lrs[0]) if self.lrs else '-'} to "
                 f"{_fmt(self.lrs[-1]) if self.lrs else '-'} ({self.reference}), rules read the "
                 + ("held-out loss" if reads_held_out(self.lrs, self.val_losses) else "training loss")]
        for name, value in self.suggestions.items():
            mark = "  <- default" if name == self.rule else ""
            lines.append(f"  {name:<14} {_fmt(value):>6}{mark}")
        if self.recommended_lr is not None and self.schedule != "constant":
            ratio = self.recommended_lr / self.suggestion if self.suggestion else 1.0
            lines.append(f"  schedule '{self.schedule}': peak {_fmt(self.recommended_lr)} "
                         f"({ratio:.2f} x the suggestion; the schedule's mean-LR factor is {self.peak_factor:.2f})")
        if self.interval is not None:
            conf = "-" if self.confidence is None else f"{self.confidence:.2f}"
            lines.append(f"  interval       {_fmt(self.interval[0])} .. {_fmt(self.interval[1])} (constant LR), "
                         f"confidence {conf}")
            peak = self.recommended_interval
            if peak is not None and self.schedule != "constant" and peak != self.interval:
                lines.append(f"  peak interval  {_fmt(peak[0])} .. {_fmt(peak[1])} (the LR to configure for "
                             f"'{self.schedule}')")
        if self.cliff_lr is not None:
            lines.append(f"  loss rises at  {_fmt(self.cliff_lr)}; safety margin: stay at or below {_fmt(self.margin_lr)}")
        if self.status != "ok":
            lines.append(f"  status '{self.status}': {self.advice}")
        if self.message:
            lines.append(f"  {self.message}")
        return "\n".join(lines)

    def plot(self, ax: Axes | None = None, *, show_raw: bool = True) -> Figure:
        """Loss against LR (log axis) with every rule's suggestion marked; returns the matplotlib figure.

        The smoothed training loss is the main line, the raw loss a faint one, the held-out loss (if
        measured) a dashed one; the divergence point and the recommended (schedule-aware) LR are
        drawn as vertical lines.

        Example:
            >>> r = LRFinderResult(lrs=[1e-3, 1e-2, 1e-1], losses=[1.0, 0.6, 2.0], smoothed=[1.0, 0.7, 1.5],
            ...                    suggestions={"valley": 1e-2}, rule="valley", recommended_lr=1e-2)
            >>> fig = r.plot()
            >>> fig.axes[0].get_xscale()
            'log'
        """
        if ax is None:
            from matplotlib.figure import Figure

            fig = Figure(figsize=(8, 5), layout="constrained")
            ax = fig.add_subplot()
        else:
            fig = ax.figure  # type: ignore[assignment]
        lrs = self.lrs
        if show_raw:
            ax.plot(lrs, self.losses, color="0.75", linewidth=0.8, label="loss (raw)")
        ax.plot(lrs, self.smoothed, color="C0", linewidth=1.8, label="loss (smoothed)")
        if self.val_losses is not None:
            ax.plot(lrs, self.val_losses, color="C1", linestyle="--", linewidth=1.4, label="held-out loss")
        finite = [(lr, s) for lr, s in zip(lrs, self.smoothed) if math.isfinite(s)]
        for i, (name, value) in enumerate(self.suggestions.items()):
            if value is None or not finite:
                continue
            # the loss at the suggestion: nearest tested LR (minimum/10 may lie left of it)
            nearest = min(finite, key=lambda p: abs(math.log10(p[0]) - math.log10(value)))
            style = dict(markersize=10 if name == self.rule else 7, linestyle="none", marker=_MARKERS[i % len(_MARKERS)],
                         markeredgecolor="black" if name == self.rule else None)
            ax.plot([value], [nearest[1]], label=f"{name}: {value:.2e}" + (" (default)" if name == self.rule else ""),
                    **style)
        if self.recommended_lr is not None and self.schedule != "constant":
            ax.axvline(self.recommended_lr, color="C2", linestyle=":", linewidth=1.2,
                       label=f"{self.schedule} peak: {self.recommended_lr:.2e}")
        if self.interval is not None:
            ax.axvspan(self.interval[0], self.interval[1], color="C2", alpha=0.12,
                       label=f"interval {self.interval[0]:.2e} .. {self.interval[1]:.2e}")
        if self.margin_lr is not None:
            ax.axvline(self.margin_lr, color="C3", linestyle=":", linewidth=1.0,
                       label=f"safety margin: {self.margin_lr:.2e}")
        if self.diverged_at is not None:
            ax.axvline(self.lrs[self.diverged_at], color="C3", linestyle="--", linewidth=1.0,
                       label=f"diverged at {self.lrs[self.diverged_at]:.2e}")
        ax.set_xscale("log")
        ax.set_xlabel(f"learning rate ({self.reference})")
        ax.set_ylabel("loss")
        if finite:
            ys = [s for _lr, s in finite]
            lo, hi = min(ys), max(ys[: max(len(ys) // 10, 1)] + [ys[0]])
            span = max(hi - lo, 1e-12)
            ax.set_ylim(lo - 0.1 * span, hi + 0.4 * span)
        title = "LR range test" if self.status == "ok" else f"LR range test: {self.status}"
        if self.epoch is not None:
            title += f" (epoch {self.epoch})"
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        return fig
