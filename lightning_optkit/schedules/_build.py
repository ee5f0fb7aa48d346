"""Turn a ``scheduler:`` block into Lightning scheduler configs, resolving every duration once."""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer

from ..config import ConfigError, OptimBlock, TrainingLength, parse_duration
from ._adapters import PlateauWarmupStepper, ScheduledLR, WarmupReduceLROnPlateau
from ._functions import MomentumFn, ScheduleFn
from ._registry import lookup, resolve_dotted_scheduler

__all__ = ["build_scheduler", "resolved_settings"]


def _units(interval: str, length: TrainingLength) -> int:
    return length.total_steps if interval == "step" else len(length.steps_per_epoch)


def _resolve(raw: Any, interval: str, length: TrainingLength, path: str) -> int:
    dur = parse_duration(raw, path)
    if interval == "step":
        return dur.steps(length, path)
    return dur.epochs(length, len(length.steps_per_epoch), path)


def resolved_settings(block: OptimBlock, length: TrainingLength, prefix: str = "") -> dict[str, Any]:
    """The schedule's numbers after resolution: kind, interval, total, warmup, floor and params.

    Example:
        >>> from lightning_optkit.config import load_config
        >>> cfg = load_config({"optimizer": {"name": "sgd", "lr": 0.1},
        ...                    "scheduler": {"name": "warmup_cosine", "warmup": "10%"}})
        >>> r = resolved_settings(cfg.blocks()[0][1], TrainingLength(200, (20,) * 10))
        >>> r["total"], r["warmup"]
        (200, 20)
    """
    sched = block.scheduler
    assert sched is not None
    p = f"{prefix}scheduler"
    info = lookup(sched.name)
    assert info is not None, sched.name
    interval = sched.interval or info.interval
    total = _units(interval, length)
    unit = "optimizer steps" if interval == "step" else "epochs"
    if total <= 0:
        raise ConfigError(f"{p}.interval", interval, f"a training of at least one {unit[:-1]} (the trainer gives {total})")
    # plateau's warm-up runs per optimizer step, whatever interval its metric checks use
    warmup = _resolve(sched.warmup, "step" if info.name == "plateau" else interval, length, f"{p}.warmup")
    if info.name == "plateau":
        total = length.total_steps
    if warmup and warmup >= total:
        raise ConfigError(f"{p}.warmup", sched.warmup,
                          f"a warm-up shorter than training ({warmup} >= {total} {unit})",
                          hint="shorten the warm-up or train longer")
    lr = block.optimizer.lr
    floor = 0.0
    if sched.min_lr_ratio is not None:
        floor = sched.min_lr_ratio
    elif sched.min_lr is not None:
        floor = sched.min_lr / lr
    settings = {k: v for k, (v, _c) in info.settings.items()}
    settings.update(sched.kwargs)
    warmup_start = float(settings.pop("warmup_start", 0.0))
    n = total - warmup
    params: dict[str, Any] = {}
    kind = info.name
    if kind == "cosine_restarts":
        cycle = _resolve(settings["cycle"], interval, length, f"{p}.cycle")
        if cycle < 1:
            raise ConfigError(f"{p}.cycle", settings["cycle"], f"at least one {unit[:-1]}")
        params = {"cycle": cycle, "cycle_mult": float(settings["cycle_mult"]), "peak_decay": float(settings["peak_decay"])}
    elif kind == "polynomial":
        params = {"power": float(settings["power"])}
    elif kind == "inverse_sqrt":
        params = {"timescale": float(settings["timescale"] or (warmup or 10_000))}
    elif kind == "wsd":
        decay = _resolve(settings["decay"], interval, length, f"{p}.decay")
        if decay > n:
            raise ConfigError(f"{p}.decay", settings["decay"], f"at most the {n} {unit} after the warm-up")
        params = {"decay_steps": decay, "decay_shape": settings["decay_shape"]}
    elif kind == "step":
        size = _resolve(settings["step_size"], interval, length, f"{p}.step_size")
        if size < 1:
            raise ConfigError(f"{p}.step_size", settings["step_size"], f"at least one {unit[:-1]}")
        params = {"step_size": size, "gamma": float(settings["gamma"])}
    elif kind == "multistep":
        stones = [_resolve(m, interval, length, f"{p}.milestones.{i}") for i, m in enumerate(settings["milestones"])]
        if stones != sorted(stones):
            raise ConfigError(f"{p}.milestones", settings["milestones"], "milestones in increasing order")
        if warmup and stones[0] < warmup:
            raise ConfigError(f"{p}.milestones", settings["milestones"],
                              f"milestones after the warm-up ({warmup} {unit}); they count from the start of training")
        params = {"milestones": [m - warmup for m in stones], "gamma": float(settings["gamma"])}
    elif kind == "exponential":
        params = {"gamma": float(settings["gamma"])}
    elif kind == "onecycle":
        if n < 2:
            raise ConfigError(f"{p}.name", sched.name, "a training of at least 2 optimizer steps for onecycle")
        params = {k: settings[k] for k in ("pct_start", "div_factor", "final_div_factor", "anneal_strategy", "three_phase")}
    elif kind == "plateau":
        params = {k: settings[k] for k in ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "eps")}
    return {"kind": kind, "interval": interval, "total": total, "warmup": warmup, "warmup_start": warmup_start,
            "floor": floor, "params": params, "settings": settings}


