"""Configuration: schema, durations, YAML loading, dotted overrides and ConfigError.

This layer imports no torch models; the optimizer, schedule and loss packages register their own
checks with :func:`register_validator` so a misspelt name fails at load time.
"""

from .._internal.errors import ConfigError, did_you_mean
from ._durations import Duration, TrainingLength, parse_duration
from ._loading import apply_overrides, load_config, merge_nested, parse_override, parse_overrides, read_yaml
from ._schema import (
    LossConfig,
    OptimBlock,
    OptimConfig,
    OptimizerConfig,
    ParamGroupRule,
    SchedulerConfig,
    register_validator,
    validate,
)

__all__ = [
    "ConfigError",
    "Duration",
    "LossConfig",
    "OptimBlock",
    "OptimConfig",
    "OptimizerConfig",
    "ParamGroupRule",
    "SchedulerConfig",
    "TrainingLength",
    "apply_overrides",
    "did_you_mean",
    "load_config",
    "merge_nested",
    "parse_duration",
    "parse_override",
    "parse_overrides",
    "read_yaml",
    "register_validator",
    "validate",
]
