"""From a constant-LR suggestion to the LR a scheduled run should be configured with, and writing it.

**Which LRs the test sweeps.** Every parameter group of the target optimizer keeps its ratio to a
reference LR: with :class:`~lightning_optkit.OptimMixin` the reference is the block's
``optimizer.lr`` (a ``backbone`` group at ``lr_scale: 0.1`` is swept at a tenth of it); without it,
the largest group LR. A group's LR is its ``initial_lr`` (the schedule's base) when a scheduler set
one, so a test at the start of a warm-up does not see the warm-up's zero.

**The schedule-aware peak rule.** A range test measures what a *constant* LR does. A schedule
spends most of its steps below its peak (warm-up, decay), so configuring the peak at the constant
suggestion trains with a lower LR on average than the test recommends. The rule: scale the whole LR
configuration by ``c`` so that the schedule's **mean LR over the remaining steps equals the
suggestion**, ``c = suggestion / mean(LR trace)``. For ``warmup_cosine`` (5% warm-up, floor 0.01)
and ``onecycle`` (pct_start 0.3) that puts the peak at about twice the suggestion; for ``wsd`` at
about 1.1 times; for a constant LR it is the suggestion itself. The trace is the live scheduler's:
a ``LambdaLR`` (every optkit schedule) is evaluated directly, any other torch scheduler is stepped
on a shadow copy; ``ReduceLROnPlateau`` counts as constant. ``benchmarks/lr_finder_quality.py``
compares this rule with "peak = suggestion" on its OneCycle and warm-up/cosine tasks.

**Writing it.** With the mixin, ``optimizer.lr`` of the block is set in the optim config (and, to
keep every ratio, absolute ``param_groups[i].lr`` and ``scheduler.min_lr`` are scaled by the same
factor), so the real fit, its checkpoints and a tuning run all read it. Otherwise every param
group's LR settings and the scheduler's base LRs are scaled in place.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._internal.optimizers import scale_lrs
from .._internal.training import optimizer_steps
from ..config import ConfigError, OptimConfig, load_config

__all__ = [
    "LRPlan",
    "ScheduleProfile",
    "apply_result",
    "config_source",
    "lr_plan",
    "schedule_profile",
    "write_config",
]

_MAX_SHADOW_STEPS = 200_000
_MAX_POINTS = 20_000


def config_source(module: nn.Module) -> tuple[str, Any] | None:
    """Where an :class:`~lightning_optkit.OptimMixin` module reads its config: ``("optim_config" | "hparams", value)``."""
    if not callable(getattr(module, "get_optim_config", None)):
        return None
    source = getattr(module, "optim_config", None)
    if source is not None:
        return "optim_config", source
    hparams = getattr(module, "hparams", None)
    if hparams is not None and "optim" in hparams:
        return "hparams", hparams["optim"]
    return None


def _mixin_config(module: nn.Module) -> OptimConfig | None:
    """The module's optim config, or ``None`` without the mixin or when it has no valid config
    (a mixin subclass with its own ``configure_optimizers``)."""
    if config_source(module) is None:
        return None
    try:
        return module.get_optim_config()  # type: ignore[operator, no-any-return]
    except ConfigError:
        return None


def _base(group: dict[str, Any]) -> float:
    value = group.get("initial_lr", group["lr"])
    return float(value.item() if isinstance(value, torch.Tensor) else value)


@dataclass(frozen=True)
class LRPlan:
    """How the test sets the LRs of the target optimizer: ``group_lr = reference_lr * ratios[i]``.

    Attributes:
        reference: what the swept LR stands for (``"optimizer.lr"`` or ``"optimizers.1.optimizer.lr"``
            with the mixin, ``"param_groups[2].lr"`` otherwise).
        configured: the reference's value in the current configuration.
        ratios: each group's LR divided by the reference.
        block: index of the optimizer block in the mixin config, or ``None`` without the mixin.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> opt = torch.optim.SGD([{"params": net[0].parameters(), "lr": 0.01},
        ...                        {"params": net[1].parameters(), "lr": 0.1}], lr=0.1)
        >>> plan = lr_plan(net, opt, 0)
        >>> plan.reference, [round(r, 6) for r in plan.ratios]
        ('param_groups[1].lr', [0.1, 1.0])
    """

    reference: str
    configured: float
    ratios: tuple[float, ...]
    block: int | None


def lr_plan(module: nn.Module, optimizer: torch.optim.Optimizer, index: int) -> LRPlan:
    """The :class:`LRPlan` of optimizer ``index`` of ``module`` (mixin config when there is one)."""
    bases = [_base(g) for g in optimizer.param_groups]
    cfg = _mixin_config(module)
    if cfg is not None:
        blocks = cfg.blocks()
        if index < len(blocks):
            prefix, block = blocks[index]
            ref = float(block.optimizer.lr)
            return LRPlan(f"{prefix}optimizer.lr", ref, tuple(b / ref for b in bases), index)
    top = max(range(len(bases)), key=lambda i: bases[i])
    ref = bases[top]
    if not (ref > 0 and math.isfinite(ref)):
        raise ConfigError("optimizer.param_groups", bases, "a positive, finite learning rate in some param group",
                          hint="the range test keeps each group's LR ratio; with every LR at 0 there is none")
    group = optimizer.param_groups[top]
    configured = group.get("max_lr", group.get("initial_lr", group["lr"]))
    configured = float(configured.item() if isinstance(configured, torch.Tensor) else configured)
    return LRPlan(f"param_groups[{top}].lr", configured, tuple(b / ref for b in bases), None)


@dataclass(frozen=True)
class ScheduleProfile:
    """The LR schedule ahead of the target optimizer, relative to its configured reference LR.

    Attributes:
        kind: ``"constant"``, an optkit schedule name (``"warmup_cosine"``) or a torch class name.
        mean_factor: mean over the remaining steps of ``reference-group LR / configured reference LR``.
        peak_factor: the same for the largest LR ahead.
        steps: how many remaining steps (or epochs, for ``interval: epoch``) the mean is over.

    Example:
        >>> profile = ScheduleProfile("warmup_cosine", mean_factor=0.5, peak_factor=1.0, steps=1000)
        >>> round(1 / profile.mean_factor, 2)  # the peak that has the suggestion's mean LR
        2.0
    """

    kind: str
    mean_factor: float = 1.0
    peak_factor: float = 1.0
    steps: int = 0


def _remaining_units(trainer: Any, interval: str) -> int | None:
    try:
        total, per_epoch = optimizer_steps(trainer)
    except (ConfigError, AttributeError, TypeError):
        return None
    if interval == "epoch":
        return max(len(per_epoch) - int(trainer.current_epoch), 0)
    return max(total - int(trainer.global_step), 0)


def _lambda_trace(sched: Any, group: int, trainer: Any, interval: str) -> list[float] | None:
    fn = sched.lr_lambdas[group]
    start = int(sched.last_epoch)
    total = getattr(fn, "total", None)
    if isinstance(total, int) and total > 0:
        stop = total
    else:
        remaining = _remaining_units(trainer, interval)
        if remaining is None:
            return None
        stop = start + remaining
    if stop <= start:
        return None
    n = stop - start
    points = range(start, stop) if n <= _MAX_POINTS else [start + round(i * (n - 1) / (_MAX_POINTS - 1)) for i in range(_MAX_POINTS)]
    lr_at = getattr(sched, "lr_at", None)  # optkit's: knows groups added during training
    if callable(lr_at):
        return [float(lr_at(group, s)) for s in points]
    base = sched.base_lrs[group]
    return [base * float(fn(s)) for s in points]


def _shadow_trace(sched: Any, optimizer: torch.optim.Optimizer, group: int, steps: int) -> list[float] | None:
    """LRs of ``group`` over ``steps`` steps of a copy of ``sched`` driving a copy of the groups' settings."""
    if steps <= 0 or steps > _MAX_SHADOW_STEPS:
        return None
    groups = [{**{k: copy.deepcopy(v) for k, v in g.items() if k != "params"},
               "params": [torch.zeros(1, requires_grad=True)]} for g in optimizer.param_groups]
    shadow = torch.optim.SGD(groups, lr=float(optimizer.defaults.get("lr", 1e-3) or 1e-3))
    try:
        twin = copy.deepcopy(sched, memo={id(optimizer): shadow})
    except Exception:  # a scheduler that cannot be copied: treat its schedule as unknown
        return None
    trace = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            trace.append(float(shadow.param_groups[group]["lr"]))
            twin.step()
    return trace


