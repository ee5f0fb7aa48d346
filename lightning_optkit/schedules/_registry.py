"""The schedule registry: names, their settings with defaults and checks, and the load-time validator."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._internal.checks import in_interval
from .._internal.imports import locate
from ..config import ConfigError, OptimConfig, did_you_mean, parse_duration, register_validator

__all__ = ["SCHEDULES", "ScheduleInfo", "resolve_dotted_scheduler", "validate_scheduler"]

_REQUIRED = object()
Check = Callable[[Any], str | None]  # returns what is expected when the value is bad


def _num(lo: float | None = None, hi: float | None = None, lo_open: bool = True, hi_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        return None if in_interval(v, lo, hi, lo_open=lo_open, hi_open=hi_open) else _range_text(lo, hi, lo_open, hi_open)

    return check


def _range_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return f"a finite number in {left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"


def _choice(*options: Any) -> Check:
    def check(v: Any) -> str | None:
        return None if v in options else "one of " + ", ".join(repr(o) for o in options)

    return check


def _duration(v: Any) -> str | None:
    try:
        parse_duration(v)
    except ConfigError as err:
        return err.expected
    return None


def _durations(v: Any) -> str | None:
    if not isinstance(v, (list, tuple)) or not v:
        return "a non-empty list of durations (e.g. [30, 60] or ['30 epochs', '60 epochs'])"
    for item in v:
        bad = _duration(item)
        if bad:
            return "a list of durations: " + bad
    return None


def _boolish(v: Any) -> str | None:
    return None if v in (True, False, "auto") else "true, false or 'auto'"


def _flag(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


@dataclass(frozen=True)
class ScheduleInfo:
    """One built-in schedule: its settings (default or required, and a check) and default interval."""

    name: str
    settings: dict[str, tuple[Any, Check]] = field(default_factory=dict)
    interval: str = "step"
    warmup: bool = True
    floor: bool = True
    aliases: tuple[str, ...] = ()
    summary: str = ""


_WARMUP_START = {"warmup_start": (0.0, _num(0.0, 1.0, lo_open=False, hi_open=True))}

SCHEDULES: dict[str, ScheduleInfo] = {
    info.name: info
    for info in (
        ScheduleInfo("constant", dict(_WARMUP_START), floor=False, summary="flat after the warm-up"),
        ScheduleInfo("warmup_cosine", dict(_WARMUP_START), aliases=("cosine", "cosine_warmup"),
                     summary="linear warm-up, half-cosine decay to the floor at the last step"),
        ScheduleInfo(
            "cosine_restarts",
            {**_WARMUP_START, "cycle": ("25%", _duration), "cycle_mult": (1.0, _num(0.0, 100.0)),
             "peak_decay": (1.0, _num(0.0, 1.0))},
            aliases=("sgdr", "cosine_warm_restarts"), summary="SGDR cosine cycles",
        ),
        ScheduleInfo("linear", dict(_WARMUP_START), aliases=("linear_decay",), summary="linear decay"),
        ScheduleInfo("polynomial", {**_WARMUP_START, "power": (1.0, _num(0.0, 100.0))}, aliases=("poly",),
                     summary="(1 - progress) ** power, as HuggingFace's polynomial decay"),
        ScheduleInfo("inverse_sqrt", {**_WARMUP_START, "timescale": (None, _num(0.0))}, aliases=("rsqrt",),
                     summary="1/sqrt decay after the warm-up, as HuggingFace's"),
        ScheduleInfo(
            "wsd",
            {**_WARMUP_START, "decay": ("10%", _duration), "decay_shape": ("linear", _choice("linear", "cosine", "sqrt"))},
            aliases=("warmup_stable_decay", "trapezoid"), summary="warm-up, stable, short decay at the end",
        ),
        ScheduleInfo("step", {**_WARMUP_START, "step_size": (_REQUIRED, _duration), "gamma": (0.1, _num(0.0, 1.0))},
                     aliases=("steplr",), summary="times gamma every step_size"),
        ScheduleInfo(
            "multistep", {**_WARMUP_START, "milestones": (_REQUIRED, _durations), "gamma": (0.1, _num(0.0, 1.0))},
            aliases=("multisteplr", "multi_step"), summary="times gamma at each milestone",
        ),
        ScheduleInfo("exponential", {**_WARMUP_START, "gamma": (_REQUIRED, _num(0.0, 1.0))}, aliases=("exp",),
                     summary="times gamma every interval"),
        ScheduleInfo(
            "onecycle",
            {
                "pct_start": (0.3, _num(0.0, 1.0, hi_open=True)),
                "div_factor": (25.0, _num(1.0, 1e12, lo_open=False)),
                "final_div_factor": (1e4, _num(1.0, 1e12, lo_open=False)),
                "anneal_strategy": ("cos", _choice("cos", "linear")),
                "three_phase": (False, _flag),
                "cycle_momentum": ("auto", _boolish),
                "base_momentum": (0.85, _num(0.0, 1.0, lo_open=False, hi_open=True)),
                "max_momentum": (0.95, _num(0.0, 1.0, lo_open=False, hi_open=True)),
            },
            warmup=False, floor=False, aliases=("one_cycle", "1cycle", "onecyclelr"),
            summary="torch's OneCycleLR (its own warm-up: pct_start)",
        ),
        ScheduleInfo(
            "plateau",
            {
                **_WARMUP_START,
                "mode": ("min", _choice("min", "max")),
                "factor": (0.1, _num(0.0, 1.0, hi_open=True)),
                "patience": (10, _num(-1.0)),
                "threshold": (1e-4, _num(0.0, None, lo_open=False)),
                "threshold_mode": ("rel", _choice("rel", "abs")),
                "cooldown": (0, _num(-1.0)),
                "eps": (1e-8, _num(0.0, None, lo_open=False)),
            },
            interval="epoch", floor=True, aliases=("reduce_on_plateau", "reducelronplateau"),
            summary="ReduceLROnPlateau on a monitored metric, optional warm-up before it",
        ),
    )
}
_ALIASES = {alias: info.name for info in SCHEDULES.values() for alias in (info.name, *info.aliases)}


_COMMON_KEYS = ("name", "warmup", "min_lr", "min_lr_ratio", "interval", "monitor")


def lookup(name: str) -> ScheduleInfo | None:
    key = name.lower().replace("-", "_")
    canonical = _ALIASES.get(key) or _ALIASES.get(key.replace("_", ""))
    return SCHEDULES.get(canonical) if canonical else None


def resolve_dotted_scheduler(name: str, path: str) -> type:
    """Import an LR scheduler class named by a dotted path (``torch.optim.lr_scheduler.StepLR``)."""
    try:
        obj = locate(name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(path, name, "an importable LR scheduler class (module.Class)") from None
    from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

    if not (inspect.isclass(obj) and issubclass(obj, (LRScheduler, ReduceLROnPlateau))):
        raise ConfigError(path, name, "a subclass of torch.optim.lr_scheduler.LRScheduler")
    return obj


def _valid_names() -> list[str]:
    return sorted(SCHEDULES)


def validate_scheduler(cfg: OptimConfig) -> None:
    """Load-time checks of every ``scheduler:`` block (names, settings, monitor, interval)."""
    for prefix, block in cfg.blocks():
        sched = block.scheduler
        if sched is None:
            continue
        p = f"{prefix}scheduler"
        kwargs = sched.kwargs
        if "." in sched.name:
            cls = resolve_dotted_scheduler(sched.name, f"{p}.name")
            for key in ("min_lr", "min_lr_ratio"):
                if getattr(sched, key) is not None:
                    raise ConfigError(f"{p}.{key}", getattr(sched, key), f"nothing: {key} applies to built-in schedules",
                                      hint="pass the class's own argument (e.g. eta_min) instead")
            if parse_duration(sched.warmup).value:
                raise ConfigError(f"{p}.warmup", sched.warmup, "0 with a dotted-path scheduler",
                                  hint="use a built-in schedule, or compose warm-up yourself with SequentialLR")
            _check_signature(cls, kwargs, p, skip=("optimizer",))
            from torch.optim.lr_scheduler import ReduceLROnPlateau

            if issubclass(cls, ReduceLROnPlateau) and not sched.monitor:
                raise ConfigError(f"{p}.monitor", expected="the name of a logged metric for ReduceLROnPlateau")
            continue
        info = lookup(sched.name)
        if info is None:
            names = _valid_names() + [a for i in SCHEDULES.values() for a in i.aliases]
            raise ConfigError(f"{p}.name", sched.name, "one of " + ", ".join(_valid_names()) +
                              " or a dotted path to a torch LRScheduler",
                              suggestions=[_ALIASES[s] for s in did_you_mean(sched.name, names)][:1])
        for key, value in kwargs.items():
            if key not in info.settings:
                valid = sorted(info.settings) + list(_COMMON_KEYS)
                raise ConfigError(f"{p}.{key}", value, f"a setting of '{info.name}': {', '.join(valid)}",
                                  suggestions=did_you_mean(key, valid))
            bad = info.settings[key][1](value)
            if bad:
                raise ConfigError(f"{p}.{key}", value, bad)
        for key, (default, _check) in info.settings.items():
            if default is _REQUIRED and key not in kwargs:
                raise ConfigError(f"{p}.{key}", expected=f"a value: '{info.name}' needs {key}")
        if not info.warmup and parse_duration(sched.warmup).value:
            raise ConfigError(f"{p}.warmup", sched.warmup, f"no warm-up with '{info.name}'",
                              hint="onecycle warms up on its own: set pct_start instead")
        if not info.floor and (sched.min_lr is not None or sched.min_lr_ratio is not None):
            key = "min_lr" if sched.min_lr is not None else "min_lr_ratio"
            raise ConfigError(f"{p}.{key}", getattr(sched, key), f"nothing: '{info.name}' has no floor",
                              hint="onecycle's end is set by div_factor and final_div_factor")
        if info.name == "plateau":
            if not sched.monitor:
                raise ConfigError(f"{p}.monitor", expected="the name of a logged metric (e.g. 'val_loss')",
                                  hint="plateau reduces the LR when this metric stops improving")
        elif sched.monitor is not None:
            raise ConfigError(f"{p}.monitor", sched.monitor, "nothing: only 'plateau' reads a monitored metric")
        if sched.min_lr is not None and sched.min_lr > block.optimizer.lr:
            raise ConfigError(f"{p}.min_lr", sched.min_lr, f"at most optimizer.lr ({block.optimizer.lr:g})")
        if info.name == "onecycle" and kwargs.get("base_momentum", 0.85) > kwargs.get("max_momentum", 0.95):
            raise ConfigError(f"{p}.base_momentum", kwargs["base_momentum"], "at most max_momentum")
        interval = sched.interval or info.interval
        if interval == "epoch":
            # plateau's warm-up runs per optimizer step whatever the interval
            for key in ("step_size", "cycle", "decay") if info.name == "plateau" else ("warmup", "step_size", "cycle", "decay"):
                raw = getattr(sched, key, None) if key == "warmup" else kwargs.get(key)
                if raw is not None and parse_duration(raw).unit == "steps" and parse_duration(raw).value:
                    raise ConfigError(f"{p}.{key}", raw, "'<N> epochs' or a percentage with interval: epoch",
                                      hint="or set scheduler.interval: step")


def _check_signature(cls: type, kwargs: dict[str, Any], path: str, skip: tuple[str, ...]) -> None:
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return
    params = [n for n in sig.parameters if n not in ("self", *skip)]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    for key, value in kwargs.items():
        if key not in params:
            raise ConfigError(f"{path}.{key}", value, f"an argument of {cls.__name__}: {', '.join(params)}",
                              suggestions=did_you_mean(key, [*params, *_COMMON_KEYS]))
    missing = [n for n, p in sig.parameters.items() if n not in ("self", *skip)
               and p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and n not in kwargs]
    if missing:
        raise ConfigError(f"{path}.{missing[0]}", expected=f"a value: {cls.__name__} requires {missing[0]}")


register_validator(validate_scheduler)
