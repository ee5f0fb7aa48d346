"""The optimizer registry: one small frozen record per optimizer, built from the installed torch.

Every :class:`torch.optim.Optimizer` subclass that ``torch.optim`` exports is registered under its
lower-case class name, with curated aliases; capability flags are read from the constructor's
signature, so a newer torch adds its optimizers without code here. Any other optimizer class is
reachable by dotted path (``"lion_pytorch.Lion"``), imported lazily.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .._internal.imports import locate
from ..config import ConfigError, OptimConfig, did_you_mean, register_validator

__all__ = ["OptimInfo", "optimizer_names", "registry", "resolve_optimizer", "validate_optimizers"]

_ALIASES: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum", "nesterov"),
    "adam": (),
    "adamw": ("adam_w",),
    "rmsprop": ("rms_prop", "rms"),
    "adagrad": (),
    "adadelta": (),
    "adamax": (),
    "nadam": ("nadamw",),
    "radam": ("radamw",),
    "sparseadam": ("sparse_adam",),
    "asgd": ("averaged_sgd",),
    "rprop": (),
    "lbfgs": ("l-bfgs", "l_bfgs"),
    "adafactor": (),
    "muon": (),
}
# Defaults that differ from torch's, applied only when the config does not set the key.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "momentum": {"momentum": 0.9},
    "nadamw": {"decoupled_weight_decay": True},
    "radamw": {"decoupled_weight_decay": True},
}


@dataclass(frozen=True)
class OptimInfo:
    """What the builder needs to know about one optimizer class.

    Example:
        >>> info = resolve_optimizer("AdamW")
        >>> info.cls.__name__, info.has_weight_decay, "fused" in info.arguments
        ('AdamW', True, True)
    """

    name: str
    cls: type
    arguments: tuple[str, ...]
    var_kwargs: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    has_weight_decay: bool = False
    momentum_key: str | None = None  # "betas", "momentum" or None
    supports_fused: bool = False
    supports_foreach: bool = False
    single_group: bool = False  # LBFGS: one parameter group only
    needs_closure: bool = False  # LBFGS: step(closure); Lightning's automatic optimization passes one
    sparse_only: bool = False  # SparseAdam: sparse gradients only


def _info(name: str, cls: type, defaults: dict[str, Any] | None = None) -> OptimInfo:
    try:
        sig = inspect.signature(cls.__init__)
        params = sig.parameters
    except (TypeError, ValueError):
        params = {}
    args = tuple(n for n in params if n not in ("self", "params"))
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    momentum_key = "betas" if "betas" in args else ("momentum" if "momentum" in args else None)
    cname = cls.__name__
    return OptimInfo(
        name=name,
        cls=cls,
        arguments=args,
        var_kwargs=var_kw,
        defaults=dict(defaults or {}),
        has_weight_decay="weight_decay" in args,
        momentum_key=momentum_key,
        supports_fused="fused" in args,
        supports_foreach="foreach" in args,
        single_group=cname == "LBFGS",
        needs_closure=cname == "LBFGS",
        sparse_only=cname == "SparseAdam",
    )


@lru_cache(maxsize=1)
def registry() -> dict[str, OptimInfo]:
    """Name (and alias) -> :class:`OptimInfo` for every optimizer in the installed ``torch.optim``."""
    import torch.optim

    table: dict[str, OptimInfo] = {}
    for attr in dir(torch.optim):
        obj = getattr(torch.optim, attr)
        if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer:
            key = attr.lower()
            table[key] = _info(key, obj)
            for alias in _ALIASES.get(key, ()):
                table[alias] = _info(alias, obj, _DEFAULTS.get(alias))
    return table


def optimizer_names() -> list[str]:
    """Canonical registry names (one per optimizer class)."""
    return sorted({info.cls.__name__.lower() for info in registry().values()})


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def resolve_optimizer(name: str, path: str = "optimizer.name") -> OptimInfo:
    """Find an optimizer by registry name (case-insensitive, aliases) or dotted class path."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(path, name, "an optimizer name such as 'adamw' or a dotted class path")
    table = registry()
    key = _normalise(name)
    if key in table:
        return table[key]
    if key.replace("_", "") in table:
        return table[key.replace("_", "")]
    if "." in name:
        return _resolve_dotted(name, path)
    names = sorted(table)
    raise ConfigError(path, name, "one of " + ", ".join(optimizer_names()) + " (or an alias), or a dotted class path",
                      suggestions=did_you_mean(key, names))


@lru_cache(maxsize=64)
def _resolve_dotted(name: str, path: str) -> OptimInfo:
    import torch.optim

    module_name = name.rpartition(".")[0]
    try:
        obj = locate(name)
    except ImportError as exc:
        raise ConfigError(path, name, f"an importable optimizer class ({exc.__class__.__name__}: {exc})",
                          hint=f"is the package providing '{module_name}' installed?") from None
    except (AttributeError, ValueError):
        raise ConfigError(path, name, f"a class that exists in module '{module_name}'") from None
    if not (inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer)):
        raise ConfigError(path, name, "a subclass of torch.optim.Optimizer")
    return _info(name, obj)


def check_kwargs(info: OptimInfo, kwargs: dict[str, Any], path: str, own_keys: tuple[str, ...] = ()) -> None:
    """Every key must be a constructor argument (did-you-mean otherwise).

    ``own_keys`` are the block's own keys (``lr``, ``lr_scale``...), offered as suggestions too, so a
    misspelt ``lr_scalee`` is answered with ``lr_scale``.
    """
    if info.var_kwargs:
        return
    valid = [a for a in info.arguments if a != "lr"]
    for key, value in kwargs.items():
        if key not in info.arguments:
            raise ConfigError(f"{path}.{key}", value, f"an argument of {info.cls.__name__}: {', '.join(valid)}",
                              suggestions=did_you_mean(key, [*own_keys, *valid]))


_RULE_KEYS = ("params", "name", "lr", "lr_scale", "weight_decay", "frozen")


def validate_optimizers(cfg: OptimConfig) -> None:
    """Load-time check: names resolve, kwargs (also per parameter-group) fit the constructor."""
    for prefix, block in cfg.blocks():
        info = resolve_optimizer(block.optimizer.name, f"{prefix}optimizer.name")
        check_kwargs(info, block.optimizer.kwargs, f"{prefix}optimizer", own_keys=("name", "lr"))
        for i, rule in enumerate(block.param_groups):
            rpath = f"{prefix}param_groups.{i}"
            check_kwargs(info, rule.kwargs, rpath, own_keys=_RULE_KEYS)
            if rule.weight_decay is not None and not info.has_weight_decay and not info.var_kwargs:
                raise ConfigError(f"{rpath}.weight_decay", rule.weight_decay,
                                  f"nothing: {info.cls.__name__} has no weight_decay")
        if block.layer_decay is not None and info.single_group:
            raise ConfigError(f"{prefix}layer_decay", block.layer_decay,
                              f"null: {info.cls.__name__} supports a single parameter group only")


register_validator(validate_optimizers)
