"""Search spaces over the ``optim:`` block, keyed by the same dotted paths as the config.

A search space maps key paths of the config (``optimizer.lr``, ``scheduler.warmup``,
``param_groups.0.lr_scale``) to a parameter spec::

    optimizer.name: {choices: [adamw, sgd]}                     # categorical
    optimizer.lr: {low: 1.0e-5, high: 1.0e-1, log: true}         # float (log scale)
    scheduler.warmup: {low: 0, high: 200, step: 50}              # int (both ends are ints)
    optimizer.momentum: {low: 0.8, high: 0.99, when: {optimizer.name: sgd}}   # conditional
    loss.label_smoothing: 0.1                                    # fixed (or {value: 0.1})

One key may be searched differently under different conditions: ``PATH@LABEL`` names a variant of
``PATH`` (Optuna sees the whole name as its own parameter), and the variants of one path must
exclude each other through their conditions::

    optimizer.lr@adamw: {low: 1.0e-4, high: 1.0e-2, log: true, when: {optimizer.name: adamw}}
    optimizer.lr@sgd: {low: 1.0e-2, high: 1.0, log: true, when: {optimizer.name: sgd}}

A sampled trial is a set of dotted overrides applied to the base config with
:func:`lightning_optkit.config.apply_overrides` (``None`` deletes a key), so a trial's config is
validated exactly as a hand-written one. Everything is checked up front by
:meth:`SearchSpace.validate`: unknown key paths, empty choices, ``low >= high``, ``log`` with
``low <= 0``, and every value at the edges of every range, applied to the base config (with its
conditions satisfied), must give a valid config -- a :class:`~lightning_optkit.ConfigError` before
any training, naming ``search.<path>``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import (
    ConfigError,
    LossConfig,
    OptimBlock,
    OptimConfig,
    OptimizerConfig,
    ParamGroupRule,
    SchedulerConfig,
    did_you_mean,
    load_config,
    read_yaml,
)
from ..config._errors import format_value

__all__ = ["TARGET_SECTIONS", "Compare", "Param", "SearchSpace", "get_path", "load_search", "normalize_path",
           "split_overrides"]

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

# Which pydantic model sits under a key of a closed block (unknown keys are errors there); the open
# blocks (optimizer, scheduler, loss, a param_groups rule) take any key, checked by load_config.
_CHILD: dict[tuple[type, str], tuple[type, bool]] = {
    (OptimConfig, "optimizer"): (OptimizerConfig, False),
    (OptimConfig, "scheduler"): (SchedulerConfig, False),
    (OptimConfig, "loss"): (LossConfig, False),
    (OptimConfig, "param_groups"): (ParamGroupRule, True),
    (OptimConfig, "optimizers"): (OptimBlock, True),
    (OptimBlock, "optimizer"): (OptimizerConfig, False),
    (OptimBlock, "scheduler"): (SchedulerConfig, False),
    (OptimBlock, "param_groups"): (ParamGroupRule, True),
}
_CLOSED = (OptimConfig, OptimBlock)


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


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) key of the config.

    Build it from a spec with :meth:`SearchSpace.from_dict`; ``kind`` is ``float``, ``int``,
    ``categorical`` or ``fixed``. ``when`` holds ``(key path, allowed values)`` pairs that must all
    hold for the parameter to be used in a trial.

    Example:
        >>> p = Param.from_spec("optimizer.lr", {"low": 1e-4, "high": 1e-1, "log": True})
        >>> p.kind, p.low, p.high, p.log
        ('float', 0.0001, 0.1, True)
    """

    path: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    _decode: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    lr_scaling: str | None = None
    lr_base: float | None = None

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, path: str, spec: Any) -> Param:
        """Parse one entry of a search space; a :class:`ConfigError` names ``search.<path>``."""
        where = f"search.{path}"
        if isinstance(spec, Param):
            return spec
        if isinstance(spec, (list, tuple)):
            raise ConfigError(where, spec, "a parameter spec such as {choices: [...]} or {low: 1e-4, high: 1e-1}",
                              hint="a bare list is ambiguous: write {choices: [...]} to search over its items, "
                                   "or {value: [...]} to fix the key to the list")
        if not isinstance(spec, Mapping):
            return cls(path, "fixed", value=spec)
        if "lr_scaling" in spec or "lr_base" in spec:
            rest = {k: v for k, v in spec.items() if k not in ("lr_scaling", "lr_base")}
            return cls._with_lr_scaling(where, cls.from_spec(path, rest), spec)
        unknown = [k for k in spec if k not in SPEC_KEYS]
        if unknown:
            key = unknown[0]
            raise ConfigError(f"{where}.{key}", spec[key], "a key of a parameter spec: " + ", ".join(SPEC_KEYS),
                              suggestions=did_you_mean(str(key), SPEC_KEYS))
        kind = cls._kind(where, spec)
        when = cls._parse_when(where, spec.get("when"))
        if kind == "fixed":
            if "value" not in spec:
                raise ConfigError(f"{where}.value", expected="the value to fix the key to (null deletes it)")
            cls._only(where, spec, kind, ("type", "value", "when"))
            return cls(path, "fixed", value=spec["value"], when=when)
        if kind == "categorical":
            cls._only(where, spec, kind, ("type", "choices", "when"))
            choices = spec.get("choices")
            if not isinstance(choices, (list, tuple)):
                raise ConfigError(f"{where}.choices", choices, "a list of values")
            if not choices:
                raise ConfigError(f"{where}.choices", list(choices), "a non-empty list of values")
            decode: dict[Any, Any] = {}
            for c in choices:
                tok = _token(c)
                if tok in decode:
                    raise ConfigError(f"{where}.choices", list(choices), f"distinct values ({c!r} is listed twice)")
                decode[tok] = c
            return cls(path, "categorical", choices=tuple(choices), when=when, _decode=decode)
        cls._only(where, spec, kind, ("type", "low", "high", "log", "step", "when"))
        return cls._numeric(where, path, kind, spec, when)

    @classmethod
    def _with_lr_scaling(cls, where: str, param: Param, spec: Mapping[str, Any]) -> Param:
        """``lr_scaling: sqrt|linear`` (and ``lr_base``): the LR follows this key (a batch size) by that rule."""
        import dataclasses

        rule = spec.get("lr_scaling")
        if rule is None or str(rule).lower() not in LR_SCALING:
            raise ConfigError(f"{where}.lr_scaling", rule, "one of " + ", ".join(LR_SCALING) + " (optimizer.lr "
                              "times (value / lr_base) ** 1 or ** 0.5)", suggestions=did_you_mean(str(rule), LR_SCALING))
        if target_section(param.path) is None:
            raise ConfigError(f"{where}.lr_scaling", rule, "lr_scaling on a data./trainer./model. key (a batch size, "
                              "an accumulation), not on a key of the optim block")
        values = param.probe_values()
        if not all(_is_number(v) and v > 0 for v in values):
            raise ConfigError(f"{where}.lr_scaling", rule, "a parameter of positive numbers (a batch size)")
        base = spec.get("lr_base")
        if base is not None and (not _is_number(base) or not base > 0):
            raise ConfigError(f"{where}.lr_base", base, "a positive number: the batch size the base LR is tuned for")
        return dataclasses.replace(param, lr_scaling=str(rule).lower(), lr_base=base)

    def lr_factor(self, value: Any) -> float:
        """The factor on the LR for ``value`` under this parameter's ``lr_scaling`` (1.0 without)."""
        if self.lr_scaling is None or self.lr_base is None:
            return 1.0
        return float((value / self.lr_base) ** LR_SCALING[self.lr_scaling])

    @staticmethod
    def _kind(where: str, spec: Mapping[str, Any]) -> str:
        declared = spec.get("type")
        if declared is not None:
            kind = _KIND_ALIASES.get(str(declared).lower(), str(declared).lower())
            if kind not in KINDS:
                raise ConfigError(f"{where}.type", declared, "one of " + ", ".join(KINDS),
                                  suggestions=did_you_mean(str(declared), KINDS))
            return kind
        if "choices" in spec:
            return "categorical"
        if "value" in spec:
            return "fixed"
        if "low" in spec or "high" in spec:
            # both ends written as integers make an int parameter ({low: 1, high: 8}); write 1.0 for a float
            ends = [spec.get("low"), spec.get("high"), spec.get("step")]
            ints = all(isinstance(v, int) and not isinstance(v, bool) for v in ends if v is not None)
            return "int" if ints and spec.get("low") is not None and spec.get("high") is not None else "float"
        raise ConfigError(where, dict(spec), "a parameter spec: {choices: [...]}, {low: L, high: H} or {value: V}")

    @staticmethod
    def _only(where: str, spec: Mapping[str, Any], kind: str, allowed: tuple[str, ...]) -> None:
        for key in spec:
            if key not in allowed:
                raise ConfigError(f"{where}.{key}", spec[key],
                                  f"no {key!r} in a {kind} parameter (its keys: {', '.join(allowed)})")

    @classmethod
    def _numeric(cls, where: str, path: str, kind: str, spec: Mapping[str, Any], when: Any) -> Param:
        low, high = spec.get("low"), spec.get("high")
        for key, v in (("low", low), ("high", high)):
            if v is None:
                raise ConfigError(f"{where}.{key}", expected=f"the {'lower' if key == 'low' else 'upper'} end of the range")
            if not _is_number(v) or not math.isfinite(v):
                raise ConfigError(f"{where}.{key}", v, "a finite number")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}.log", log, "true or false")
        step = spec.get("step")
        if step is not None and (not _is_number(step) or not step > 0):
            raise ConfigError(f"{where}.step", step, "a positive number")
        if kind == "int":
            for key, v in (("low", low), ("high", high), ("step", step)):
                if v is not None and not float(v).is_integer():
                    raise ConfigError(f"{where}.{key}", v, "an integer (the parameter is an int)")
            low, high = int(low), int(high)
            step = int(step) if step is not None else None
        if not low < high:
            raise ConfigError(f"{where}.low", low, f"a value below high={high!r} (use {{value: ...}} to fix a key)")
        if log and low <= 0:
            raise ConfigError(f"{where}.low", low, "a positive number: log: true needs low > 0",
                              hint="start the range above zero, or drop log: true")
        if log and step is not None and kind == "float":
            raise ConfigError(f"{where}.step", step, "no step with log: true (Optuna samples one or the other)")
        if log and step not in (None, 1) and kind == "int":
            raise ConfigError(f"{where}.step", step, "step 1 (or none) with log: true")
        if step is not None and step > high - low:
            raise ConfigError(f"{where}.step", step, f"at most high - low = {high - low!r}")
        return cls(path, kind, low=low, high=high, log=log, step=step, when=when)

    @staticmethod
    def _parse_when(where: str, when: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
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
                out.append((key, (Param._parse_compare(f"{where}.when.{key}", allowed),)))
                continue
            values = tuple(allowed) if isinstance(allowed, (list, tuple)) else (allowed,)
            if not values:
                raise ConfigError(f"{where}.when.{key}", allowed, "a value or a non-empty list of values")
            out.append((key, values))
        return tuple(out)

    @staticmethod
    def _parse_compare(where: str, spec: Mapping[str, Any]) -> Compare:
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

    @property
    def config_path(self) -> str:
        """The config key this parameter sets: its name without a ``@label`` variant suffix."""
        return self.path.split("@", 1)[0]

    # -- use ----------------------------------------------------------------------------------------
    def suggest(self, trial: Any) -> Any:
        """Ask ``trial`` for a value (Optuna's parameter name is the key path); fixed: the value."""
        if self.kind == "float":
            return trial.suggest_float(self.path, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.path, self.low, self.high, step=self.step or 1, log=self.log)
        if self.kind == "categorical":
            return self._decode[trial.suggest_categorical(self.path, [_token(c) for c in self.choices])]
        return self.value

    def decode(self, stored: Any) -> Any:
        """The config value for what Optuna stored for this parameter (JSON choices decoded)."""
        if self.kind == "categorical":
            return self._decode.get(stored, stored)
        return stored

    def _matching_choice(self, value: Any) -> tuple[bool, Any]:
        for c in self.choices:
            if (_same(value, c) if isinstance(c, _PRIMITIVE) else _token(value) == _token(c)):
                return True, c
        return False, None

    def encode(self, value: Any) -> Any:
        """What Optuna stores for ``value``, or ``None`` when ``value`` is outside this parameter."""
        if self.kind == "categorical":
            found, choice = self._matching_choice(value)
            return _token(choice) if found else None
        return value if self.contains(value) else None

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a possible value of this parameter (a choice, or inside the range)."""
        if self.kind == "categorical":
            return self._matching_choice(value)[0]
        if self.kind == "fixed":
            return _same(value, self.value)
        if not _is_number(value) or not self.low <= value <= self.high:  # type: ignore[operator]
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        if self.step is not None:
            k = (value - self.low) / self.step  # type: ignore[operator]
            return abs(k - round(k)) < 1e-9
        return True

    def probe_values(self) -> list[Any]:
        """Values that :meth:`SearchSpace.validate` tries: both ends of a range, every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "float" and self.step is not None:
            n = math.floor((self.high - self.low) / self.step + 1e-9)  # type: ignore[operator]
            return [self.low, self.low + n * self.step]  # type: ignore[operator]
        return [self.low, self.high]

    def to_spec(self) -> Any:
        """The spec this parameter was parsed from (normalized)."""
        out: dict[str, Any]
        if self.kind == "fixed":
            out = {"value": self.value}
        elif self.kind == "categorical":
            out = {"choices": list(self.choices)}
        else:
            out = {"type": self.kind, "low": self.low, "high": self.high}
            if self.log:
                out["log"] = True
            if self.step is not None:
                out["step"] = self.step
        if self.when:
            out["when"] = {k: list(v) if len(v) > 1 else v[0].to_spec() if isinstance(v[0], Compare) else v[0]
                           for k, v in self.when}
        if self.lr_scaling is not None:
            out["lr_scaling"] = self.lr_scaling
            if self.lr_base is not None:
                out["lr_base"] = self.lr_base
        return out


class SearchSpace:
    """A search space over the optim block: ``{dotted key path: parameter spec}``.

    Load it from a dict, a YAML file (a ``search:`` mapping, optionally next to an ``optim:`` base
    config) or a preset name (``"digits"``, ``"adamw"``...; see :func:`search_preset`), validate it
    against the base config with :meth:`validate`, and sample trial overrides with :meth:`sample`.

    Conditions (``when:``) may test another searched parameter (categorical or fixed) or any key
    of the base config; a parameter whose conditions fail is left out of the trial (Optuna then
    never sees it, as with ``if`` in a hand-written objective).

    Example:
        >>> import optuna
        >>> space = SearchSpace.from_dict({
        ...     "optimizer.name": {"choices": ["adamw", "sgd"]},
        ...     "optimizer.lr": {"low": 1e-4, "high": 1e-1, "log": True},
        ...     "optimizer.momentum": {"low": 0.8, "high": 0.99, "when": {"optimizer.name": "sgd"}},
        ... })
        >>> base = {"optimizer": {"name": "adamw", "lr": 1e-3}}
        >>> space.validate(base)
        >>> study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        >>> overrides = space.sample(study.ask(), base)
        >>> ("optimizer.momentum" in overrides) == (overrides["optimizer.name"] == "sgd")
        True
    """

    def __init__(self, params: Mapping[str, Param]) -> None:
        self.params: dict[str, Param] = dict(params)
        self.order: list[str] = self._topological_order()
        # the values model./data./trainer. keys have without a search (set by tune(), for base_params)
        self.target_base: dict[str, Any] = {}

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        """Parse ``{path: spec}`` (or ``{"search": {path: spec}}``); checks the paths and specs."""
        if isinstance(data, Mapping) and set(data) <= {"search", "optim"} and "search" in data:
            data = data["search"]
        if not isinstance(data, Mapping):
            raise ConfigError("search", data, "a mapping of dotted config key paths to parameter specs, "
                              "e.g. {optimizer.lr: {low: 1.0e-5, high: 1.0e-1, log: true}}")
        if not data:
            raise ConfigError("search", {}, "at least one parameter to search")
        params: dict[str, Param] = {}
        for path, spec in data.items():
            path = normalize_path(path)
            if path in params:
                raise ConfigError(f"search.{path}", spec, "one spec per key (model.init_args.X and model.X are one key)")
            if isinstance(path, str) and "@" in path:
                key, label = path.split("@", 1)
                if not _LABEL.fullmatch(label):
                    raise ConfigError(f"search.{path}", path, "PATH@LABEL with a label of letters, digits, _ or -, "
                                      "e.g. optimizer.lr@sgd")
                _check_path(key, where=f"search.{path}")
            else:
                _check_path(path)
            params[path] = Param.from_spec(path, spec)
        space = cls(params)
        space._check_conditions()
        return space

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> SearchSpace:
        """Read a YAML file with a ``search:`` mapping (an ``optim:`` block beside it is ignored here)."""
        data = read_yaml(path)
        if not isinstance(data, Mapping) or "search" not in data:
            raise ConfigError("search", str(path), "a YAML file with a top-level `search:` mapping",
                              hint="see configs/search_*.yaml")
        return cls.from_dict(data["search"])

    def to_dict(self) -> dict[str, Any]:
        """``{path: spec}``, which :meth:`from_dict` turns back into an equal space."""
        return {name: p.to_spec() for name, p in self.params.items()}

    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self) -> Iterator[str]:
        return iter(self.params)

    def __contains__(self, name: object) -> bool:
        return name in self.params

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"SearchSpace({', '.join(self.params)})"

    @property
    def searched(self) -> list[str]:
        """The parameters Optuna samples (fixed ones left out)."""
        return [n for n in self.order if self.params[n].kind != "fixed"]

    @property
    def has_conditions(self) -> bool:
        return any(p.when for p in self.params.values())

    def _topological_order(self) -> list[str]:
        order: list[str] = []
        state: dict[str, int] = {}  # 1: visiting, 2: done

        def visit(name: str, chain: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = " -> ".join([*chain[chain.index(name):], name])
                raise ConfigError(f"search.{name}.when", None, f"conditions without a cycle ({cycle})")
            state[name] = 1
            for key, _ in self.params[name].when:
                if key in self.params:
                    visit(key, [*chain, name])
            state[name] = 2
            order.append(name)

        for name in self.params:
            visit(name, [])
        return order

    def _check_conditions(self) -> None:
        self._check_variants()
        for name, p in self.params.items():
            for key, allowed in p.when:
                if key == name:
                    raise ConfigError(f"search.{name}.when.{key}", list(allowed), "a condition on another key")
                _check_path(key, where=f"search.{name}.when.{key}")
                other = self.params.get(key)
                if other is None:
                    continue
                if isinstance(allowed[0], Compare):
                    if _witness(other, allowed[0]) is None:
                        raise ConfigError(f"search.{name}.when.{key}", allowed[0].to_spec(),
                                          f"a comparison that some value of {key} passes ({other.to_spec()})")
                    continue
                if other.kind == "float" or (other.kind == "int" and not all(other.contains(v) for v in allowed)):
                    raise ConfigError(f"search.{name}.when.{key}", list(allowed),
                                      f"a comparison such as {{'>=': 2}} on a range ({key} is a {other.kind} range), "
                                      "or values on a categorical or fixed parameter")
                for v in allowed:
                    if not other.contains(v):
                        options = list(other.choices) if other.kind == "categorical" else [other.value]
                        raise ConfigError(f"search.{name}.when.{key}", v,
                                          f"one of the values of {key}: {', '.join(map(repr, options))}",
                                          suggestions=did_you_mean(v, [str(o) for o in options]))

    def _check_variants(self) -> None:
        """Parameters that set the same config key must exclude each other through their conditions."""
        by_key: dict[str, list[Param]] = {}
        for p in self.params.values():
            by_key.setdefault(p.config_path, []).append(p)
        for key, group in by_key.items():
            for i, a in enumerate(group):
                for b in group[i + 1:]:
                    wa, wb = dict(a.when), dict(b.when)
                    if not any(not any(_overlap(x, y) for x in wa[k] for y in wb[k]) for k in wa.keys() & wb.keys()):
                        raise ConfigError(
                            f"search.{b.path}", b.to_spec(),
                            f"a condition that excludes {a.path} (both set {key}; one trial can take only one)",
                            hint=f"give both a `when:` on the same key with different values, e.g. "
                                 f"{a.path}: {{..., when: {{optimizer.name: adamw}}}} and "
                                 f"{b.path}: {{..., when: {{optimizer.name: sgd}}}}")

    # -- activity and sampling ------------------------------------------------------------------------
    def is_active(self, name: str, values: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> bool:
        """Whether ``name``'s conditions hold, given the values chosen so far and the base config."""
        for key, allowed in self.params[name].when:
            if key in self.params:
                if key not in values:
                    return False
                current = values[key]
            else:
                current = get_path(base or {}, key)
            if not any(_matches(current, a) for a in allowed):
                return False
        return True

    def sample(self, trial: Any, base: OptimConfig | Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Sample one trial: ``{path: value}`` overrides for the base config (inactive keys left out).

        Args:
            trial: an :class:`optuna.trial.Trial` (anything with ``suggest_float/int/categorical``).
            base: the base config, for conditions on keys that are not searched.
        """
        base_dict = _as_dict(base)
        values: dict[str, Any] = {}
        for name in self.order:
            if self.is_active(name, values, base_dict):
                values[name] = self.params[name].suggest(trial)
        return self._as_overrides(values)

    def _as_overrides(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``{parameter name: value}`` -> ``{config key path: value}`` (a ``@label`` variant sets its path)."""
        return {self.params[name].config_path: v for name, v in values.items()}

    def overrides_from_params(self, params: Mapping[str, Any], base: OptimConfig | Mapping[str, Any] | None = None
                              ) -> dict[str, Any]:
        """The overrides of a finished trial from its Optuna ``params`` (fixed keys re-derived)."""
        base_dict = _as_dict(base)
        values: dict[str, Any] = {}
        for name in self.order:
            p = self.params[name]
            if not self.is_active(name, values, base_dict):
                continue
            if p.kind == "fixed":
                values[name] = p.value
            elif name in params:
                values[name] = p.decode(params[name])
        return self._as_overrides(values)

    def base_params(self, base: OptimConfig | Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The base config's own values as Optuna params (to enqueue it as the first trial).

        Returns ``(params, left_out)``: keys whose base value is missing or outside the searched
        range are left out (the sampler picks them).
        """
        base_dict = {**_as_dict(base), **self.target_base}
        values: dict[str, Any] = {}
        params: dict[str, Any] = {}
        left_out: list[str] = []
        for name in self.order:
            p = self.params[name]
            if not self.is_active(name, values, base_dict):
                continue
            current = get_path(base_dict, p.config_path)
            if p.kind == "fixed":
                values[name] = p.value
                continue
            encoded = p.encode(current) if current is not None else None
            if encoded is None:
                left_out.append(name)  # the sampler picks it (and whatever depends on it)
                continue
            params[name] = encoded
            values[name] = current
        return params, left_out

    # -- validation --------------------------------------------------------------------------------
    def validate(self, base: OptimConfig | Mapping[str, Any] | str | os.PathLike[str]) -> None:
        """Check every parameter against the base config before any training.

        Each value at the edges of each range, and each choice, is applied to the base config with
        its conditions satisfied and the other active parameters at their first value; the result
        must load with :func:`~lightning_optkit.load_config` and its optimizer must construct.

        Raises:
            ConfigError: naming ``search.<path>``, the value and why the config it makes is invalid.
        """
        base_cfg = base if isinstance(base, OptimConfig) else load_config(base)
        base_dict = base_cfg.to_dict()
        tried: set[str] = set()
        for name in self.order:
            for value in self.params[name].probe_values():
                assignment = self._probe(name, value, base_dict)
                if assignment is None:
                    continue  # its conditions can never hold with this base config: never used
                key = json.dumps(assignment, sort_keys=True, default=repr)
                if key in tried:
                    continue
                tried.add(key)
                overrides, _targets = split_overrides(self._as_overrides(assignment))
                overrides = self.scale_lr(overrides, assignment, base_dict)
                try:
                    cfg = load_config(base_dict, overrides)
                    _construct_optimizers(cfg)
                except ConfigError as err:
                    raise _explain(name, value, assignment, err, base_dict, self.params) from None

    @property
    def target_params(self) -> list[Param]:
        """The parameters of ``model.``/``data.``/``trainer.`` keys (not of the optim block)."""
        return [self.params[n] for n in self.order if target_section(self.params[n].config_path) is not None]

    def scale_lr(self, overrides: Mapping[str, Any], values: Mapping[str, Any], base: OptimConfig | Mapping[str, Any]
                 ) -> dict[str, Any]:
        """The optim overrides with every block's LR scaled by the ``lr_scaling`` parameters among ``values``.

        ``values`` are the trial's ``{parameter name: value}``; the LR scaled is the trial's own
        (``optimizer.lr`` when searched) or the base config's.

        Example:
            >>> space = SearchSpace.from_dict({"data.batch_size": {"choices": [32, 128], "lr_scaling": "linear",
            ...                                                     "lr_base": 64}})
            >>> space.scale_lr({}, {"data.batch_size": 128}, {"optimizer": {"name": "sgd", "lr": 0.1}})
            {'optimizer.lr': 0.2}
        """
        factor = 1.0
        for p in self.params.values():
            if p.lr_scaling is None:
                continue
            value = values.get(p.path, values.get(p.config_path) if "@" not in p.path else None)
            if value is not None:
                factor *= p.lr_factor(value)
        out = dict(overrides)
        if factor == 1.0:
            return out
        base_dict = _as_dict(base)
        blocks = base_dict.get("optimizers")
        keys = [f"optimizers.{i}.optimizer.lr" for i in range(len(blocks))] if blocks else ["optimizer.lr"]
        for key in keys:
            lr = out.get(key, get_path(base_dict, key))
            if lr is None:
                from ..config import OptimizerConfig

                lr = OptimizerConfig.model_fields["lr"].default
            out[key] = float(lr) * factor
        return out

    def _probe(self, name: str, value: Any, base: Mapping[str, Any]) -> dict[str, Any] | None:
        values: dict[str, Any] = {}

        def force(n: str, v: Any) -> bool:
            if n in values:
                return _same(values[n], v)
            values[n] = v
            for key, allowed in self.params[n].when:
                other = self.params.get(key)
                if other is None:
                    if not any(_matches(get_path(base, key), a) for a in allowed):
                        return False
                elif key in values:
                    if not any(_matches(values[key], a) for a in allowed):
                        return False
                elif not force(key, _witness(other, allowed[0]) if isinstance(allowed[0], Compare) else allowed[0]):
                    return False
            return True

        if not force(name, value):
            return None
        for other in self.order:
            if other not in values and self.is_active(other, values, base):
                values[other] = self.params[other].probe_values()[0]
        return {k: values[k] for k in self.order if k in values}


def _witness(param: Param, cond: Compare) -> Any:
    """The first value of ``param`` that passes ``cond`` (smallest for an int range), or ``None``."""
    candidates: list[Any] = list(param.probe_values())
    if param.kind == "int":
        step = int(param.step or 1)
        count = (int(param.high) - int(param.low)) // step + 1  # type: ignore[arg-type]
        if count <= 10_000:
            candidates = [int(param.low) + k * step for k in range(count)]  # type: ignore[arg-type]
        else:
            candidates += [int(ref) + d for _, ref in cond.ops for d in (-1, 0, 1)]
    elif param.kind == "float":
        candidates += [math.nextafter(ref, d) for _, ref in cond.ops for d in (-math.inf, ref, math.inf)]
    return next((c for c in candidates if param.contains(c) and cond.holds(c)), None)


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
    if base is None:
        return {}
    if isinstance(base, OptimConfig):
        return base.to_dict()
    return dict(base)


def _check_path(path: Any, where: str | None = None) -> None:
    """Reject paths that cannot be keys of the optim config (the rest is checked by load_config)."""
    label = where or f"search.{path}"
    if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
        raise ConfigError(label if isinstance(path, str) and path else "search", path,
                          "a dotted key path of the optim config, such as optimizer.lr")
    parts = path.split(".")
    if parts[0] in TARGET_SECTIONS:  # checked against the classes' signatures by tune() (see _targets.py)
        if len(parts) < 2 or parts[1].isdigit():
            raise ConfigError(label, path, f"{parts[0]}.<argument>, e.g. model.n_layers, data.batch_size, "
                              "trainer.gradient_clip_val")
        return
    model: type | None = OptimConfig
    i = 0
    while model is not None and i < len(parts):
        part = parts[i]
        if model in _CLOSED:
            fields = [f for f in model.model_fields if not (model is OptimBlock and f == "loss")]  # type: ignore[attr-defined]
            if part not in fields:
                prefix = ".".join(parts[:i])
                known = [f"{prefix}.{f}" if prefix else f for f in fields]
                sugg = [".".join([s, *parts[i + 1:]]) for s in did_you_mean(".".join(parts[: i + 1]), known)]
                raise ConfigError(label, path, "a key path of the optim config; valid keys "
                                  f"{'at the top' if not prefix else 'under ' + prefix}: {', '.join(fields)}",
                                  suggestions=sugg)
            child = _CHILD.get((model, part))
            if child is None:
                return  # a leaf of a closed block (layer_decay, no_weight_decay...)
            model, is_list = child
            i += 1
            if is_list:
                if i < len(parts) and not parts[i].isdigit():
                    raise ConfigError(label, path, f"an item index after {'.'.join(parts[:i])} "
                                      f"(e.g. {'.'.join([*parts[:i], '0', *parts[i:]])})")
                i += 1
        else:
            return  # an open block: any key, checked against the optimizer/schedule/loss by load_config


def _construct_optimizers(cfg: OptimConfig) -> None:
    """Construct each block's optimizer on a dummy parameter: catches what only the constructor checks."""
    import torch

    from ..optim import resolve_optimizer

    for prefix, block in cfg.blocks():
        info = resolve_optimizer(block.optimizer.name, f"{prefix}optimizer.name")
        kwargs = {**info.defaults, **block.optimizer.kwargs}
        try:
            info.cls([torch.nn.Parameter(torch.zeros(2))], lr=block.optimizer.lr, **kwargs)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"{prefix}optimizer", block.optimizer.model_dump(),
                              f"arguments {info.cls.__name__} accepts ({exc})") from None


def _fmt_assignment(assignment: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {format_value(v, 40)}" for k, v in assignment.items()) + "}"


def _explain(name: str, value: Any, assignment: Mapping[str, Any], err: ConfigError, base: Mapping[str, Any],
             params: Mapping[str, Param]) -> ConfigError:
    inner = f"{err.path or '<config>'}: " + ("" if err.value is None else f"got {format_value(err.value)}; ") + (
        f"expected {err.expected}")
    suggestions: list[str] = []
    label = name
    name = params[name].config_path
    owner = next((n for n in assignment if params[n].config_path == err.path), None)
    if err.path != name and owner is not None:  # another searched key is the one that does not fit
        label, name, value = owner, err.path, assignment[owner]
    shown = format_value(value, 40)
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    if err.path == name and parent and get_path(base, parent) is None:
        hint = (f"the base config has no `{parent}` block, so {name} lands in a default one; add the block to the "
                "base config, or drop the key from the search")
    elif err.path == name:
        suggestions = [f"{parent}.{s}" if parent else s for s in err.suggestions]
        hint = ("if the key only applies to some choices of another parameter, make it conditional "
                "(e.g. when: {optimizer.name: sgd}); otherwise change the range")
    elif err.path and name.startswith(err.path + ".") and get_path(base, err.path) is None:
        hint = f"the base config has no {err.path}: add it there, then search {name}"
    elif err.path and owner is None and get_path(base, err.path) is not None and not name.startswith(err.path + "."):
        hint = (f"the base config's {err.path} does not fit {name} = {shown}: drop it for that choice with "
                f"`{err.path}: {{value: null, when: {{{name}: {shown}}}}}`, or change the base config")
    else:
        hint = "these values do not work together: change a range, or make a parameter conditional with when: {...}"
    return ConfigError(
        f"search.{label}", value,
        f"a value that gives a valid config, but the trial {_fmt_assignment(assignment)} fails with {inner}",
        suggestions=suggestions, hint=hint,
    )


def load_search(source: SearchSpace | Mapping[str, Any] | str | os.PathLike[str]) -> tuple[SearchSpace, dict[str, Any] | None]:
    """A search space from a :class:`SearchSpace`, dict, YAML path or preset name.

    Returns ``(space, base)``: ``base`` is the ``optim:`` block found next to ``search:`` in a
    YAML file or preset (used when no base config is given), else ``None``.

    Example:
        >>> space, base = load_search("digits")
        >>> "optimizer.lr" in space, base["optimizer"]["name"]
        (True, 'adamw')
    """
    from ._presets import PRESETS, search_preset

    if isinstance(source, SearchSpace):
        return source, None
    if isinstance(source, Mapping):
        base = source.get("optim") if isinstance(source.get("optim"), Mapping) and "search" in source else None
        return SearchSpace.from_dict(source), dict(base) if base is not None else None
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        if isinstance(source, str) and not text.endswith((".yaml", ".yml")) and not Path(text).exists():
            if text.lower() in PRESETS or (text and all(t.strip().lower() in PRESETS for t in text.split("+"))):
                preset = search_preset(text)
                return SearchSpace.from_dict(preset["search"]), preset.get("optim")
            raise ConfigError("search", text, "a YAML file or a preset: " + ", ".join(sorted(PRESETS)),
                              suggestions=did_you_mean(text, PRESETS))
        data = read_yaml(source)
        if not isinstance(data, Mapping) or "search" not in data:
            raise ConfigError("search", text, "a YAML file with a top-level `search:` mapping",
                              hint="see configs/search_*.yaml")
        base = data.get("optim")
        return SearchSpace.from_dict(data["search"]), dict(base) if isinstance(base, Mapping) else None
    raise ConfigError("search", source, "a SearchSpace, a dict, a YAML path or a preset name")

