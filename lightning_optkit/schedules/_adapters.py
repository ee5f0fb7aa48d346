"""torch scheduler objects around the pure schedule functions."""

from __future__ import annotations

import copy
import functools
import math
import weakref
from typing import Any

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from ._functions import CHAINED_KINDS, MomentumFn, ScheduleFn

__all__ = ["PlateauWarmupStepper", "ScheduledLR", "WarmupReduceLROnPlateau", "follow_param_groups"]


def _set_momentum(group: dict[str, Any], value: float) -> None:
    if "betas" in group:
        group["betas"] = (value, *tuple(group["betas"])[1:])
    elif "momentum" in group:
        group["momentum"] = value


def _on_device(value: Any) -> bool:
    return isinstance(value, Tensor) and value.device.type != "cpu"


def _lr_value(group: dict[str, Any]) -> float:
    value = group["lr"]
    return float(value.item() if isinstance(value, Tensor) else value)


class ScheduledLR(LambdaLR):
    """A :class:`~torch.optim.lr_scheduler.LambdaLR` over a :class:`ScheduleFn`, optionally cycling momentum.

    ``last_epoch`` counts optimizer steps (or epochs for ``interval: epoch``). The state dict holds
    only plain values, so resume is exact and checkpoints load with ``weights_only=True``.

    **It follows the optimizer's groups.** A param group added during training (Lightning's
    ``BaseFinetuning.unfreeze_and_add_param_group``) keeps the LR it was added with and from then on
    moves by the same factor as its peers: at step ``t`` its LR is ``lr_added * f(t) / f(s)``, ``s``
    the step it was added at (a group added where the factor is 0 takes its LR as its peak). A group
    whose LR was set from outside the scheduler (``BackboneFinetuning`` sets the backbone's LR each
    epoch) continues the same way from the LR it was given, as torch's chainable schedulers do.
    ``multistep`` and ``step`` multiply the LR by ``gamma`` at each milestone passed, in torch's
    order, so they equal ``MultiStepLR``/``StepLR`` bit for bit, with added groups too.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> sched = ScheduledLR(opt, ScheduleFn("multistep", total=10, params={"milestones": [2], "gamma": 0.5}))
        >>> opt.step(); sched.step(); opt.step(); sched.step()
        >>> opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.01})
        >>> opt.step(); sched.step()
        >>> [g["lr"] for g in opt.param_groups]  # the new group keeps its LR, both move together later
        [0.05, 0.01]
    """

    def __init__(
        self, optimizer: Optimizer, fn: ScheduleFn | list[ScheduleFn], momentum: MomentumFn | None = None
    ) -> None:
        self.momentum_fn = momentum
        n = len(optimizer.param_groups)
        # per group: None (configured: base_lrs is its peak LR) or the step its base LR was taken at
        self.anchor_steps: list[int | None] = [None] * n
        self.anchor_factors: list[float] = [1.0] * n  # the schedule's factor at that step
        super().__init__(optimizer, fn)
        if momentum is not None:  # a group added between steps gets its momentum before its first update
            optimizer.register_step_pre_hook(functools.partial(_adopt_before_step, weakref.ref(self)))

    def lr_at(self, index: int, step: int) -> float:
        """The LR of param group ``index`` at ``step`` (what :meth:`step` sets when it reaches ``step``)."""
        fn, base = self.lr_lambdas[index], self.base_lrs[index]
        since, ref = self.anchor_steps[index], self.anchor_factors[index]
        chained = fn.chained(base, step, since, ref) if isinstance(fn, ScheduleFn) else None
        if chained is not None:
            return chained
        if since is None:
            return base * fn(step)
        return base * fn(step) / ref

    def get_lr(self) -> list[float]:  # type: ignore[override]
        # Configured groups usually share one ScheduleFn: evaluate it once per step, not once per group.
        factors: dict[int, float] = {}
        chains: dict[int, list[float] | None] = {}
        out = []
        for i, (fn, base) in enumerate(zip(self.lr_lambdas, self.base_lrs)):
            if self.anchor_steps[i] is not None:
                out.append(self.lr_at(i, self.last_epoch))
                continue
            if getattr(fn, "kind", None) in CHAINED_KINDS:  # the milestones' gammas, found once per step
                key = id(fn)
                if key not in chains:
                    chains[key] = fn.chain(self.last_epoch)
                gammas = chains[key]
                if gammas is None:
                    out.append(self.lr_at(i, self.last_epoch))
                    continue
                lr = base
                for g in gammas:
                    lr = lr * g
                out.append(max(lr, base * fn.floor) if fn.floor > 0 else lr)
                continue
            key = id(fn)
            if key not in factors:
                factors[key] = fn(self.last_epoch)
            out.append(base * factors[key])
        return out

    def follow_param_groups(self) -> None:
        """Take in param groups added, or whose LR was set, since the last step (:meth:`step` calls it).

        Such a group is anchored at the current step with its current LR; see the class docstring.
        """
        last = getattr(self, "_last_lr", None)
        if last is None:  # the initial step of __init__
            return
        groups = self.optimizer.param_groups
        if len(groups) == len(self.base_lrs) == len(last):  # fast path: no group added, none set from outside
            current = [g["lr"] for g in groups]
            if all(type(v) is float for v in current) and current == last:
                return
        seen = list(last)
        for i, group in enumerate(self.optimizer.param_groups):
            known = i < len(self.base_lrs) and i < len(seen)
            if known and _on_device(group["lr"]):
                continue  # a device-tensor LR is not read back each step (no host sync): only new groups are
            lr = _lr_value(group)
            if known and lr == float(seen[i]):
                continue
            if i >= len(self.base_lrs):
                if i >= len(self.lr_lambdas):
                    self.lr_lambdas.append(self.lr_lambdas[0])
                self.base_lrs.append(lr)
                self.anchor_steps.append(None)
                self.anchor_factors.append(1.0)
            self._anchor(i, group, lr)
            seen[i:i + 1] = [lr]  # replaces, or appends for a new group
        self._last_lr = seen

    def _anchor(self, index: int, group: dict[str, Any], lr: float) -> None:
        factor = float(self.lr_lambdas[index](self.last_epoch))
        self.base_lrs[index] = lr
        if factor > 0 and math.isfinite(factor):
            self.anchor_steps[index], self.anchor_factors[index] = int(self.last_epoch), factor
            group["initial_lr"] = lr / factor  # the LR this group would have at the schedule's peak
        else:  # at a factor of 0 (start of a warm-up) the LR given is the group's peak
            self.anchor_steps[index], self.anchor_factors[index] = None, 1.0
            group["initial_lr"] = lr

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        self.follow_param_groups()
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
        saved = state.get("lr_lambdas") or []
        while len(self.lr_lambdas) < len(saved):  # groups added during the run that saved this state
            self.lr_lambdas.append(copy.copy(self.lr_lambdas[0]))
        if saved:
            del self.lr_lambdas[len(saved):]  # a state from before groups were added (a restored snapshot)
        n = len(state.get("base_lrs", self.base_lrs))
        state.setdefault("anchor_steps", [None] * n)  # a state saved before groups were followed
        state.setdefault("anchor_factors", [1.0] * n)
        super().load_state_dict(state)
        if mom is not None and self.momentum_fn is not None:
            self.momentum_fn.__dict__.update(mom)


