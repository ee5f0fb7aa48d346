"""Quiet plotting: matplotlib's font fallbacks are noise in a user's terminal."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["quiet_font_fallbacks"]


@contextlib.contextmanager
def quiet_font_fallbacks() -> Iterator[None]:
    """Silence matplotlib's ``findfont: Font family [...] not found`` lines while drawing.

    Mathtext and Optuna's plots ask for STIX/Computer Modern fonts that a minimal install lacks;
    matplotlib falls back to DejaVu Sans (the figure is fine) and logs one warning per glyph family.

    Example:
        >>> import logging
        >>> with quiet_font_fallbacks():
        ...     logging.getLogger("matplotlib.font_manager").level
        40
    """
    fonts = logging.getLogger("matplotlib.font_manager")
    level = fonts.level
    fonts.setLevel(logging.ERROR)
    try:
        yield
    finally:
        fonts.setLevel(level)
