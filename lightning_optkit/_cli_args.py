"""Argument helpers shared by the ``optkit`` subcommands (fit, schedule, lr-find, tune)."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
from typing import Any

__all__ = ["UsageError", "has_class_objects", "import_class", "import_object", "instantiate_objects", "is_class_object", "json_object",
           "positive_float", "positive_int"]


class UsageError(Exception):
    """A mistake on the command line (not in the config); printed as ``error: ...`` with exit status 2."""


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1.

    Example:
        >>> positive_int("3")
        3
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0.

    Example:
        >>> positive_float("1e-3")
        0.001
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive, finite number, got {text!r}")
    return value


def json_object(text: str | None, flag: str) -> dict[str, Any]:
    """The JSON object given to ``flag`` (``{}`` when absent); anything else is a UsageError.

    Example:
        >>> json_object('{"hidden": 64}', "--model-args")
        {'hidden': 64}
    """
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag}: not valid JSON ({exc.msg} at character {exc.pos}): {text}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag}: expected a JSON object such as '{{\"hidden\": 64}}', got {text}")
    return value


def import_class(path: str, flag: str, base: type) -> type:
    """Import ``pkg.module.Class`` (the current folder importable, as with ``python -m``), a subclass of ``base``."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise UsageError(f"{flag}: expected a dotted path pkg.module.Class, got {path!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise UsageError(f"{flag}: cannot import {module_name!r} ({exc})") from None
    except AttributeError:
        raise UsageError(f"{flag}: module {module_name!r} has no {attr!r}") from None
    if not (inspect.isclass(obj) and issubclass(obj, base)):
        raise UsageError(f"{flag}: {path} is not a subclass of {base.__module__}.{base.__qualname__}")
    return obj


_OBJECT_KEYS = {"class_path", "init_args", "dict_kwargs"}


def is_class_object(value: Any) -> bool:
    """A LightningCLI-style object: a mapping with ``class_path`` (and optionally ``init_args``).

    Example:
        >>> is_class_object({"class_path": "torch.nn.Linear", "init_args": {"in_features": 2, "out_features": 3}})
        True
        >>> is_class_object({"hidden": 64})
        False
    """
    return isinstance(value, dict) and "class_path" in value and set(value) <= _OBJECT_KEYS


def has_class_objects(value: Any) -> bool:
    """Whether ``value`` holds a ``class_path`` object anywhere (in a mapping or list, at any depth)."""
    if is_class_object(value):
        return True
    if isinstance(value, dict):
        return any(has_class_objects(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_class_objects(v) for v in value)
    return False


def instantiate_objects(value: Any, flag: str, _where: str = "") -> Any:
    """Build every ``{"class_path": ..., "init_args": {...}}`` object in ``value``, innermost first, as
    LightningCLI does for a module argument typed as a class (``backbone: nn.Module``); everything else
    is returned unchanged. ``class_path`` is a dotted path ``pkg.module.Class`` (or ``pkg.module:Class``).

    Raises:
        ConfigError: at ``<flag>.<key>.class_path`` (or ``.init_args``), when a class cannot be imported or built.

    Example:
        >>> net = instantiate_objects({"net": {"class_path": "torch.nn.Linear",
        ...                                    "init_args": {"in_features": 2, "out_features": 3}}}, "--model-args")
        >>> type(net["net"]).__name__, net["net"].weight.shape
        ('Linear', torch.Size([3, 2]))
    """
    from .config import ConfigError

    if isinstance(value, dict) and not is_class_object(value):
        return {k: instantiate_objects(v, flag, f"{_where}.{k}" if _where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [instantiate_objects(v, flag, f"{_where}.{i}" if _where else str(i)) for i, v in enumerate(value)]
    if not is_class_object(value):
        return value
    key = f"{flag}.{_where}" if _where else flag
    path = str(value["class_path"])
    cls = import_object(path, f"{key}.class_path")
    init = value.get("init_args") or {}
    if not isinstance(init, dict):
        raise ConfigError(f"{key}.init_args", init, f"a mapping of the keyword arguments of {path}")
    kwargs = {**instantiate_objects(init, flag, f"{_where}.init_args" if _where else "init_args"),
              **(value.get("dict_kwargs") or {})}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{key}.init_args", init, f"arguments {path} accepts ({exc})") from None


def signature_defaults(cls: Any) -> dict[str, Any]:
    """The keyword defaults of ``cls.__init__`` (``{}`` when ``cls`` is not a class).

    Example:
        >>> class Net:
        ...     def __init__(self, width: int, depth: int = 2) -> None: ...
        >>> signature_defaults(Net), signature_defaults(None)
        ({'depth': 2}, {})
    """
    if not inspect.isclass(cls):
        return {}
    return {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def import_object(path: str, label: str) -> Any:
    """``pkg.mod.name`` or ``pkg.mod:name`` -> the object (the current folder importable, as with ``python -m``).

    Raises:
        ConfigError: at ``label``, when the module cannot be imported or has no such name.

    Example:
        >>> import_object("json:dumps", "cli").__name__
        'dumps'
    """
    from .config import ConfigError, did_you_mean

    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(label, path, "a dotted path pkg.module.name (or pkg.module:name)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(label, path, f"an importable module ({exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(label, path, f"a name defined in {module_name}", suggestions=did_you_mean(attr, names)) \
            from None