def schedule_profile(trainer: Any, optimizer: torch.optim.Optimizer, group: int, configured: float) -> ScheduleProfile:
    """The :class:`ScheduleProfile` of the scheduler(s) driving ``optimizer`` in ``trainer``.

    Several schedulers on one optimizer, a plateau schedule or a schedule whose length cannot be
    known count as constant.
    """
    from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

    from ..schedules import PlateauWarmupStepper

    configs = [c for c in getattr(trainer, "lr_scheduler_configs", []) or []
               if getattr(c.scheduler, "optimizer", None) is optimizer]
    configs = [c for c in configs if not isinstance(c.scheduler, PlateauWarmupStepper)]
    if not configs:
        return ScheduleProfile("constant")
    if len(configs) > 1:
        return ScheduleProfile("several")
    config = configs[0]
    sched = config.scheduler
    if isinstance(sched, ReduceLROnPlateau) or getattr(config, "reduce_on_plateau", False):
        return ScheduleProfile("plateau")
    interval = getattr(config, "interval", "step") or "step"
    kind = getattr(sched.lr_lambdas[group], "kind", None) if isinstance(sched, LambdaLR) else None
    kind = kind or type(sched).__name__
    if isinstance(sched, LambdaLR):
        trace = _lambda_trace(sched, group, trainer, interval)
    else:
        remaining = _remaining_units(trainer, interval)
        trace = _shadow_trace(sched, optimizer, group, remaining) if remaining is not None else None
    if not trace or configured <= 0:
        return ScheduleProfile(kind)
    mean = sum(trace) / len(trace) / configured
    peak = max(trace) / configured
    if not (mean > 0 and math.isfinite(mean)):
        return ScheduleProfile(kind)
    # a constant schedule gives 1 up to rounding of base * ratio / configured: call it 1
    mean, peak = (1.0 if math.isclose(v, 1.0, rel_tol=1e-9) else v for v in (mean, peak))
    return ScheduleProfile(kind, mean, peak, len(trace))


