"""The validated ``optim:`` block (pydantic models) and its conversion of errors into ConfigError."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from .._internal.errors import ConfigError, did_you_mean, format_value
from ._durations import parse_duration

__all__ = [
    "LossConfig",
    "OptimBlock",
    "OptimConfig",
    "OptimizerConfig",
    "ParamGroupRule",
    "SchedulerConfig",
    "register_validator",
    "validate",
]


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a number, not a boolean")
    return value


PositiveFloat = Annotated[float, BeforeValidator(_no_bool), Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, BeforeValidator(_no_bool), Field(ge=0, allow_inf_nan=False)]
Ratio = Annotated[float, BeforeValidator(_no_bool), Field(ge=0, le=1, allow_inf_nan=False)]
Globs = str | list[str]


def _lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


class _Open(BaseModel):
    """A block whose unknown keys are keyword arguments, checked later against a signature."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _tuples_as_lists(cls, data: Any) -> Any:
        # YAML and to_dict() give lists; a dict config written in Python often has tuples
        # (betas=(0.9, 0.95)). Store lists either way so load_config(cfg.to_dict()) == cfg.
        if isinstance(data, dict):
            return {k: v if k in cls.model_fields else _lists(v) for k, v in data.items()}
        return data

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OptimizerConfig(_Open):
    """``optimizer:`` -- a registry name or dotted class path, ``lr``, and constructor kwargs.

    Example:
        >>> OptimizerConfig(name="adamw", lr=3e-4, weight_decay=0.05).kwargs
        {'weight_decay': 0.05}
    """

    name: str = Field(min_length=1)
    lr: PositiveFloat = 1e-3

    @field_validator("name", mode="before")
    @classmethod
    def _name_is_str(cls, v: Any) -> Any:
        if not isinstance(v, str):
            raise ValueError("a registry name (e.g. 'adamw') or a dotted class path")
        return v


class ParamGroupRule(_Open):
    """One entry of ``param_groups:``; the first rule whose glob(s) match a parameter name wins.

    ``params`` holds glob(s) over ``named_parameters()`` names, or ``"re:<regex>"``. Other keys:
    ``lr`` (absolute), ``lr_scale`` (times the optimizer's lr), ``weight_decay``, ``frozen`` and any
    optimizer keyword argument (``betas``, ``momentum``...).

    Example:
        >>> ParamGroupRule(params="backbone.*", lr_scale=0.1).lr_scale
        0.1
    """

    params: Globs
    name: str | None = None
    lr: PositiveFloat | None = None
    lr_scale: PositiveFloat | None = None
    weight_decay: NonNegFloat | None = None
    frozen: bool = False

    @field_validator("params")
    @classmethod
    def _non_empty(cls, v: Globs) -> Globs:
        items = [v] if isinstance(v, str) else v
        if not items or any(not p.strip() for p in items):
            raise ValueError("a non-empty glob, list of globs, or 're:<regex>'")
        return v

    @model_validator(mode="after")
    def _lr_or_scale(self) -> ParamGroupRule:
        if self.lr is not None and self.lr_scale is not None:
            raise ValueError("either lr or lr_scale, not both")
        return self


class SchedulerConfig(_Open):
    """``scheduler:`` -- a schedule name (or dotted LRScheduler path) and its settings.

    Example:
        >>> SchedulerConfig(name="warmup_cosine", warmup="5%", min_lr_ratio=0.01).interval is None
        True
    """

    name: str = Field(default="constant", min_length=1)
    warmup: int | float | str = 0
    min_lr: NonNegFloat | None = None
    min_lr_ratio: Ratio | None = None
    interval: Literal["step", "epoch"] | None = None
    monitor: str | None = None

    @field_validator("warmup", mode="before")
    @classmethod
    def _warmup(cls, v: Any) -> Any:
        try:
            parse_duration(v)
        except ConfigError as err:
            raise ValueError(err.expected + (f" ({err.hint})" if err.hint else "")) from None
        return v

    @model_validator(mode="after")
    def _one_floor(self) -> SchedulerConfig:
        if self.min_lr is not None and self.min_lr_ratio is not None:
            raise ValueError("either min_lr or min_lr_ratio, not both")
        return self


