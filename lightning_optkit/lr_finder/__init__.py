"""The LR range test: one engine behind :func:`find_lr` and the ``LRFinder`` callback.

* :func:`find_lr` -- run a test on a model and its data, get an :class:`LRFinderResult`.
* :class:`LRFinder` (also ``lightning_optkit.callbacks.LRFinder``) -- run it inside ``Trainer.fit``: at the start, and
  at chosen epochs (after unfreezing a backbone), writing the suggestion into the optim config.
* :data:`RULES` -- the suggestion rules; :data:`DEFAULT_RULE` was chosen by
  ``benchmarks/lr_finder_quality.py``.

The test restores the model, optimizer and scheduler state, random generators, trainer counters,
callbacks and loggers exactly (:mod:`._state`); with a schedule that has a peak (warm-up/cosine,
OneCycle) the recommendation is the peak whose mean LR equals the constant-LR suggestion
(:mod:`._apply`), never above the safety margin below the LR where the loss starts to rise.

Example:
    >>> from lightning_optkit.lr_finder import RULES, DEFAULT_RULE
    >>> DEFAULT_RULE in RULES
    True
"""

from ._api import find_lr
from ._apply import LRPlan, ScheduleProfile, apply_result, lr_plan, schedule_profile, write_config
from ._callback import LRFinder
from ._engine import run_range_test
from ._result import LRFinderResult
from ._rules import DEFAULT_RULE, RULES, Curve, SuggestionRule, smooth, suggest_all
from ._settings import RangeTestSettings, sweep_lrs
from ._state import TrainingSnapshot

__all__ = [
    "DEFAULT_RULE",
    "RULES",
    "Curve",
    "LRFinder",
    "LRFinderResult",
    "LRPlan",
    "RangeTestSettings",
    "ScheduleProfile",
    "SuggestionRule",
    "TrainingSnapshot",
    "apply_result",
    "find_lr",
    "lr_plan",
    "run_range_test",
    "schedule_profile",
    "smooth",
    "suggest_all",
    "sweep_lrs",
    "write_config",
]