def write_config(module: nn.Module, block: int, lr: float) -> OptimConfig:
    """Set ``optimizer.lr`` of config block ``block`` to ``lr`` in the module's optim config, keeping ratios.

    Absolute ``param_groups[i].lr`` and ``scheduler.min_lr`` of the block are scaled by the same
    factor. The config is written back where the mixin reads it (``module.optim_config`` or
    ``module.hparams["optim"]``), in the same form (dict, :class:`OptimConfig`; a YAML path becomes
    a dict). Returns the new config.
    """
    where = config_source(module)
    if where is None:
        raise ConfigError("optim", None, "a module with OptimMixin and an optim config to write the LR into")
    cfg: OptimConfig = module.get_optim_config()  # type: ignore[operator]
    prefix, blk = cfg.blocks()[block]
    factor = lr / blk.optimizer.lr
    overrides: dict[str, Any] = {f"{prefix}optimizer.lr": float(lr)}
    for i, rule in enumerate(blk.param_groups):
        if rule.lr is not None:
            overrides[f"{prefix}param_groups.{i}.lr"] = float(rule.lr * factor)
    if blk.scheduler is not None and blk.scheduler.min_lr is not None:
        overrides[f"{prefix}scheduler.min_lr"] = float(blk.scheduler.min_lr * factor)
    new = load_config(cfg, overrides)
    kind, old = where
    value: Any = new if isinstance(old, OptimConfig) else new.to_dict()
    if kind == "optim_config":
        module.optim_config = value  # type: ignore[assignment]
    else:
        module.hparams["optim"] = value  # type: ignore[index, operator]
    return new


def _resuming(trainer: Any) -> bool:
    return getattr(trainer, "ckpt_path", None) is not None


def apply_result(trainer: Any, result: Any, index: int = 0) -> bool:
    """Write ``result.recommended_lr`` for optimizer ``index`` of ``trainer``; returns whether it did.

    With the mixin the optim config is updated (:func:`write_config`). Before the first optimizer
    step of a fresh fit the live optimizers and schedulers then take the settings of a fresh build
    from the new config (so the fit is exactly a fit started with that config; the objects, and the
    hooks other callbacks put on them, are kept); later, or without the mixin, the live optimizer
    and scheduler LRs are scaled in place, keeping the optimizer state.
    """
    lr = getattr(result, "recommended_lr", None)
    if lr is None or not (lr > 0 and math.isfinite(lr)):
        return False
    module = trainer.lightning_module
    optimizer = trainer.optimizers[index]
    plan = lr_plan(module, optimizer, index)
    schedulers = [c.scheduler for c in trainer.lr_scheduler_configs]
    fresh = int(trainer.global_step) == 0 and not _resuming(trainer) and all(not o.state for o in trainer.optimizers)
    if plan.block is not None:
        cfg = write_config(module, plan.block, lr)
        if fresh and _take_values_from_a_fresh_build(trainer, module, cfg):
            return True
    scale_lrs(optimizer, schedulers, lr / plan.configured)
    return True


def _take_values_from_a_fresh_build(trainer: Any, module: nn.Module, cfg: OptimConfig) -> bool:
    """Give the live optimizers and schedulers the settings of a fresh build from ``cfg``.

    The objects are kept (other callbacks hold them and have hooks on them); their param-group
    settings and scheduler states are taken from a throw-away ``build_optimizers`` of the new config,
    so the fit is exactly a fit started with that config. Returns ``False`` (nothing changed) when
    the fresh build does not line up with the live objects.
    """
    from ..mixin import build_optimizers

    live_opts = list(trainer.optimizers)
    live_scheds = [c.scheduler for c in trainer.lr_scheduler_configs]
    built = build_optimizers(module, cfg, trainer, log=False)  # a throw-away: the live optimizer is logged
    opts, configs = ([built], []) if isinstance(built, torch.optim.Optimizer) else built
    scheds = [c["scheduler"] for c in configs]
    if len(opts) != len(live_opts) or len(scheds) != len(live_scheds):
        return False
    for new, old in zip(opts, live_opts):
        if type(new) is not type(old) or len(new.param_groups) != len(old.param_groups):
            return False
        for ng, og in zip(new.param_groups, old.param_groups):
            if [id(p) for p in ng["params"]] != [id(p) for p in og["params"]]:
                return False
    for new_s, old_s in zip(scheds, live_scheds):
        if type(new_s) is not type(old_s):
            return False
    for new, old in zip(opts, live_opts):
        for ng, og in zip(new.param_groups, old.param_groups):
            og.update({k: v for k, v in ng.items() if k != "params"})
    for new_s, old_s in zip(scheds, live_scheds):
        old_s.load_state_dict(new_s.state_dict())
    return True
