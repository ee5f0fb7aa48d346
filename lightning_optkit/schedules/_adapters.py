"""torch scheduler objects around the pure schedule functions."""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from ._functions import MomentumFn, ScheduleFn

__all__ = ["PlateauWarmupStepper", "ScheduledLR", "WarmupReduceLROnPlateau"]


def _set_momentum(group: dict[str, Any], value: float) -> None:
    if "betas" in group:
        group["betas"] = (value, *tuple(group["betas"])[1:])
    elif "momentum" in group:
        group["momentum"] = value


class ScheduledLR(LambdaLR):
    """A :class:`~torch.optim.lr_scheduler.LambdaLR` over a :class:`ScheduleFn`, optionally cycling momentum.

    ``last_epoch`` counts optimizer steps (or epochs for ``interval: epoch``). The state dict holds
    only plain values, so resume is exact and checkpoints load with ``weights_only=True``.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> sched = ScheduledLR(opt, ScheduleFn("warmup_cosine", total=10, warmup=2))
        >>> opt.param_groups[0]["lr"]
        0.0
    """

    def __init__(
        self, optimizer: Optimizer, fn: ScheduleFn | list[ScheduleFn], momentum: MomentumFn | None = None
    ) -> None:
        self.momentum_fn = momentum
        super().__init__(optimizer, fn)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        # Groups usually share one ScheduleFn: evaluate it once per step, not once per group.
        factors: dict[int, float] = {}
        out = []
        for fn, base in zip(self.lr_lambdas, self.base_lrs):
            key = id(fn)
            if key not in factors:
                factors[key] = fn(self.last_epoch)
            out.append(base * factors[key])
        return out

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        super().step(epoch)
        if self.momentum_fn is not None:
            value = self.momentum_fn(self.last_epoch)
            for group in self.optimizer.param_groups:
                _set_momentum(group, value)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        fn = state.pop("momentum_fn", None)
        state["momentum_fn"] = None if fn is None else dict(fn.__dict__)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        mom = state.pop("momentum_fn", None)
        super().load_state_dict(state)
        if mom is not None and self.momentum_fn is not None:
            self.momentum_fn.__dict__.update(mom)


class WarmupReduceLROnPlateau(ReduceLROnPlateau):
    """ReduceLROnPlateau with an optional linear warm-up (counted in optimizer steps) before it.

    During the warm-up the LR rises from ``warmup_start * lr`` to ``lr`` and monitored values are
    ignored (they are not counted as bad epochs). After it, ``step(metric)`` behaves exactly as
    torch's :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau`. The warm-up is advanced by
    :meth:`warmup_step`, which Lightning calls every optimizer step through a
    :class:`PlateauWarmupStepper`. Every counter is in :meth:`state_dict`.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = WarmupReduceLROnPlateau(opt, warmup_steps=4, patience=0)
        >>> for _ in range(4):
        ...     sched.warmup_step()
        >>> opt.param_groups[0]["lr"]
        1.0
    """

    def __init__(
        self, optimizer: Optimizer, warmup_steps: int = 0, warmup_start: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(optimizer, **kwargs)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start = float(warmup_start)
        self.optimizer_steps = 0
        self.plateau_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self._apply_warmup()

    def _warm_factor(self) -> float:
        s, w = self.optimizer_steps, self.warmup_steps
        return 1.0 if s >= w else self.warmup_start + (1.0 - self.warmup_start) * s / w

    def _apply_warmup(self) -> None:
        factor = self._warm_factor()
        for group, lr in zip(self.optimizer.param_groups, self.plateau_lrs):
            group["lr"] = lr * factor
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]

    @property
    def in_warmup(self) -> bool:
        return self.optimizer_steps < self.warmup_steps

    def warmup_step(self) -> None:
        """Advance the warm-up by one optimizer step (a no-op once it is over)."""
        was_warm = self.in_warmup
        self.optimizer_steps += 1
        if was_warm:
            self._apply_warmup()

    def step(self, metrics: Any, epoch: int | None = None) -> None:  # type: ignore[override]
        if self.in_warmup:
            self.last_epoch += 1
            return
        super().step(metrics, epoch)
        self.plateau_lrs = [float(g["lr"]) for g in self.optimizer.param_groups]


class PlateauWarmupStepper(LRScheduler):
    """The per-step face of a :class:`WarmupReduceLROnPlateau`: ``step()`` advances its warm-up.

    Lightning steps it with ``interval: step``; it holds no state of its own (the plateau scheduler's
    ``state_dict`` has every counter).
    """

    def __init__(self, plateau: WarmupReduceLROnPlateau) -> None:  # no super().__init__: owns no LR
        self.plateau = plateau
        self.optimizer = plateau.optimizer

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        self.plateau.warmup_step()

    def get_last_lr(self) -> list[float]:
        return list(self.plateau._last_lr)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return None