def _adopt_before_step(ref: Any, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    """Optimizer pre-step hook of a momentum-cycling :class:`ScheduledLR`: new groups get the momentum now."""
    sched = ref()
    if sched is None or len(optimizer.param_groups) <= len(sched.base_lrs):
        return
    known = len(sched.base_lrs)
    sched.follow_param_groups()
    value = sched.momentum_fn(sched.last_epoch)
    for group in optimizer.param_groups[known:]:
        _set_momentum(group, value)


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

    def follow_param_groups(self) -> None:
        """Take in param groups added, or whose LR was set, since the last step (both steps call it).

        A new group keeps the LR it was added with: during the warm-up that LR is divided by the
        current warm-up factor (it rises with its peers), and its ``min_lr`` has the same ratio to its
        LR as the first group's. After the warm-up the plateau cuts every group's current LR, as torch does.
        """
        groups = self.optimizer.param_groups
        warm = self.in_warmup
        factor = self._warm_factor()
        seen = list(self._last_lr)
        for i, group in enumerate(groups):
            known = i < len(self.plateau_lrs) and i < len(seen)
            if known and (not warm or _on_device(group["lr"])):
                continue  # after the warm-up the plateau works on the groups' LRs themselves
            lr = _lr_value(group)
            if known and lr == float(seen[i]):
                continue
            base = lr / factor if warm and factor > 0 else lr
            if i >= len(self.plateau_lrs):
                self.plateau_lrs.append(base)
            else:
                self.plateau_lrs[i] = base
            if i >= len(self.min_lrs):
                self.min_lrs.append(base * self._floor_ratio())
            seen[i:i + 1] = [lr]
        self._last_lr = seen

    def _floor_ratio(self) -> float:
        for lr, low in zip(self.plateau_lrs, self.min_lrs):
            if lr > 0:
                return float(low) / lr
        return 0.0

    def warmup_step(self) -> None:
        """Advance the warm-up by one optimizer step (a no-op once it is over)."""
        self.follow_param_groups()
        was_warm = self.in_warmup
        self.optimizer_steps += 1
        if was_warm:
            self._apply_warmup()

    def step(self, metrics: Any, epoch: int | None = None) -> None:  # type: ignore[override]
        self.follow_param_groups()
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


def follow_param_groups(schedulers: Any) -> None:
    """Let every optkit scheduler in ``schedulers`` take in the param groups added since its last step.

    Call it before reading or scaling the groups' base LRs between steps (the LR finder, the
    non-finite guard): a group added at an epoch start is otherwise known only at the next step.
    """
    for sched in schedulers:
        follow = getattr(sched, "follow_param_groups", None)
        if callable(follow):
            follow()
