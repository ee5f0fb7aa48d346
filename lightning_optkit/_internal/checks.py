"""Argument checkers that raise :class:`~.errors.ConfigError` naming the key, the value and what is valid.

Callbacks, probes and the finder check their constructor arguments with these, so a bad value fails
when the object is built, with the same wording everywhere.

Example:
    >>> check_number("AutoClip", "percentile", 50, lo=0, hi=100)
    50.0
    >>> check_int("GradNormMonitor", "log_every_n_steps", 0)
    Traceback (most recent call last):
    ...
    lightning_optkit.config.ConfigError: GradNormMonitor.log_every_n_steps: got 0; expected an integer >= 1.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError, did_you_mean

__all__ = ["check_choice", "check_int", "check_number", "in_interval"]


def in_interval(value: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = True,
                hi_open: bool = False, integer: bool = False) -> bool:
    """Whether ``value`` is a finite real number (not a bool) inside the interval; ``integer``: a whole number.

    Example:
        >>> in_interval(0.5, 0, 1), in_interval(0, 0, 1), in_interval(True), in_interval(float("nan"))
        (True, False, False, False)
        >>> in_interval(10**400, 1)  # a huge int is still an int, not an overflow
        True
    """
    # an int is always finite (math.isfinite would overflow on one past float's range)
    ok = not isinstance(value, bool) and (isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)))
    if ok and integer:
        ok = isinstance(value, int) or float(value).is_integer()
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    return ok


def check_int(owner: str, name: str, value: Any, minimum: int = 1, allow_none: bool = False) -> int | None:
    """``value`` if it is an int >= ``minimum`` (or None when allowed), else a ConfigError naming it."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise ConfigError(f"{owner}.{name}", value, what)
    return int(value)


def check_number(
    owner: str, name: str, value: Any, lo: float | None = None, hi: float | None = None,
    lo_open: bool = True, hi_open: bool = False, allow_none: bool = False, hint: str = "",
) -> float | None:
    """``value`` as a float inside the interval, else a ConfigError that prints the interval."""
    if value is None and allow_none:
        return None
    if not in_interval(value, lo, hi, lo_open=lo_open, hi_open=hi_open):
        left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ConfigError(f"{owner}.{name}", value, f"a finite number in {left}{lo_s}, {hi_s}{right}"
                          + (" or None" if allow_none else ""), hint=hint)
    return float(value)


def check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` lower-cased if it is one of ``choices``, else a ConfigError with a did-you-mean."""
    if isinstance(value, str) and value.lower() in choices:
        return value.lower()
    raise ConfigError(f"{owner}.{name}", value, "one of " + ", ".join(repr(c) for c in choices),
                      suggestions=did_you_mean(value, choices))
