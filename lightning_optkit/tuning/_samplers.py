"""Samplers and pruners by name: what ``tune(sampler=..., pruner=...)`` and ``--sampler``/``--pruner`` accept.

An unknown name is a :class:`~lightning_optkit.ConfigError` naming the argument, the value and
what is valid (with a did-you-mean), raised before the first trial.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from ..config import ConfigError, did_you_mean
from ._hyperband import AutoHyperbandPruner

__all__ = ["PRUNERS", "SAMPLERS", "make_pruner", "make_sampler", "startup_trials"]

SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc")
PRUNERS = ("hyperband", "median", "successive_halving", "none")
_SAMPLER_ALIASES = {"cma": "cmaes", "cma-es": "cmaes", "cma_es": "cmaes", "gaussian_process": "gp", "rand": "random"}
_PRUNER_ALIASES = {"sha": "successive_halving", "asha": "successive_halving", "nop": "none", "off": "none",
                   "false": "none", "no": "none"}


def startup_trials(n_trials: int | None) -> int:
    """Random trials before TPE models the results: a quarter of the budget, between 4 and Optuna's 10.

    Optuna's fixed 10 spends half of a 20-trial study on random search.

    Example:
        >>> [startup_trials(n) for n in (None, 8, 20, 30, 100)]
        [10, 4, 5, 7, 10]
    """
    return 10 if n_trials is None else min(10, max(4, n_trials // 4))


def make_sampler(sampler: str | BaseSampler | None = "tpe", *, seed: int | None = 0, conditional: bool = False,
                 multi_objective: bool = False, n_trials: int | None = None) -> BaseSampler:
    """A sampler by name: ``tpe`` (default, seeded), ``random``, ``cmaes``, ``gp`` or ``qmc``; or the given one.

    TPE is multivariate, and with conditional parameters it groups them (``group=True``), so a
    parameter that exists only for SGD is modelled only on SGD trials. With a trial budget
    (``n_trials``) it samples at random only for the first :func:`startup_trials` of them.

    Example:
        >>> type(make_sampler("random", seed=1)).__name__
        'RandomSampler'
    """
    if isinstance(sampler, BaseSampler):
        return sampler
    name = "tpe" if sampler is None else str(sampler).strip().lower()
    name = _SAMPLER_ALIASES.get(name, name)
    if name not in SAMPLERS:
        raise ConfigError("sampler", sampler, "one of " + ", ".join(SAMPLERS) + ", or an optuna.samplers.BaseSampler",
                          suggestions=did_you_mean(str(sampler), SAMPLERS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=conditional,
                                              n_startup_trials=startup_trials(n_trials))
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "qmc":
            return optuna.samplers.QMCSampler(seed=seed)
        if name == "cmaes":
            if multi_objective:
                raise ConfigError("sampler", sampler, "a sampler for multi-objective studies: tpe, random, gp or qmc")
            if importlib.util.find_spec("cmaes") is None:
                raise ConfigError("sampler", sampler, "an installed sampler: CMA-ES needs the `cmaes` package",
                                  hint="pip install cmaes, or use sampler='tpe'")
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        if importlib.util.find_spec("scipy") is None:
            raise ConfigError("sampler", sampler, "an installed sampler: the GP sampler needs scipy",
                              hint="pip install scipy, or use sampler='tpe'")
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)


def make_pruner(pruner: str | BasePruner | None = "hyperband", **kwargs: Any) -> BasePruner:
    """A pruner by name: ``hyperband`` (default, see :class:`AutoHyperbandPruner`), ``median``,
    ``successive_halving`` or ``none``; or the given one. ``kwargs`` go to the pruner's constructor.

    Example:
        >>> type(make_pruner("median", n_startup_trials=3)).__name__
        'MedianPruner'
    """
    if isinstance(pruner, BasePruner):
        return pruner
    name = "none" if pruner is None or pruner is False else str(pruner).strip().lower()
    name = _PRUNER_ALIASES.get(name, name)
    if name not in PRUNERS:
        raise ConfigError("pruner", pruner, "one of " + ", ".join(PRUNERS) + ", or an optuna.pruners.BasePruner",
                          suggestions=did_you_mean(str(pruner), PRUNERS))
    try:
        if name == "hyperband":
            return AutoHyperbandPruner(**kwargs)
        if name == "median":
            return optuna.pruners.MedianPruner(**kwargs)
        if name == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(**kwargs)
        if kwargs:
            raise TypeError(f"pruner 'none' takes no arguments, got {sorted(kwargs)}")
        return optuna.pruners.NopPruner()
    except TypeError as exc:
        raise ConfigError("pruner", pruner, f"valid arguments for the {name} pruner ({exc})") from None
