"""The staged recipe: the learning rate first (an LR range test per optimizer), then the rest inside it.

Systematic tuning fixes the learning rate before anything else: it matters most, and the right
value differs by optimizer by orders of magnitude (SGD ~1, AdamW ~1e-3), so one shared LR range
wastes most trials on hopeless pairs. :func:`tune_staged` runs, for each candidate optimizer (the
choices of ``optimizer.name`` in the search space, or the base config's optimizer), the project's
LR range test (:func:`~lightning_optkit.find_lr`) on the base config, narrows ``optimizer.lr`` to
``recommended / factor .. recommended * factor``, and then tunes the other parameters (weight
decay, schedule, momentum...) with TPE and Hyperband inside that range: one study per optimizer
(``<name>-<optimizer>``), the trial budget split evenly. It returns the study with the best trial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import optuna

from ..config import ConfigError, load_config
from ._runner import quiet_lightning
from ._space import SearchSpace

__all__ = ["RECIPES", "lr_range_for", "tune_staged"]

RECIPES = ("staged",)


def lr_range_for(source: Any, optim: dict[str, Any], trainer_kwargs: Mapping[str, Any], seed: int,
                 factor: float = 4.0) -> tuple[float, float, float] | None:
    """``(recommended, low, high)`` from an LR range test of ``optim`` on ``source``; ``None`` without a suggestion."""
    import lightning as L

    from ..lr_finder import find_lr

    kwargs = {k: v for k, v in trainer_kwargs.items() if k not in ("callbacks", "logger", "strategy")}
    kwargs["devices"] = 1
    L.seed_everything(seed, workers=True, verbose=False)
    module, data = source.build(optim)
    result = find_lr(module, datamodule=data, trainer_kwargs=kwargs)
    lr = result.recommended_lr
    if lr is None or not math.isfinite(lr) or lr <= 0:
        return None
    return lr, lr / factor, lr * factor


def _candidate_config(base: dict[str, Any], name: str) -> dict[str, Any]:
    try:
        return load_config(base, {"optimizer.name": name}).to_dict()
    except ConfigError:  # the base's optimizer arguments do not fit this one (betas for SGD): keep only the LR
        optimizer = {"name": name, "lr": base.get("optimizer", {}).get("lr", 1e-3)}
        return load_config({**base, "optimizer": optimizer}).to_dict()


def tune_staged(args: dict[str, Any]) -> optuna.Study:
    """Run the staged recipe with :func:`~lightning_optkit.tuning.tune`'s arguments ``args`` (see the module)."""
    from ._sources import ExampleSource, as_source
    from ._space import load_search
    from ._tune import DEFAULT_TRIALS, EXAMPLE_DEFAULTS, _monitors_and_directions, tune

    args = dict(args)
    args["recipe"] = None
    source = as_source(args["model"], example=args["example"], model_args=args["model_args"],
                       data_args=args["data_args"])
    defaults = EXAMPLE_DEFAULTS.get(source.name, {}) if isinstance(source, ExampleSource) else {}
    search = args["search"]
    if search is None and isinstance(source, ExampleSource):
        search = source.name
    if search is None:
        raise ConfigError("search", None, "a search space with optimizer.lr for recipe='staged'")
    space, search_base = load_search(search)
    lr_param = space.params.get("optimizer.lr")
    if lr_param is None or lr_param.kind != "float":
        raise ConfigError("search.optimizer.lr", None if lr_param is None else lr_param.to_spec(),
                          "a float range for optimizer.lr: the staged recipe narrows it with an LR range test")
    config = args["config"] if args["config"] is not None else (source.base_config() or search_base)
    base = load_config(config, args["overrides"]).to_dict()
    name_param = space.params.get("optimizer.name")
    if name_param is not None and name_param.kind == "categorical":
        candidates = [str(c) for c in name_param.choices]
    else:
        candidates = [str(base["optimizer"]["name"])]
    trainer_kwargs = {**source.trainer_defaults(), **dict(args["trainer_kwargs"] or {})}
    seed = args["seed"] if args["seed"] is not None else (source.seed() if source.seed() is not None else 0)
    n_trials = args["n_trials"]
    if n_trials is None and args["timeout"] is None:
        n_trials = int(defaults.get("n_trials", DEFAULT_TRIALS))
    per = None if n_trials is None else max(1, math.ceil(n_trials / len(candidates)))
    timeout = None if args["timeout"] is None else args["timeout"] / len(candidates)
    _, directions = _monitors_and_directions(args["monitor"] if args["monitor"] is not None
                                             else defaults.get("monitor", "val_loss"),
                                             args["direction"] if args["direction"] is not None
                                             or args["monitor"] is not None else defaults.get("direction"))
    best: tuple[float, optuna.Study] | None = None
    stem = args["study_name"] or source.name
    for cand in candidates:
        optim = _candidate_config(base, cand)
        with quiet_lightning(args["verbose"]):
            found = lr_range_for(source, optim, trainer_kwargs, seed)
        spec = {k: v for k, v in space.to_dict().items()  # drop what exists only for the other optimizers
                if not any(key == "optimizer.name" and cand not in [str(a) for a in allowed]
                           for key, allowed in space.params[k].when)}
        spec["optimizer.name"] = {"value": cand}
        lr_spec = dict(spec["optimizer.lr"])
        if found is not None:
            lr, low, high = found
            if lr_param.low is not None and lr_param.high is not None and low < lr_param.high and high > lr_param.low:
                low, high = max(low, lr_param.low), min(high, lr_param.high)  # inside the user's own range
                found = (min(max(lr, low), high), low, high)
                lr = found[0]
            lr_spec.update(low=low, high=high, log=True)
            lr_spec.pop("step", None)
            optim["optimizer"]["lr"] = lr
            note = f"LR range test: {lr:.3g} -> optimizer.lr in [{low:.3g}, {high:.3g}]"
        else:
            note = "LR range test: no suggestion; the original optimizer.lr range is kept"
        spec["optimizer.lr"] = lr_spec
        if args["progress"] is not False:
            print(f"optkit tune (staged): {cand}: {note}", flush=True)
        sub = SearchSpace.from_dict(spec)
        kwargs = {**args, "search": sub, "config": optim, "overrides": None, "n_trials": per, "timeout": timeout,
                  "study_name": f"{stem}-{cand}"}
        if args["example"] is not None:
            kwargs["model"], kwargs["example"], kwargs["model_args"], kwargs["data_args"] = source, None, None, None
        study = tune(**kwargs)
        study.set_user_attr("optkit.staged", {"optimizer": cand, "lr_range": None if found is None
                                              else [found[1], found[2]], "recommended_lr": None if found is None
                                              else found[0]})
        done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
        if done and len(directions) == 1:
            value = study.best_value if directions[0] == "minimize" else -study.best_value
            if best is None or value < best[0]:
                best = (value, study)
        elif best is None and done:
            best = (0.0, study)
        last = study
    return best[1] if best is not None else last
