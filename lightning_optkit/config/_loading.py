"""load_config: YAML files, dicts and config objects, with dotted overrides."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .._internal.errors import ConfigError
from ._schema import OptimConfig, validate

__all__ = ["apply_overrides", "load_config", "parse_override", "parse_overrides", "read_yaml"]

ConfigSource = str | os.PathLike | Mapping[str, Any] | OptimConfig


def read_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file with the safe loader; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("", str(path), "a path to an existing YAML file, a dict or an OptimConfig")
    try:
        with p.open(encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError("", str(path), f"valid YAML ({str(exc).splitlines()[0]} {getattr(exc, 'problem_mark', '')})".strip()) from None


def _split(key: str) -> list[str | int]:
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise ConfigError(str(key), None, "a dotted key path such as 'optimizer.lr' or 'param_groups.0.lr_scale'")
    return [int(p) if p.isdigit() else p for p in key.split(".")]


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Set ``{"optimizer.lr": 1e-3, "param_groups.0.lr_scale": 0.2}`` in a copy of ``data``.

    A value of ``None`` deletes the key. Intermediate mappings are created as needed.

    Example:
        >>> apply_overrides({"optimizer": {"name": "sgd"}}, {"optimizer.lr": 0.1})
        {'optimizer': {'name': 'sgd', 'lr': 0.1}}
    """
    out = copy.deepcopy(data)
    for key, value in (overrides or {}).items():
        parts = _split(key)
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            here = ".".join(str(p) for p in parts[: depth + 1])
            if isinstance(node, list):
                if not isinstance(part, int) or part >= len(node):
                    raise ConfigError(here, part, f"an index below {len(node)} into the list")
                node = node[part]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                raise ConfigError(here, node, "a mapping or list to set a key in")
        last = parts[-1]
        if isinstance(node, list):
            if not isinstance(last, int) or last >= len(node):
                raise ConfigError(key, value, f"an index below {len(node)} into the list")
            node[last] = value
        elif isinstance(node, dict):
            if value is None:
                node.pop(last, None)
            else:
                node[last] = copy.deepcopy(value)
        else:
            raise ConfigError(key, value, "a key inside a mapping")
    return out


def merge_nested(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in key by key (nested mappings merged, everything else replaced), copied.

    Sampled arguments such as ``model.encoder.init_args.dropout`` change that one value and keep the
    rest of ``encoder`` (its ``class_path`` and other arguments).

    Example:
        >>> merge_nested({"encoder": {"class_path": "m.E", "init_args": {"width": 8}}},
        ...              {"encoder": {"init_args": {"dropout": 0.3}}})
        {'encoder': {'class_path': 'm.E', 'init_args': {'width': 8, 'dropout': 0.3}}}
    """
    out = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_nested(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"optimizer.lr=1e-3"`` -> ``("optimizer.lr", 0.001)``; values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(text, None, "KEY=VALUE, e.g. optimizer.lr=1e-3")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string
            value = float(value) if any(c.isdigit() for c in value) and value.lower() not in ("inf", "nan") else value
        except ValueError:
            pass
    return key.strip(), value


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["optimizer.lr=1e-3", "scheduler.name=onecycle"]`` -> a dict for :func:`load_config`'s overrides.

    Example:
        >>> parse_overrides(["optimizer.lr=1e-3", "scheduler.name=onecycle"])
        {'optimizer.lr': 0.001, 'scheduler.name': 'onecycle'}
    """
    return dict(parse_override(item) for item in items)


def load_config(source: ConfigSource, overrides: Mapping[str, Any] | None = None) -> OptimConfig:
    """Load and validate an ``optim:`` block.

    Args:
        source: a YAML path, a dict, or an :class:`OptimConfig`. A mapping with an ``optim`` key and no
            key of the schema (an hparams file, where ``optim`` sits next to the model's other arguments)
            is unwrapped.
        overrides: dotted keys to set before validation (``{"optimizer.lr": 1e-3}``).

    Raises:
        ConfigError: naming the key path, the bad value and what is valid.

    Example:
        >>> cfg = load_config({"optimizer": {"name": "adamw", "lr": 3e-4}}, {"optimizer.lr": 1e-3})
        >>> cfg.optimizer.lr
        0.001
    """
    if isinstance(source, OptimConfig):
        data: Any = source.to_dict()
    elif isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
    elif isinstance(source, (str, os.PathLike)):
        data = read_yaml(source)
    else:
        raise ConfigError("", source, "a YAML path, a dict or an OptimConfig")
    if isinstance(data, dict) and "optim" in data and not set(data) & set(OptimConfig.model_fields):
        # an hparams file or LightningCLI model args: ``optim:`` next to the model's other arguments
        data = data["optim"]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("", data, "a mapping with an 'optimizer' block")
    if overrides:
        data = apply_overrides(data, overrides)
    return validate(data)
