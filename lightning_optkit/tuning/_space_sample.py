"""Sampling a trial: which parameters are active, and trial overrides split into optim and target sections."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import ConfigError, OptimConfig
from ._space_param import Param
from ._space_parse import TARGET_SECTIONS, _matches, get_path, target_section


def conditions_hold(params: Mapping[str, Param], name: str, values: Mapping[str, Any],
                    base: Mapping[str, Any] | None = None) -> bool:
    """Whether ``params[name]``'s conditions hold, given the values chosen so far and the base config."""
    for key, allowed in params[name].when:
        if key in params:
            if key not in values:
                return False
            current = values[key]
        else:
            current = get_path(base or {}, key)
        if not any(_matches(current, a) for a in allowed):
            return False
    return True


def split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A trial's overrides -> ``(optim overrides, {"model": {...}, "data": {...}, "trainer": {...}})``.

    Per-element keys build a list: ``model.units.0``, ``model.units.1`` -> ``{"units": [u0, u1]}``
    (the elements present must be 0..n-1; the list replaces the argument's default as a whole).

    Example:
        >>> split_overrides({"optimizer.lr": 0.1, "model.units.1": 32, "model.units.0": 16, "data.batch_size": 8})
        ({'optimizer.lr': 0.1}, {'model': {'units': [16, 32]}, 'data': {'batch_size': 8}, 'trainer': {}})
    """
    optim: dict[str, Any] = {}
    targets: dict[str, dict[str, Any]] = {s: {} for s in TARGET_SECTIONS}
    for path, value in overrides.items():
        section = target_section(path)
        if section is None:
            optim[path] = value
            continue
        node: dict[Any, Any] = targets[section]
        parts = path.split(".")[1:]
        for part in parts[:-1]:
            node = node.setdefault(int(part) if part.isdigit() else part, {})
        node[int(parts[-1]) if parts[-1].isdigit() else parts[-1]] = value
    return optim, {s: _listify(v, s) for s, v in targets.items()}  # type: ignore[misc]


def _listify(node: Any, where: str) -> Any:
    """Dicts with integer keys (from ``units.0``, ``units.1``) -> lists; the indices must be 0..n-1."""
    if not isinstance(node, dict):
        return node
    out = {k: _listify(v, f"{where}.{k}") for k, v in node.items()}
    if out and all(isinstance(k, int) for k in out):
        if sorted(out) != list(range(len(out))):
            missing = min(set(range(max(out) + 1)) - set(out))
            raise ConfigError(f"search.{where}.{missing}", None, f"a value for every element of {where} below "
                              f"{max(out)} (a trial sets elements {sorted(out)})",
                              hint=f"give {where}.{missing} the same condition as the elements after it, or a weaker one")
        return [out[i] for i in range(len(out))]
    if any(isinstance(k, int) for k in out):
        raise ConfigError(f"search.{where}", sorted(map(str, out)), "element keys (0, 1, ...) or argument names, not both")
    return out


def _as_dict(base: Any) -> dict[str, Any]:
    """The base config as a plain dict (``{}`` for ``None``)."""
    if base is None:
        return {}
    if isinstance(base, OptimConfig):
        return base.to_dict()
    return dict(base)
