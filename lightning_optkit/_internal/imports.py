"""Dotted-path imports: ``pkg.module.name`` strings and LightningCLI-style ``class_path`` objects.

Configs and command lines name classes by dotted path (trusted like code, as in LightningCLI); this
module turns such names into objects, with errors that name the key. Nothing is ever ``eval``-ed.

Example:
    >>> locate("json.decoder.JSONDecoder").__name__
    'JSONDecoder'
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

from .errors import ConfigError, did_you_mean

__all__ = ["has_class_objects", "import_object", "importable_cwd", "instantiate_objects", "is_class_object", "locate",
           "signature_defaults"]


def importable_cwd() -> None:
    """Make the current folder importable, as ``python -m`` does."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())


def locate(path: str) -> Any:
    """Import ``"package.module.Name"`` (attributes may be nested); raises ImportError/AttributeError.

    The longest importable module prefix wins, so ``torch.nn.MSELoss`` and ``pkg.Outer.Inner`` both work.
    A module that fails to import for another reason (a missing dependency inside it) raises as is.

    Example:
        >>> locate("torch.nn.MSELoss").__name__
        'MSELoss'
    """
    parts = path.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise ImportError(f"{path!r} is not a dotted path such as 'torch.nn.MSELoss'")
    last_error: ModuleNotFoundError | None = None
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # only keep walking up when the missing module is the one we asked for (or a parent)
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            last_error = exc
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise last_error if last_error is not None else ImportError(f"cannot import {path!r}")


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
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(label, path, "a dotted path pkg.module.name (or pkg.module:name)")
    importable_cwd()
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
