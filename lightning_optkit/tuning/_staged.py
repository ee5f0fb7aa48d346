"""The staged recipe: the learning rate first (an LR range test per optimizer), then the rest inside it.

Systematic tuning fixes the learning rate before anything else: it matters most, and the right
value differs by optimizer by orders of magnitude (SGD ~1, AdamW ~1e-3), so one shared LR range
wastes most trials on hopeless pairs. :func:`staged` turns a request into one that runs, for each candidate optimizer (the
choices of ``optimizer.name`` in the search space, or the base config's optimizer), the project's
LR range test (:func:`~lightning_optkit.find_lr`) on the base config with that optimizer, narrows
its learning rate to ``recommended / factor .. recommended * factor``, and then tunes everything
(optimizer, weight decay, schedule, momentum...) with TPE and Hyperband in **one** study, where
each optimizer samples its own LR range (the search keys ``optimizer.lr@<optimizer>``). The first
trials are the base config with each optimizer at its recommended LR. One study lets TPE weigh the
optimizers against each other and gives Hyperband every trial to compare. The ranges, the
recommendations and the range tests' steps are in the study's ``optkit.staged`` user attribute.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

from ..config import ConfigError, load_config
from ._request import TuneRequest
from ._runner import quiet_lightning
from ._space import Param, SearchSpace

__all__ = ["RECIPES", "lr_range_for", "recipe_for", "staged"]


def lr_range_for(source: Any, optim: dict[str, Any], trainer_kwargs: Mapping[str, Any], seed: int,
                 factor: float = 4.0) -> tuple[float, float, float, int] | None:
    """``(recommended, low, high, steps)`` from an LR range test of ``optim`` on ``source`` (``steps``: the
    optimizer steps it trained); ``None`` without a suggestion."""
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
    return lr, lr / factor, lr * factor, len(result.lrs)


def _candidate_config(base: dict[str, Any], name: str, searched: list[Param]) -> dict[str, Any]:
    """The base config with optimizer ``name``; searched optimizer keys it lacks get the class's defaults
    (moved to the nearest end of their range when outside it).

    The LR range test runs on this config and the candidate's first trial trains it, so both see
    the same momentum (say) instead of the trial drawing one the range test never saw.
    """
    import inspect

    from ..optim import resolve_optimizer

    try:
        optim = load_config(base, {"optimizer.name": name}).to_dict()
    except ConfigError:  # the base's optimizer arguments do not fit this one (betas for SGD): keep only the LR
        optimizer = {"name": name, "lr": base.get("optimizer", {}).get("lr", 1e-3)}
        optim = load_config({**base, "optimizer": optimizer}).to_dict()
    plain = copy.deepcopy(optim)
    try:
        signature = inspect.signature(resolve_optimizer(name).cls).parameters
    except (ConfigError, TypeError, ValueError):
        return optim
    for param in searched:
        parts = param.config_path.split(".")
        if len(parts) == 2 and parts[0] == "optimizer" and parts[1] not in optim["optimizer"]:
            default = getattr(signature.get(parts[1]), "default", inspect.Parameter.empty)
            if not isinstance(default, (bool, int, float, str)):
                continue
            if param.kind in ("float", "int") and isinstance(default, (int, float)) and not param.contains(default):
                default = min(max(default, param.low), param.high)  # type: ignore[type-var]
            optim["optimizer"][parts[1]] = default
    try:
        return load_config(optim).to_dict()
    except ConfigError:  # the defaults do not fit together: leave them to the sampler
        return plain


def staged(request: TuneRequest) -> TuneRequest:
    """The staged recipe (see the module): ``request`` with each candidate optimizer's LR range narrowed by an
    LR range test, the candidates first in the queue, and the ranges kept for the study's ``optkit.staged``."""
    space, base = request.space, request.base
    lr_param = space.params.get("optimizer.lr")
    if lr_param is None or lr_param.kind != "float":
        raise ConfigError("search.optimizer.lr", None if lr_param is None else lr_param.to_spec(),
                          "a float range for optimizer.lr: the staged recipe narrows it with an LR range test")
    name_param = space.params.get("optimizer.name")
    if name_param is not None and name_param.kind == "categorical":
        candidates = [str(c) for c in name_param.choices]
    else:
        candidates = [str(base["optimizer"]["name"])]
    spec = space.to_dict()
    lr_spec = spec.pop("optimizer.lr")
    lr_when = dict(lr_spec.pop("when", None) or {})
    staged_attr: dict[str, Any] = {}
    firsts: list[dict[str, Any]] = []
    for cand in candidates:
        active = [p for k, p in space.params.items() if space.is_active(k, {"optimizer.name": cand}, base)]
        optim = _candidate_config(base, cand, active)
        with quiet_lightning(request.verbose):
            found = lr_range_for(request.source, optim, request.trainer_kwargs, request.seed)
        narrowed, record, note = _narrow(lr_param, lr_spec, found)
        if found is not None:
            optim["optimizer"]["lr"] = record["recommended_lr"]
        staged_attr[cand] = record
        key = "optimizer.lr" if len(candidates) == 1 else f"optimizer.lr@{cand}"
        when = {**lr_when, **({} if len(candidates) == 1 else {"optimizer.name": cand})}
        spec[key] = {**narrowed, **({"when": when} if when else {})}
        firsts.append(optim)
        if request.progress is not False:
            print(f"optkit tune (staged): {cand}: {note}", flush=True)
    return request.with_space(SearchSpace.from_dict(spec), [*firsts, *request.first_configs], enqueue_base=False,
                              study_attrs={**request.study_attrs, "optkit.staged": staged_attr})


def _narrow(lr_param: Param, lr_spec: dict[str, Any], found: tuple[float, float, float, int] | None
            ) -> tuple[dict[str, Any], dict[str, Any], str]:
    """One candidate's ``optimizer.lr`` spec, its ``optkit.staged`` record and the line that reports it."""
    if found is None:
        return (dict(lr_spec), {"recommended_lr": None, "lr_range": None, "range_test_steps": None},
                "LR range test: no suggestion; the original optimizer.lr range is kept")
    lr, low, high, steps = found
    narrowed = {k: v for k, v in lr_spec.items() if k != "step"}
    if lr_param.low < high and lr_param.high > low:
        low, high = max(low, lr_param.low), min(high, lr_param.high)  # inside the user's own range
        lr = min(max(lr, low), high)
        narrowed.update(low=low, high=high, log=True)
        note = f"LR range test ({steps} steps): {lr:.3g} -> optimizer.lr in [{low:.3g}, {high:.3g}]"
    else:  # the recommendation lies outside the user's range: the range stands, the start at its edge
        shown = lr
        low, high = lr_param.low, lr_param.high
        lr = min(max(lr, low), high)
        narrowed = dict(lr_spec)
        note = (f"LR range test ({steps} steps): {shown:.3g} lies outside your optimizer.lr range "
                f"[{low:.3g}, {high:.3g}]; the range is kept, the first trial starts at {lr:.3g}")
    return narrowed, {"recommended_lr": lr, "lr_range": [low, high], "range_test_steps": steps}, note


RECIPES: dict[str, Callable[[TuneRequest], TuneRequest]] = {"staged": staged}


def recipe_for(name: str | None) -> Callable[[TuneRequest], TuneRequest] | None:
    """The recipe ``tune(recipe=name)`` applies to its request (``None``: none).

    Example:
        >>> recipe_for("staged") is staged, recipe_for(None)
        (True, None)
    """
    if name is None:
        return None
    if name not in RECIPES:
        raise ConfigError("recipe", name, "one of " + ", ".join(RECIPES) + ", or None")
    return RECIPES[name]
