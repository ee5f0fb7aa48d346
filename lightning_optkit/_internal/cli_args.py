"""Argument helpers shared by the ``optkit`` subcommands (fit, schedule, lr-find, diagnose, tune)."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
from typing import Any

from .imports import importable_cwd

__all__ = ["UsageError", "import_class", "json_object", "positive_float", "positive_int"]


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
    importable_cwd()
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise UsageError(f"{flag}: cannot import {module_name!r} ({exc})") from None
    except AttributeError:
        raise UsageError(f"{flag}: module {module_name!r} has no {attr!r}") from None
    if not (inspect.isclass(obj) and issubclass(obj, base)):
        raise UsageError(f"{flag}: {path} is not a subclass of {base.__module__}.{base.__qualname__}")
    return obj
