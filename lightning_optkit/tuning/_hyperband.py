"""Hyperband counted in optimizer steps, its smallest budget read from the study: :class:`AutoHyperbandPruner`."""

from __future__ import annotations

import optuna
from optuna.pruners import BasePruner, HyperbandPruner

from ..config import ConfigError

__all__ = ["AutoHyperbandPruner"]


class AutoHyperbandPruner(BasePruner):
    """Hyperband whose smallest budget is the optimizer steps between two validations.

    Optuna's :class:`~optuna.pruners.HyperbandPruner` counts its budget in reported steps, and
    :class:`~lightning_optkit.tuning.PruningCallback` reports at optimizer steps, so
    ``min_resource=1`` would mean "one optimizer step" and make a bracket per power of the
    reduction factor. With ``min_resource="auto"`` (the default) it is the first step reported in the
    study (the first validation of the first trial that reported), read from the storage, so a
    resumed study gets the same value. ``max_resource="auto"`` is Optuna's: the last step of the
    first completed trial; nothing is pruned before that trial completes.

    Args:
        min_resource: optimizer steps of the smallest budget, or ``"auto"``.
        max_resource: optimizer steps of a full trial, or ``"auto"``.
        reduction_factor: keep the best ``1 / reduction_factor`` of the trials at each rung.

    Example:
        >>> pruner = AutoHyperbandPruner(reduction_factor=3)
        >>> pruner.min_resource is None  # decided at the first report
        True
    """

    def __init__(self, min_resource: int | str = "auto", max_resource: int | str = "auto",
                 reduction_factor: int = 3, bootstrap_count: int = 0) -> None:
        if min_resource != "auto" and not (isinstance(min_resource, int) and min_resource >= 1):
            raise ConfigError("pruner.min_resource", min_resource, "a positive number of optimizer steps, or 'auto'")
        if max_resource != "auto" and not (isinstance(max_resource, int) and max_resource >= 1):
            raise ConfigError("pruner.max_resource", max_resource, "a positive number of optimizer steps, or 'auto'")
        if not (isinstance(reduction_factor, int) and reduction_factor >= 2):
            raise ConfigError("pruner.reduction_factor", reduction_factor, "an integer >= 2")
        self._max_resource = max_resource
        self._reduction_factor = reduction_factor
        self._bootstrap_count = bootstrap_count
        self.min_resource: int | None = None
        self._inner: HyperbandPruner | None = None
        if isinstance(min_resource, int):
            self._build(min_resource)

    def _build(self, min_resource: int) -> None:
        self.min_resource = min_resource
        self._inner = HyperbandPruner(min_resource=min_resource, max_resource=self._max_resource,
                                      reduction_factor=self._reduction_factor, bootstrap_count=self._bootstrap_count)

    def prune(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if self._inner is None:
            first = None
            for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
                if t.intermediate_values:
                    first = min(t.intermediate_values)
                    break
            if first is None:
                return False
            self._build(max(int(first), 1))
        assert self._inner is not None
        return self._inner.prune(study, trial)
