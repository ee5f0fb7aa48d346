"""The one exception every bad configuration ends in, and the did-you-mean behind its suggestions.

Public as :class:`lightning_optkit.config.ConfigError`; it lives in the toolbox so that every layer
(the checkers of :mod:`.checks` included) can raise it without importing a component above.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

__all__ = ["ConfigError", "did_you_mean", "format_value"]

_MISSING = object()


def format_value(value: Any, limit: int = 80) -> str:
    """``repr`` of ``value``, shortened so that error messages stay one line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(name: Any, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Close matches of ``name`` among ``candidates`` (case-insensitive), best first."""
    if not isinstance(name, str):
        return []
    cands = list(dict.fromkeys(candidates))
    lowered = {c.lower(): c for c in cands}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[h] for h in hits]


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key path, the value and what is valid.

    Attributes:
        path: dotted key path of the offending entry (``"scheduler.warmup"``), or ``""`` for the root.
        value: the offending value (or ``None`` when the key is missing).
        expected: a short description of what would be valid.
        suggestions: close matches for misspelt names and keys.

    Example:
        >>> err = ConfigError("scheduler.name", "cosin", "one of: constant, warmup_cosine",
        ...                   suggestions=["warmup_cosine"])
        >>> print(err)
        scheduler.name: got 'cosin'; expected one of: constant, warmup_cosine. Did you mean 'warmup_cosine'?
    """

    def __init__(
        self,
        path: str,
        value: Any = _MISSING,
        expected: str = "",
        *,
        suggestions: Iterable[str] = (),
        hint: str = "",
    ) -> None:
        self.path = path
        self.value = None if value is _MISSING else value
        self.expected = expected
        self.suggestions = list(suggestions)
        self.hint = hint
        where = path or "<config>"
        parts = [f"{where}: "]
        if value is _MISSING:
            parts.append("missing")
        else:
            parts.append(f"got {format_value(value)}")
        if expected:
            parts.append(f"; expected {expected}")
        msg = "".join(parts) + "."
        if self.suggestions:
            msg += " Did you mean " + " or ".join(repr(s) for s in self.suggestions) + "?"
        if hint:
            msg += f" HINT: {hint}"
        super().__init__(msg)

    def __reduce__(self) -> tuple[Any, ...]:  # keep picklable across processes (tuning workers)
        return (_rebuild, (self.path, self.value, self.expected, self.suggestions, self.hint))


ConfigError.__module__ = "lightning_optkit.config"  # its public home, shown in tracebacks


def _rebuild(path: str, value: Any, expected: str, suggestions: list[str], hint: str) -> ConfigError:
    return ConfigError(path, value, expected, suggestions=suggestions, hint=hint)
