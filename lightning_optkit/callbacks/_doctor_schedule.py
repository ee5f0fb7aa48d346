"""What the TrainingDoctor knows about a run's LR schedulers: :class:`ScheduleFacts`, read once from each
of the trainer's scheduler configs at the start of the fit (torch scheduler introspection lives here only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from torch.optim.lr_scheduler import ReduceLROnPlateau

__all__ = ["ScheduleFacts", "ScheduleFn", "describe_schedule", "schedule_facts"]

#: Torch schedulers whose length is one attribute: (class name, attribute).
_HORIZON_ATTRS = (("OneCycleLR", "total_steps"), ("CosineAnnealingLR", "T_max"), ("LinearLR", "total_iters"),
                  ("PolynomialLR", "total_iters"), ("ConstantLR", "total_iters"))


@dataclass(frozen=True)
class ScheduleFn:
    """The schedule function of a ``ScheduledLR`` (an ``optim:`` scheduler block): kind, warm-up and total
    length in optimizer steps."""

    kind: str
    warmup: int
    total: int


@dataclass(frozen=True)
class ScheduleFacts:
    """One scheduler of the run, as the schedule rules need it.

    ``horizon`` is its length when known (in the unit it is stepped in), ``plateau`` marks a
    ``ReduceLROnPlateau`` (then ``patience``, ``mode`` and ``start_lrs`` are set), ``constant`` a
    scheduler that never decays by design, ``fn`` the schedule function of a ``ScheduledLR``, and
    ``mismatch`` a schedule the start-of-fit check found stepped in the wrong unit.
    ``scheduler`` is the live object (a plateau's LRs are read from its optimizer at the end).

    Example:
        >>> ScheduleFacts("CosineAnnealingLR", "epoch", horizon=1000).stepped
        True
    """

    kind: str
    interval: str
    frequency: int = 1
    monitor: str | None = None
    scheduler: Any = field(default=None, compare=False, repr=False)
    horizon: int | None = None
    plateau: bool = False
    patience: int = 0
    mode: str = "min"
    start_lrs: tuple[float, ...] = ()
    constant: bool = False
    fn: ScheduleFn | None = None
    mismatch: bool = False

    @property
    def stepped(self) -> bool:
        """A schedule expected to decay the LR by itself (neither a plateau nor constant)."""
        return not self.plateau and not self.constant

    def lr_reduced(self) -> bool:
        """Whether a plateau scheduler's optimizer LRs are now below where they started."""
        groups = self.scheduler.optimizer.param_groups
        return any(float(g["lr"]) < v * 0.999 for g, v in zip(groups, self.start_lrs))

    def checks(self) -> int:
        """How many times a plateau scheduler has been stepped so far."""
        return int(getattr(self.scheduler, "last_epoch", 0))


def schedule_facts(value: ScheduleFacts | Mapping[str, Any]) -> ScheduleFacts:
    """``value`` as :class:`ScheduleFacts`; a mapping of its field names is accepted too.

    Example:
        >>> schedule_facts({"kind": "LambdaLR", "interval": "step"}).horizon is None
        True
    """
    if isinstance(value, ScheduleFacts):
        return value
    known = {f.name for f in fields(ScheduleFacts)}
    kwargs = {k: v for k, v in value.items() if k in known}
    if isinstance(kwargs.get("fn"), Mapping):
        kwargs["fn"] = ScheduleFn(**kwargs["fn"])
    if "start_lrs" in kwargs:
        kwargs["start_lrs"] = tuple(kwargs["start_lrs"])
    return ScheduleFacts(**kwargs)


def describe_schedule(config: Any) -> ScheduleFacts:
    """The facts of one of ``trainer.lr_scheduler_configs``."""
    sched = config.scheduler
    kind = type(sched).__name__
    common: dict[str, Any] = {"interval": config.interval, "frequency": config.frequency,
                              "monitor": config.monitor, "scheduler": sched}
    try:
        from ..schedules import PlateauWarmupStepper, ScheduledLR
    except ImportError:  # pragma: no cover
        ScheduledLR = PlateauWarmupStepper = ()  # type: ignore[assignment,misc]
    if isinstance(sched, ReduceLROnPlateau):
        start = [float(g["lr"]) for g in sched.optimizer.param_groups]
        plateau_lrs = getattr(sched, "plateau_lrs", None)
        if plateau_lrs:
            start = [float(v) for v in plateau_lrs]
        return ScheduleFacts(kind, plateau=True, patience=int(sched.patience), mode=sched.mode,
                             start_lrs=tuple(start), **common)
    if isinstance(sched, PlateauWarmupStepper):
        return ScheduleFacts(kind, constant=True, **common)  # only the warm-up of a plateau scheduler
    if isinstance(sched, ScheduledLR):
        fn = sched.lr_lambdas[0]
        name = getattr(fn, "kind", "")
        return ScheduleFacts(f"{getattr(fn, 'kind', 'schedule')} (ScheduledLR)",
                             horizon=int(getattr(fn, "total", 0)) or None,
                             fn=ScheduleFn(name, int(getattr(fn, "warmup", 0)), int(getattr(fn, "total", 0))),
                             constant=name == "constant" and not getattr(fn, "warmup", 0), **common)
    horizon = None
    for name, attr in _HORIZON_ATTRS:
        if kind == name and isinstance(getattr(sched, attr, None), (int, float)):
            horizon = int(getattr(sched, attr))
    return ScheduleFacts(kind, horizon=horizon, **common)