class LossConfig(_Open):
    """``loss:`` -- a loss name from the loss registry (or dotted path) and its kwargs.

    Example:
        >>> LossConfig(name="cross_entropy", label_smoothing=0.1).kwargs
        {'label_smoothing': 0.1}
    """

    name: str = Field(min_length=1)


NoWeightDecay = Literal["auto", "none"] | list[str]


class OptimBlock(BaseModel):
    """One optimizer with its parameter groups and schedule."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    params: Globs = "*"
    optimizer: OptimizerConfig
    param_groups: list[ParamGroupRule] = Field(default_factory=list)
    no_weight_decay: NoWeightDecay = "auto"
    layer_decay: Annotated[float, BeforeValidator(_no_bool), Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    scheduler: SchedulerConfig | None = None

    @field_validator("params")
    @classmethod
    def _params_non_empty(cls, v: Globs) -> Globs:
        return ParamGroupRule._non_empty(v)

    @field_validator("no_weight_decay", mode="before")
    @classmethod
    def _nwd(cls, v: Any) -> Any:
        if v is None or v is False:
            return "none"
        if v is True:
            return "auto"
        if isinstance(v, str) and v not in ("auto", "none"):
            return [v]
        return v


class OptimConfig(BaseModel):
    """The validated ``optim:`` block. Build it with :func:`lightning_optkit.load_config`.

    Either one optimizer (``optimizer:``, ``param_groups:``, ``scheduler:`` at the top) or a list of
    blocks under ``optimizers:`` (manual optimization, e.g. GANs), each owning the parameters its
    ``params:`` globs select. ``loss:`` is shared.

    Example:
        >>> cfg = OptimConfig.model_validate({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}})
        >>> cfg.optimizer.name, cfg.optimizer.kwargs
        ('sgd', {'momentum': 0.9})
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    optimizer: OptimizerConfig | None = None
    param_groups: list[ParamGroupRule] = Field(default_factory=list)
    no_weight_decay: NoWeightDecay = "auto"
    layer_decay: Annotated[float, BeforeValidator(_no_bool), Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    scheduler: SchedulerConfig | None = None
    optimizers: list[OptimBlock] | None = None
    loss: LossConfig | None = None

    _nwd = field_validator("no_weight_decay", mode="before")(OptimBlock._nwd.__func__)  # type: ignore[attr-defined]

    @model_validator(mode="after")
    def _one_form(self) -> OptimConfig:
        if self.optimizers is not None:
            if self.optimizer is not None:
                raise ValueError("either 'optimizer' or 'optimizers' (a list of blocks), not both")
            if not self.optimizers:
                raise ValueError("at least one block in 'optimizers'")
        elif self.optimizer is None:
            raise ValueError("an 'optimizer' block (e.g. {name: adamw, lr: 3.0e-4})")
        return self

    # -- views ---------------------------------------------------------------------------------
    def blocks(self) -> list[tuple[str, OptimBlock]]:
        """``[(key path prefix, block)]``: one entry, or one per item of ``optimizers``."""
        if self.optimizers is not None:
            return [(f"optimizers.{i}.", b) for i, b in enumerate(self.optimizers)]
        assert self.optimizer is not None
        block = OptimBlock.model_construct(
            params="*",
            optimizer=self.optimizer,
            param_groups=self.param_groups,
            no_weight_decay=self.no_weight_decay,
            layer_decay=self.layer_decay,
            scheduler=self.scheduler,
        )
        return [("", block)]

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/JSON-safe) that :func:`load_config` turns back into an equal config."""
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=False)

    def content_hash(self) -> str:
        """sha256 of the canonical JSON form; equal configs have equal hashes."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Validation entry point: pydantic errors become ConfigError with the key path.

_VALIDATORS: list[Callable[[OptimConfig], None]] = []
# The packages whose registries register their checks on import. ``lightning_optkit`` imports its
# public names lazily, so a config loaded before any of them was imported imports them here (by
# name: this layer stays free of torch at import time).
_REGISTRY_MODULES = ("lightning_optkit.optim", "lightning_optkit.schedules", "lightning_optkit.losses")


