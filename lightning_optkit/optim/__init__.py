"""Optimizers: the registry of optimizer records and the parameter-group rules."""

from ._groups import GroupPlan, build_param_groups, format_groups, layer_ids, matches, no_decay_names
from ._registry import OptimInfo, check_kwargs, optimizer_names, registry, resolve_optimizer, validate_optimizers

__all__ = [
    "GroupPlan",
    "OptimInfo",
    "build_param_groups",
    "check_kwargs",
    "format_groups",
    "layer_ids",
    "matches",
    "no_decay_names",
    "optimizer_names",
    "registry",
    "resolve_optimizer",
    "validate_optimizers",
]
