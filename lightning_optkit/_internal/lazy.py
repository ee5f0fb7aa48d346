"""Public names imported on first use (PEP 562), for packages whose names pull in heavy modules.

Example:
    >>> import types
    >>> ns = {"__name__": "json"}
    >>> getattr_, dir_ = lazy_exports("json", {"dumps": "json"}, ns)
    >>> getattr_("dumps")([1]), "dumps" in dir_(), "dumps" in ns
    ('[1]', True, True)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, modules: Mapping[str, str],
                 namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: name -> module (relative to ``package`` or absolute).

    A name is imported when first read and then cached in ``namespace`` (the package's globals); an
    unknown name is an ``AttributeError`` that lists what is available.
    """
    available = sorted(modules)

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}; available: {', '.join(available)}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(available))

    return __getattr__, __dir__