def _import_registries() -> None:
    import importlib
    import sys

    for name in _REGISTRY_MODULES:
        if name not in sys.modules:
            importlib.import_module(name)


def register_validator(fn: Callable[[OptimConfig], None]) -> Callable[[OptimConfig], None]:
    """Register a check run on every loaded config (optimizer, schedule and loss registries use it)."""
    if fn not in _VALIDATORS:
        _VALIDATORS.append(fn)
    return fn


def _model_for(path_parts: list[str | int]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = OptimConfig
    for part in path_parts:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        model = next((m for m in _MODELS if m.__name__ in repr(ann)), None)
    return model


def _walk(data: Any, loc: tuple[Any, ...]) -> tuple[list[str | int], Any, bool]:
    """Follow ``loc`` through the input; keep only the steps that are real keys or indices."""
    path: list[str | int] = []
    node, found = data, True
    for part in loc:
        if (isinstance(node, dict) and isinstance(part, str) and part in node) or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            path.append(part)
            node = node[part]
        elif (isinstance(part, str) and isinstance(node, dict) and part.isidentifier() and not part[0].isupper()
              and "[" not in part and part not in ("str", "list", "int", "float", "function-after")):
            # a missing key: name it, there is no value
            path.append(part)
            found = False
            break
    return path, node, found


def _dotted(parts: list[str | int]) -> str:
    return ".".join(str(p) for p in parts)


def _to_config_error(exc: ValidationError, data: Any) -> ConfigError:
    errors = exc.errors(include_url=False)
    # Prefer the most specific error (deepest location), pydantic lists one per union branch.
    err = max(errors, key=lambda e: len(e["loc"]))
    kind = err["type"]
    if not err["loc"] and isinstance(data, dict):
        # OptimConfig's own check (optimizer vs optimizers): name the key, not the whole config
        msg = err["msg"].removeprefix("Value error, ")
        if data.get("optimizers") is not None:
            return ConfigError("optimizers", data["optimizers"], msg)
        if "optimizer" in data:
            return ConfigError("optimizer", data["optimizer"], msg)
        return ConfigError("optimizer", expected=msg)
    parts, node, found = _walk(data, tuple(err["loc"]))
    path = _dotted(parts)
    if kind == "extra_forbidden":
        key = parts[-1] if parts else err["loc"][-1]
        parent = _model_for(parts[:-1])
        allowed = sorted(parent.model_fields) if parent else []
        return ConfigError(
            path, node, f"a known key, not {key!r}; valid keys here: {', '.join(allowed)}" if allowed else "a known key",
            suggestions=did_you_mean(str(key), allowed),
        )
    if kind == "missing" or not found:
        return ConfigError(path, expected="a value for this required key")
    msg = err["msg"]
    for prefix in ("Value error, ", "Input should be "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if kind.startswith("literal_error"):
        ctx = err.get("ctx", {})
        msg = "one of " + str(ctx.get("expected", msg))
        opts = [o.strip().strip("'") for o in str(ctx.get("expected", "")).replace(" or ", ",").split(",")]
        return ConfigError(path, node, msg, suggestions=did_you_mean(node, [o for o in opts if o]))
    if isinstance(node, float) and not math.isfinite(node):
        msg = "a finite number" + (f", {msg}" if "finite" not in msg else "")
    return ConfigError(path, node, msg[0].lower() + msg[1:] if msg else "a valid value")


_MODELS: tuple[type[BaseModel], ...] = (
    OptimizerConfig, ParamGroupRule, SchedulerConfig, LossConfig, OptimBlock,
)


def validate(data: Any) -> OptimConfig:
    """Validate a plain dict into :class:`OptimConfig`; every failure is a :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError("", data, "a mapping with an 'optimizer' block (e.g. {optimizer: {name: adamw}})")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(str(key), data[key], "string keys only")
    try:
        cfg = OptimConfig.model_validate(data)
    except ValidationError as exc:
        raise _to_config_error(exc, data) from None
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # a validator raised something unexpected
        raise ConfigError("", format_value(data), str(exc)) from None
    _import_registries()
    for check in _VALIDATORS:
        check(cfg)
    return cfg
