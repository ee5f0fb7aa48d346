"""Parsing of search-space specs: spec keys and kinds, dotted key paths, and ``when:`` conditions.

The vocabulary shared by the other ``_space_*`` modules: the spec keys and parameter kinds, how a
categorical choice is stored by Optuna (:func:`_token`), how values compare (:func:`_same`), the
numeric comparisons of ``when:`` (:class:`Compare`) and the parsing of a ``when:`` mapping.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, did_you_mean

SPEC_KEYS = ("type", "low", "high", "log", "step", "choices", "value", "when", "lr_scaling", "lr_base")
# Sections of a search key that are not the optim block: constructor arguments of the model and the
# datamodule, and Trainer arguments (``model.n_layers``, ``data.batch_size``, ``trainer.gradient_clip_val``).
TARGET_SECTIONS = ("model", "data", "trainer")
LR_SCALING = {"linear": 1.0, "sqrt": 0.5}
_OPS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
        "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
_LABEL = re.compile(r"[A-Za-z0-9_\-]+")
KINDS = ("float", "int", "categorical", "fixed")
_KIND_ALIASES = {"choice": "categorical", "category": "categorical", "const": "fixed", "constant": "fixed"}
_PRIMITIVE = (type(None), bool, int, float, str)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _token(choice: Any) -> Any:
    """What Optuna stores for a categorical choice: the value itself, or JSON for lists and dicts."""
    if isinstance(choice, _PRIMITIVE):
        return choice
    return json.dumps(choice, sort_keys=True)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def normalize_path(path: Any) -> Any:
    """``model.init_args.X`` (LightningCLI's spelling) -> ``model.X``; other paths unchanged.

    Example:
        >>> normalize_path("model.init_args.n_layers@deep"), normalize_path("optimizer.lr")
        ('model.n_layers@deep', 'optimizer.lr')
    """
    if isinstance(path, str):
        for section in ("model", "data"):
            if path.startswith(f"{section}.init_args."):
                return section + "." + path[len(section) + len(".init_args."):]
    return path


def target_section(path: str) -> str | None:
    """``model``/``data``/``trainer`` for a key of those sections, ``None`` for an optim key."""
    head = path.split(".", 1)[0]
    return head if head in TARGET_SECTIONS else None


@dataclass(frozen=True)
class Compare:
    """A numeric condition of ``when:``: ``{model.n_layers: {">=": 2}}`` holds for 2, 3, ...

    Several operators must all hold (``{">=": 2, "<": 5}``); operators: ``>=``, ``>``, ``<=``,
    ``<``, ``==``, ``!=``.

    Example:
        >>> Compare(((">=", 2),)).holds(3), Compare(((">=", 2),)).holds(1), Compare(((">=", 2),)).holds("a")
        (True, False, False)
    """

    ops: tuple[tuple[str, float], ...]

    def holds(self, value: Any) -> bool:
        """Whether ``value`` (a number) passes every comparison; anything else never does."""
        return _is_number(value) and all(_OPS[op](value, ref) for op, ref in self.ops)

    def to_spec(self) -> dict[str, float]:
        return dict(self.ops)

    def interval(self) -> tuple[float, bool, float, bool]:
        """``(low, low included, high, high included)`` of the values it allows (``!=`` ignored)."""
        lo, lo_in, hi, hi_in = -math.inf, False, math.inf, False
        for op, ref in self.ops:
            if op in (">=", ">", "==") and (ref > lo or (ref == lo and op == ">")):
                lo, lo_in = ref, op != ">"
            if op in ("<=", "<", "==") and (ref < hi or (ref == hi and op == "<")):
                hi, hi_in = ref, op != "<"
        return lo, lo_in, hi, hi_in


def _matches(value: Any, allowed: Any) -> bool:
    """One allowed item of a condition: a :class:`Compare`, or a value compared with :func:`_same`."""
    return allowed.holds(value) if isinstance(allowed, Compare) else _same(value, allowed)


def _overlap(a: Any, b: Any) -> bool:
    """Whether two allowed items of conditions on the same key can both hold."""
    if isinstance(a, Compare) and isinstance(b, Compare):
        lo1, lin1, hi1, hin1 = a.interval()
        lo2, lin2, hi2, hin2 = b.interval()
        lo, lo_in = max((lo1, lin1), (lo2, lin2), key=lambda t: (t[0], not t[1]))
        hi, hi_in = min((hi1, hin1), (hi2, hin2), key=lambda t: (t[0], t[1]))
        return lo < hi or (lo == hi and lo_in and hi_in)
    if isinstance(a, Compare):
        return a.holds(b)
    if isinstance(b, Compare):
        return b.holds(a)
    return _same(a, b)


def get_path(data: Any, path: str, default: Any = None) -> Any:
    """The value at a dotted key path of a nested dict/list, or ``default`` when it is absent.

    Example:
        >>> get_path({"optimizer": {"lr": 0.1}, "param_groups": [{"lr_scale": 0.5}]}, "param_groups.0.lr_scale")
        0.5
    """
    node = data
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return default
    return node


def parse_when(where: str, when: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """A ``when:`` mapping -> ``((key path, allowed values), ...)``; a :class:`ConfigError` names ``where``."""
    if when is None:
        return ()
    if not isinstance(when, Mapping) or not when:
        raise ConfigError(f"{where}.when", when, "a mapping of key paths to a value or a list of values, "
                          "e.g. {optimizer.name: sgd}")
    out = []
    for key, allowed in when.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}.when", key, "dotted key paths such as optimizer.name")
        key = normalize_path(key)
        if isinstance(allowed, Mapping):
            out.append((key, (parse_compare(f"{where}.when.{key}", allowed),)))
            continue
        values = tuple(allowed) if isinstance(allowed, (list, tuple)) else (allowed,)
        if not values:
            raise ConfigError(f"{where}.when.{key}", allowed, "a value or a non-empty list of values")
        out.append((key, values))
    return tuple(out)

def parse_compare(where: str, spec: Mapping[str, Any]) -> Compare:
    """``{">=": 2, "<": 5}`` -> a :class:`Compare`; a :class:`ConfigError` names ``where.<op>``."""
    if not spec:
        raise ConfigError(where, dict(spec), "comparisons such as {'>=': 2} (operators: " + ", ".join(_OPS) + ")")
    ops = []
    for op, ref in spec.items():
        if op not in _OPS:
            swapped = {"=>": ">=", "=<": "<=", "=": "==", "<>": "!="}.get(str(op))
            raise ConfigError(f"{where}.{op}", ref, "a comparison operator: " + ", ".join(_OPS),
                              suggestions=[swapped] if swapped else did_you_mean(str(op), _OPS))
        if not _is_number(ref) or not math.isfinite(ref):
            raise ConfigError(f"{where}.{op}", ref, "a finite number to compare with")
        ops.append((str(op), ref))
    return Compare(tuple(ops))