def _momentum(optimizer: Optimizer, settings: dict[str, Any], total: int, path: str) -> MomentumFn | None:
    wanted = settings["cycle_momentum"]
    defaults = optimizer.defaults
    has = "betas" in defaults or ("momentum" in defaults and float(defaults.get("momentum") or 0) > 0)
    if wanted is True and "betas" not in defaults and "momentum" not in defaults:
        raise ConfigError(f"{path}.cycle_momentum", True,
                          f"false: {type(optimizer).__name__} has neither momentum nor betas")
    if wanted is False or (wanted == "auto" and not has):
        return None
    keys = ("pct_start", "anneal_strategy", "three_phase", "base_momentum", "max_momentum")
    return MomentumFn(total, {k: settings[k] for k in keys})


def build_scheduler(
    block: OptimBlock, optimizer: Optimizer, length: TrainingLength, prefix: str = "", name: str | None = None
) -> list[dict[str, Any]]:
    """Lightning ``lr_scheduler`` configs for ``block.scheduler`` (an empty list when there is none).

    Example:
        >>> import torch
        >>> from lightning_optkit.config import load_config
        >>> cfg = load_config({"optimizer": {"name": "sgd", "lr": 0.1},
        ...                    "scheduler": {"name": "onecycle"}})
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
        >>> [c["interval"] for c in build_scheduler(cfg.blocks()[0][1], opt, TrainingLength(100, (10,) * 10))]
        ['step']
    """
    sched = block.scheduler
    if sched is None:
        return []
    p = f"{prefix}scheduler"
    label = name or f"lr-{type(optimizer).__name__}"
    if "." in sched.name:
        cls = resolve_dotted_scheduler(sched.name, f"{p}.name")
        try:
            obj = cls(optimizer, **sched.kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(p, sched.kwargs, f"arguments {cls.__name__} accepts ({exc})") from None
        entry = {"scheduler": obj, "interval": sched.interval or "step", "frequency": 1, "name": label}
        if sched.monitor:
            entry["monitor"] = sched.monitor
        return [entry]
    r = resolved_settings(block, length, prefix)
    if r["kind"] == "plateau":
        plateau = WarmupReduceLROnPlateau(
            optimizer, warmup_steps=_resolve(sched.warmup, "step", length, f"{p}.warmup"),
            warmup_start=r["warmup_start"], min_lr=[float(g["lr"]) * r["floor"] for g in optimizer.param_groups],
            **r["params"],
        )
        entries = [{"scheduler": plateau, "interval": r["interval"], "frequency": 1, "name": label,
                    "monitor": sched.monitor, "strict": True, "reduce_on_plateau": True}]
        if plateau.warmup_steps:
            entries.append({"scheduler": PlateauWarmupStepper(plateau), "interval": "step", "frequency": 1,
                            "name": f"{label}-warmup", "reduce_on_plateau": False})
        return entries
    def make(params: dict[str, Any]) -> ScheduleFn:
        return ScheduleFn(r["kind"], total=r["total"], warmup=r["warmup"], warmup_start=r["warmup_start"],
                          floor=r["floor"], params=params)

    fn: ScheduleFn | list[ScheduleFn]
    if r["kind"] == "onecycle":  # per group, in the group's own units, to round as torch does
        fn = [make({**r["params"], "max_lr": float(g["lr"])}) for g in optimizer.param_groups]
    else:
        fn = make(r["params"])
    momentum = _momentum(optimizer, r["settings"], r["total"], p) if r["kind"] == "onecycle" else None
    return [{"scheduler": ScheduledLR(optimizer, fn, momentum), "interval": r["interval"], "frequency": 1,
             "name": label}]
