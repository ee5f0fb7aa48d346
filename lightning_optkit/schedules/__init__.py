"""Schedules: pure functions of the optimizer step, their torch adapters and the builder.

See :mod:`lightning_optkit.schedules._functions` for the convention (warm-up inside the total,
decay ending at the last optimizer step) and how it relates to HuggingFace, timm and torch.
"""

from ._adapters import PlateauWarmupStepper, ScheduledLR, WarmupReduceLROnPlateau, follow_param_groups
from ._build import build_scheduler, resolved_settings
from ._functions import DECAYS, MomentumFn, ScheduleFn
from ._registry import SCHEDULES, ScheduleInfo, lookup, validate_scheduler
from ._simulate import PLATEAU_METRIC, LRTrace, simulate

__all__ = [
    "DECAYS",
    "PLATEAU_METRIC",
    "SCHEDULES",
    "LRTrace",
    "MomentumFn",
    "PlateauWarmupStepper",
    "ScheduleFn",
    "ScheduleInfo",
    "ScheduledLR",
    "WarmupReduceLROnPlateau",
    "build_scheduler",
    "follow_param_groups",
    "lookup",
    "resolved_settings",
    "simulate",
    "validate_scheduler",
]
