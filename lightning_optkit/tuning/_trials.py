"""Reading a finished study: its best trial and the complete optim block a trial trained with."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import load_config
from ._space import split_overrides

if TYPE_CHECKING:
    from ._runner import TrialPlan

__all__ = ["best_trial", "trial_config"]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial (multi-objective: the Pareto-optimal one best on the first metric)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    if len(study.directions) == 1:
        return study.best_trial
    front = study.best_trials
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return min(front, key=lambda t: sign * t.values[0])


def trial_config(trial: FrozenTrial, plan: TrialPlan) -> dict[str, Any]:
    """The complete optim block a trial trained with (stored with the trial, or rebuilt from its params)."""
    stored = trial.user_attrs.get("optkit.config")
    if isinstance(stored, dict):
        return stored
    overrides = plan.space.overrides_from_params(trial.params, plan.base)
    optim_overrides = plan.space.scale_lr(split_overrides(overrides)[0], overrides, plan.base)
    return load_config(plan.base, optim_overrides).to_dict()
