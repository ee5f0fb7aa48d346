"""Short human forms of numbers for messages, tables and reports.

Example:
    >>> fmt(0.000123), fmt(3.5), fmt(float("inf"))
    ('1.230e-04', '3.5', 'inf')
"""

from __future__ import annotations

import math

__all__ = ["fmt"]


def fmt(value: float) -> str:
    """A short human form of a float: 4 significant digits in [1e-3, 1e4), scientific outside."""
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:.3e}"
