"""build_loss and the load-time check of ``loss:`` blocks.

Both go through one function, :func:`_plan`, which resolves the name, checks every kwarg against the
class's constructor signature and the registry's value checks, and converts tensor/callable kwargs.
Planning is cheap (no loss module is built), so the config validator runs it on every loaded config;
:func:`build_loss` then instantiates the plan.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_optkit._internal.checks import in_interval as _is_number
from lightning_optkit.config import ConfigError, LossConfig, OptimConfig, did_you_mean, register_validator

from ._composite import WeightedSumLoss
from ._registry import LossInfo, import_object, resolve_loss
from ._weighting import WEIGHTINGS, weighting_problem

__all__ = ["LossSource", "build_loss", "validate_loss_config"]

LossSource = LossConfig | OptimConfig | Mapping[str, Any] | str

_DEPRECATED = ("size_average", "reduce")
_MANAGED = ("losses", "coefs", "labels")  # filled by the builder for composite losses
_EXAMPLE = "{name: cross_entropy, label_smoothing: 0.1}"


@dataclass
class _Plan:
    path: str
    info: LossInfo | None
    cls: type
    kwargs: dict[str, Any]
    tensor_kwargs: tuple[str, ...]
    parts: list[_Plan] = field(default_factory=list)
    coefs: list[float] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    has_parts: bool = False


def _as_mapping(config: Any, path: str) -> Any:
    if isinstance(config, OptimConfig):
        if config.loss is None:
            raise ConfigError(
                path,
                expected=f"a loss block such as {_EXAMPLE}",
                hint="add a `loss:` block to the config, or pass the loss config itself",
            )
        return _as_mapping(config.loss, path)
    if isinstance(config, LossConfig):
        return {"name": config.name, **config.kwargs}
    if isinstance(config, str):
        return {"name": config}
    return config


def _signature(cls: type) -> tuple[dict[str, inspect.Parameter], bool]:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):  # some C-implemented classes have no signature
        return {}, True
    params = {
        n: p
        for n, p in sig.parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    return params, var_kw


def _numeric_tree(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_numeric_tree(x) for x in v)
    return _is_number(v)


def _allows_none(p: inspect.Parameter) -> bool:
    ann = str(p.annotation)
    return p.default is None or "None" in ann or "Optional" in ann


def _type_error(p: inspect.Parameter, value: Any) -> str | None:
    """What the value should be, judged from the default's type, or None when it fits."""
    d = p.default
    if value is None:
        return None if _allows_none(p) else f"a value of the type of the default ({d!r}), not null"
    if d is inspect.Parameter.empty or d is None:
        return None
    if isinstance(d, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(d, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if isinstance(d, float):
        return None if _is_number(value) else "a finite number"
    if isinstance(d, str):
        return None if isinstance(value, str) else "a string"
    return None


def _tensor_names(info: LossInfo | None, params: dict[str, inspect.Parameter]) -> tuple[str, ...]:
    if info is not None:
        return info.tensor_kwargs
    return tuple(n for n, p in params.items() if "Tensor" in str(p.annotation))


def _to_tensor(value: Any, path: str, vector: bool, hint: str) -> Any:
    if value is None or isinstance(value, torch.Tensor):
        return value
    if not _numeric_tree(value):
        raise ConfigError(path, value, "a finite number or a list of finite numbers", hint=hint)
    tensor = torch.as_tensor(value, dtype=torch.get_default_dtype())
    if vector and (tensor.ndim != 1 or tensor.numel() == 0):
        raise ConfigError(path, value, "a list with one weight per class", hint=hint)
    return tensor


def _to_callable(value: Any, path: str) -> Any:
    if value is None or callable(value):
        return value
    if not isinstance(value, str):
        raise ConfigError(
            path, value, "a dotted path to a callable, e.g. 'torch.nn.functional.pairwise_distance'"
        )
    try:
        obj = import_object(value)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(path, value, f"an importable dotted path to a callable ({exc})") from None
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        obj = obj()  # e.g. torch.nn.PairwiseDistance
    if not callable(obj):
        raise ConfigError(path, value, "a dotted path to a callable")
    return obj


def _plan(data: Any, path: str, part_keys: tuple[str, ...] = ()) -> _Plan:
    """Resolve and check one loss block (recursively for composites); builds no module."""
    if not isinstance(data, Mapping):
        raise ConfigError(path, data, f"a loss config mapping such as {_EXAMPLE}")
    data = dict(data)
    if "name" not in data:
        raise ConfigError(
            f"{path}.name", expected="a loss name (e.g. 'cross_entropy') or a dotted class path"
        )
    info, cls = resolve_loss(data.pop("name"), f"{path}.name")
    params, var_kw = _signature(cls)
    composite = info is not None and info.composite
    coef_hint = (
        (
            "inside a composite the mixing weight of an entry is `coef`; `weight` is the loss's own "
            "class-weight argument"
        )
        if "coef" in part_keys
        else ""
    )

    _check_keys(data, path, cls, params, var_kw, composite, part_keys, coef_hint)

    if cls is WeightedSumLoss:
        _check_weighting(data, path)
    tensor_names = _tensor_names(info, params)
    kwargs = _plan_kwargs(data, path, info, params, tensor_names, coef_hint)

    plan = _Plan(path, info, cls, kwargs, tensor_names)
    if composite:
        _plan_composite(plan, data, path, params)
    return plan


def _check_keys(
    data: dict[str, Any],
    path: str,
    cls: type,
    params: Mapping[str, inspect.Parameter],
    var_kw: bool,
    composite: bool,
    part_keys: tuple[str, ...],
    coef_hint: str,
) -> None:
    """Check a loss block's keys: strings, none deprecated or misplaced, all accepted by ``cls``, none missing."""
    in_part = bool(part_keys)
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{path}.{key}", data[key], "string keys only")
    for key in _DEPRECATED:
        if key in data:
            raise ConfigError(
                f"{path}.{key}",
                data[key],
                "no deprecated size_average/reduce",
                hint="use `reduction: mean | sum | none`",
            )
    if composite:
        for key in ("coefs", "labels"):
            if key in data:
                raise ConfigError(
                    f"{path}.{key}",
                    data[key],
                    f"per-entry keys inside {path}.losses",
                    hint=f"set `{key[:-1]}` on each entry of {path}.losses",
                )

    valid = [n for n in params if n not in _DEPRECATED and not (composite and n in ("coefs", "labels"))]
    for key, value in data.items():
        if key not in params and not var_kw:
            shown = valid + list(part_keys)
            raise ConfigError(
                f"{path}.{key}",
                value,
                f"a keyword argument of {cls.__name__} ({', '.join(shown) or 'none'})",
                suggestions=did_you_mean(key, shown),
                hint=coef_hint if key == "weight" and in_part else "",
            )
    for name, p in params.items():
        if p.default is inspect.Parameter.empty and name not in data and name not in _DEPRECATED:
            raise ConfigError(f"{path}.{name}", expected=f"a value: {cls.__name__} requires `{name}`")


def _plan_kwargs(
    data: dict[str, Any],
    path: str,
    info: Any,
    params: Mapping[str, inspect.Parameter],
    tensor_names: Any,
    coef_hint: str,
) -> dict[str, Any]:
    """Convert and check a loss block's values into the constructor's keyword arguments (not ``losses``)."""
    composite = info is not None and info.composite
    vector_names = info.vector_kwargs if info else ()
    callable_names = info.callable_kwargs if info else ()
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        kpath = f"{path}.{key}"
        if key == "losses" and composite:
            continue
        if key in tensor_names:
            kwargs[key] = _to_tensor(value, kpath, key in vector_names, coef_hint if key == "weight" else "")
            continue
        if key in callable_names:
            kwargs[key] = _to_callable(value, kpath)
            continue
        if info is not None and key in params:
            problem = _type_error(params[key], value)
            if problem:
                raise ConfigError(kpath, value, problem)
            if key == "reduction" and value not in info.reductions:
                raise ConfigError(
                    kpath,
                    value,
                    "one of " + ", ".join(info.reductions),
                    suggestions=did_you_mean(value, info.reductions),
                )
        kwargs[key] = value
    if info is not None:
        for check in info.checks:
            if check.kwarg in data:
                try:
                    ok = bool(check.predicate(data[check.kwarg]))
                except Exception:
                    ok = False
                if not ok:
                    raise ConfigError(f"{path}.{check.kwarg}", data[check.kwarg], check.expected)
    return kwargs


def _plan_composite(plan: _Plan, data: dict[str, Any], path: str, params: Mapping[str, inspect.Parameter]) -> None:
    """Plan a composite's entries (``losses``) into ``plan`` and check ``num_tasks``/``tasks`` against them."""
    if "losses" in data:
        _plan_parts(plan, data["losses"], params)
    elif data.get("num_tasks") is None:
        raise ConfigError(
            f"{path}.losses",
            expected="a list of loss configs",
            hint="or set `num_tasks` and pass precomputed per-task losses"
            if "num_tasks" in params
            else "",
        )
    tasks = data.get("tasks")
    count = len(plan.parts) if plan.has_parts else data.get("num_tasks")
    if isinstance(tasks, (list, tuple)) and len(tasks) != count:
        raise ConfigError(f"{path}.tasks", tasks, f"one entry per task ({count})")


def _check_weighting(data: Mapping[str, Any], path: str) -> None:
    """``weighting:`` of a ``weighted_sum`` and the options that go with it (see ``_weighting``)."""
    options = {key: data.get(key) for key in ("window", "temperature", "alpha", "shared_params", "init_log_var")}
    problem = weighting_problem(data.get("weighting", "fixed"), options)
    if problem is not None:
        key, value, expected, hint = problem
        suggestions = did_you_mean(value, WEIGHTINGS) if key == "weighting" and isinstance(value, str) else ()
        if value is None:
            raise ConfigError(f"{path}.{key}", expected=expected, hint=hint)
        raise ConfigError(f"{path}.{key}", value, expected, suggestions=suggestions, hint=hint)


def _plan_parts(plan: _Plan, raw: Any, params: dict[str, inspect.Parameter]) -> None:
    lpath = f"{plan.path}.losses"
    part_keys = ("coef", "label") if "coefs" in params else ("label",)
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ConfigError(
            lpath,
            raw,
            "a non-empty list of loss configs, e.g. [{name: cross_entropy}, "
            + ("{name: dice, coef: 0.5}]" if "coef" in part_keys else "{name: mse}]"),
        )
    plan.has_parts = True
    for i, entry in enumerate(raw):
        ppath = f"{lpath}.{i}"
        entry = _as_mapping(entry, ppath)
        if not isinstance(entry, Mapping):
            raise ConfigError(ppath, entry, f"a loss config mapping such as {_EXAMPLE}")
        entry = dict(entry)
        coef = entry.pop("coef", 1.0) if "coef" in part_keys else 1.0
        if not _is_number(coef):
            raise ConfigError(f"{ppath}.coef", coef, "a finite number (the mixing weight of this entry)")
        label = entry.pop("label", None)
        if label is not None and (not isinstance(label, str) or not label.strip()):
            raise ConfigError(f"{ppath}.label", label, "a non-empty string")
        sub = _plan(entry, ppath, part_keys)
        plan.parts.append(sub)
        plan.coefs.append(float(coef))
        plan.labels.append(label if label else (sub.info.name if sub.info else None))


def _blame(plan: _Plan, message: str) -> str:
    """The key path a constructor error most likely refers to."""
    names = sorted(plan.kwargs, key=len, reverse=True)
    if plan.has_parts:
        names += list(_MANAGED)
    for name in names:
        if re.search(rf"\b{re.escape(name)}\b", message):
            if name in _MANAGED:
                return f"{plan.path}.losses"
            return f"{plan.path}.{name}"
    return plan.path


def _instantiate(plan: _Plan) -> nn.Module:
    kwargs = dict(plan.kwargs)
    if plan.has_parts:
        kwargs["losses"] = [_instantiate(p) for p in plan.parts]
        kwargs["labels"] = list(plan.labels)
        if "coefs" in _signature(plan.cls)[0]:
            kwargs["coefs"] = list(plan.coefs)
    try:
        module = plan.cls(**kwargs)
    except (ValueError, TypeError) as exc:
        where = _blame(plan, str(exc))
        key = where[len(plan.path) + 1 :]
        value = plan.kwargs.get(key, {k: v for k, v in plan.kwargs.items() if k not in _MANAGED})
        raise ConfigError(
            where, value, f"a value {plan.cls.__name__} accepts ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"{plan.path}.name", plan.cls.__name__, "a class whose instances are nn.Module")
    # Tensor kwargs are configuration, not learned state: keep them as buffers (they follow
    # .to(device/dtype)) but out of state_dict, so adding class weights never changes checkpoint keys.
    buffers = dict(module.named_buffers(recurse=False))
    for name in plan.tensor_kwargs:
        if buffers.get(name) is not None:
            module.register_buffer(name, buffers[name], persistent=False)
    return module


def validate_loss_config(config: LossSource) -> None:
    """Check a ``loss:`` block without building it: name, kwargs against the signature, cheap values.

    This is what :func:`lightning_optkit.load_config` runs (through ``register_validator``) once this
    package is imported, so a misspelt loss name fails when the config is loaded.

    Raises:
        ConfigError: with the key path (``loss.name``, ``loss.label_smoothing``, ``loss.losses.1.name``).

    Example:
        >>> validate_loss_config({"name": "focal", "gamma": 2.0})
        >>> try:
        ...     validate_loss_config({"name": "cross_entopy"})
        ... except ValueError as err:
        ...     print(err.path, err.suggestions[0])
        loss.name cross_entropy
    """
    _plan(_as_mapping(config, "loss"), "loss")


def build_loss(config: LossSource) -> nn.Module:
    """Build the loss module a ``loss:`` config describes.

    Args:
        config: a :class:`~lightning_optkit.config.LossConfig`, a dict
            (``{"name": "cross_entropy", "label_smoothing": 0.1}``), a bare name (``"mse"``), or an
            :class:`~lightning_optkit.config.OptimConfig` (its ``loss`` block is used).

    ``name`` is a registry name or alias (case-insensitive: ``ce``, ``CrossEntropyLoss``...) or a dotted
    path to any ``nn.Module`` class (``torch.nn.MSELoss``, ``mypkg.MyLoss``). Every other key is a
    constructor kwarg, checked against the signature. Tensor kwargs (``weight``, ``pos_weight``) may be
    given as numbers or lists; they become *non-persistent* buffers (they move with ``.to()`` but
    never appear in ``state_dict``). Composite losses (``weighted_sum``, ``uncertainty_weighted``) list
    their parts under ``losses``; each entry may carry ``label`` and, for ``weighted_sum``, ``coef``
    (the mixing weight -- ``weight`` stays the loss's own class-weight argument).

    Raises:
        ConfigError: naming the key path under ``loss.`` (e.g. ``loss.name``, ``loss.losses.1.gamma``),
            the bad value and what would be valid, with a did-you-mean for misspellings.

    Example:
        >>> import torch
        >>> ce = build_loss({"name": "ce", "label_smoothing": 0.1, "weight": [1.0, 2.0, 1.0]})
        >>> ce
        CrossEntropyLoss()
        >>> list(ce.state_dict())
        []
        >>> mix = build_loss({"name": "weighted_sum", "losses": [
        ...     {"name": "cross_entropy"}, {"name": "dice", "coef": 0.5}]})
        >>> total = mix(torch.randn(4, 3), torch.tensor([0, 2, 1, 1]))
        >>> sorted(mix.last_parts)
        ['cross_entropy', 'dice']
    """
    return _instantiate(_plan(_as_mapping(config, "loss"), "loss"))


@register_validator
def _validate_optim_config(cfg: OptimConfig) -> None:
    if cfg.loss is not None:
        validate_loss_config(cfg.loss)
