"""One parameter of a search space (:class:`Param`): built from its spec, sampled, encoded for Optuna."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError, did_you_mean
from ._space_parse import (
    _KIND_ALIASES,
    _PRIMITIVE,
    KINDS,
    LR_SCALING,
    SPEC_KEYS,
    Compare,
    _is_number,
    _same,
    _token,
    parse_compare,
    parse_when,
    target_section,
)


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

    _parse_when = staticmethod(parse_when)
    _parse_compare = staticmethod(parse_compare)

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
