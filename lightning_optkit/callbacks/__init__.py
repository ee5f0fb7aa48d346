"""Trainer callbacks, usable with or without OptimMixin.

One module per callback; the names are imported on first use so that a callback's module (and
what it needs) loads only when it is asked for. ``LRFinder`` lives with the range test in
:mod:`lightning_optkit.lr_finder` (a layer above the callbacks) and is re-exported here. The
``TrainingDoctor``'s result type ``Diagnosis``, its ``CODES`` and ``DEFAULT_THRESHOLDS`` are public too.
"""

from __future__ import annotations

from .._internal.lazy import lazy_exports

_MODULES = {
    "GradNormMonitor": "._grad_norm",
    "NonFiniteGuard": "._nonfinite",
    "NonFiniteError": "._nonfinite",
    "AutoClip": "._autoclip",
    "TrainingDoctor": "._doctor",
    "Diagnosis": "._doctor_codes",  # the doctor's findings, its codes and rule thresholds
    "CODES": "._doctor_codes",
    "DEFAULT_THRESHOLDS": "._doctor_codes",
    "LRFinder": "lightning_optkit.lr_finder._callback",  # lives with the finder (a layer above), re-exported
    "EarlyStopping": "._early_stopping",
    "Checkpoint": "._checkpoint",
}

__all__ = sorted(_MODULES)


__getattr__, __dir__ = lazy_exports(__name__, _MODULES, globals())
