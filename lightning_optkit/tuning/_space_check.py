"""Validation of a search space: key paths against the optim schema, conditions and variants, probing
the edge values of each parameter on the base config, and explaining a failing probe."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._internal.errors import format_value
from ..config import (
    ConfigError,
    LossConfig,
    OptimBlock,
    OptimConfig,
    OptimizerConfig,
    ParamGroupRule,
    SchedulerConfig,
    did_you_mean,
)
from ._space_param import Param, _witness
from ._space_parse import TARGET_SECTIONS, Compare, _matches, _overlap, _same, get_path
from ._space_sample import conditions_hold

# Which pydantic model sits under a key of a closed block (unknown keys are errors there); the open
# blocks (optimizer, scheduler, loss, a param_groups rule) take any key, checked by load_config.
_CHILD: dict[tuple[type, str], tuple[type, bool]] = {
    (OptimConfig, "optimizer"): (OptimizerConfig, False),
    (OptimConfig, "scheduler"): (SchedulerConfig, False),
    (OptimConfig, "loss"): (LossConfig, False),
    (OptimConfig, "param_groups"): (ParamGroupRule, True),
    (OptimConfig, "optimizers"): (OptimBlock, True),
    (OptimBlock, "optimizer"): (OptimizerConfig, False),
    (OptimBlock, "scheduler"): (SchedulerConfig, False),
    (OptimBlock, "param_groups"): (ParamGroupRule, True),
}
_CLOSED = (OptimConfig, OptimBlock)


def check_conditions(params: Mapping[str, Param]) -> None:
    """Each ``when:`` key is a valid path and, when searched, can take the values the condition asks for."""
    check_variants(params)
    for name, p in params.items():
        for key, allowed in p.when:
            if key == name:
                raise ConfigError(f"search.{name}.when.{key}", list(allowed), "a condition on another key")
            _check_path(key, where=f"search.{name}.when.{key}")
            other = params.get(key)
            if other is None:
                continue
            if isinstance(allowed[0], Compare):
                if _witness(other, allowed[0]) is None:
                    raise ConfigError(f"search.{name}.when.{key}", allowed[0].to_spec(),
                                      f"a comparison that some value of {key} passes ({other.to_spec()})")
                continue
            if other.kind == "float" or (other.kind == "int" and not all(other.contains(v) for v in allowed)):
                raise ConfigError(f"search.{name}.when.{key}", list(allowed),
                                  f"a comparison such as {{'>=': 2}} on a range ({key} is a {other.kind} range), "
                                  "or values on a categorical or fixed parameter")
            for v in allowed:
                if not other.contains(v):
                    options = list(other.choices) if other.kind == "categorical" else [other.value]
                    raise ConfigError(f"search.{name}.when.{key}", v,
                                      f"one of the values of {key}: {', '.join(map(repr, options))}",
                                      suggestions=did_you_mean(v, [str(o) for o in options]))

def check_variants(params: Mapping[str, Param]) -> None:
    """Parameters that set the same config key must exclude each other through their conditions."""
    by_key: dict[str, list[Param]] = {}
    for p in params.values():
        by_key.setdefault(p.config_path, []).append(p)
    for key, group in by_key.items():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                wa, wb = dict(a.when), dict(b.when)
                if not any(not any(_overlap(x, y) for x in wa[k] for y in wb[k]) for k in wa.keys() & wb.keys()):
                    raise ConfigError(
                        f"search.{b.path}", b.to_spec(),
                        f"a condition that excludes {a.path} (both set {key}; one trial can take only one)",
                        hint=f"give both a `when:` on the same key with different values, e.g. "
                             f"{a.path}: {{..., when: {{optimizer.name: adamw}}}} and "
                             f"{b.path}: {{..., when: {{optimizer.name: sgd}}}}")



def probe(params: Mapping[str, Param], order: list[str], name: str, value: Any, base: Mapping[str, Any]
          ) -> dict[str, Any] | None:
    """A full assignment with ``name = value`` and its conditions forced true, or ``None`` if they cannot hold.

    The other active parameters take their first probe value; ``order`` is the space's topological order.
    """
    values: dict[str, Any] = {}

    def force(n: str, v: Any) -> bool:
        if n in values:
            return _same(values[n], v)
        values[n] = v
        for key, allowed in params[n].when:
            other = params.get(key)
            if other is None:
                if not any(_matches(get_path(base, key), a) for a in allowed):
                    return False
            elif key in values:
                if not any(_matches(values[key], a) for a in allowed):
                    return False
            elif not force(key, _witness(other, allowed[0]) if isinstance(allowed[0], Compare) else allowed[0]):
                return False
        return True

    if not force(name, value):
        return None
    for other in order:
        if other not in values and conditions_hold(params, other, values, base):
            values[other] = params[other].probe_values()[0]
    return {k: values[k] for k in order if k in values}


def _check_path(path: Any, where: str | None = None) -> None:
    """Reject paths that cannot be keys of the optim config (the rest is checked by load_config)."""
    label = where or f"search.{path}"
    if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
        raise ConfigError(label if isinstance(path, str) and path else "search", path,
                          "a dotted key path of the optim config, such as optimizer.lr")
    parts = path.split(".")
    if parts[0] in TARGET_SECTIONS:  # checked against the classes' signatures by tune() (see _targets.py)
        if len(parts) < 2 or parts[1].isdigit():
            raise ConfigError(label, path, f"{parts[0]}.<argument>, e.g. model.n_layers, data.batch_size, "
                              "trainer.gradient_clip_val")
        return
    model: type | None = OptimConfig
    i = 0
    while model is not None and i < len(parts):
        part = parts[i]
        if model in _CLOSED:
            fields = [f for f in model.model_fields if not (model is OptimBlock and f == "loss")]  # type: ignore[attr-defined]
            if part not in fields:
                prefix = ".".join(parts[:i])
                known = [f"{prefix}.{f}" if prefix else f for f in fields]
                sugg = [".".join([s, *parts[i + 1:]]) for s in did_you_mean(".".join(parts[: i + 1]), known)]
                raise ConfigError(label, path, "a key path of the optim config; valid keys "
                                  f"{'at the top' if not prefix else 'under ' + prefix}: {', '.join(fields)}",
                                  suggestions=sugg)
            child = _CHILD.get((model, part))
            if child is None:
                return  # a leaf of a closed block (layer_decay, no_weight_decay...)
            model, is_list = child
            i += 1
            if is_list:
                if i < len(parts) and not parts[i].isdigit():
                    raise ConfigError(label, path, f"an item index after {'.'.join(parts[:i])} "
                                      f"(e.g. {'.'.join([*parts[:i], '0', *parts[i:]])})")
                i += 1
        else:
            return  # an open block: any key, checked against the optimizer/schedule/loss by load_config


def _construct_optimizers(cfg: OptimConfig) -> None:
    """Construct each block's optimizer on a dummy parameter: catches what only the constructor checks."""
    import torch

    from ..optim import resolve_optimizer

    for prefix, block in cfg.blocks():
        info = resolve_optimizer(block.optimizer.name, f"{prefix}optimizer.name")
        kwargs = {**info.defaults, **block.optimizer.kwargs}
        try:
            info.cls([torch.nn.Parameter(torch.zeros(2))], lr=block.optimizer.lr, **kwargs)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"{prefix}optimizer", block.optimizer.model_dump(),
                              f"arguments {info.cls.__name__} accepts ({exc})") from None


def _fmt_assignment(assignment: Mapping[str, Any]) -> str:
    """``{key: value, ...}`` with long values shortened."""
    return "{" + ", ".join(f"{k}: {format_value(v, 40)}" for k, v in assignment.items()) + "}"


def _explain(name: str, value: Any, assignment: Mapping[str, Any], err: ConfigError, base: Mapping[str, Any],
             params: Mapping[str, Param]) -> ConfigError:
    """The error of a failing probe, re-aimed at ``search.<parameter>`` with a hint on what to change."""
    inner = f"{err.path or '<config>'}: " + ("" if err.value is None else f"got {format_value(err.value)}; ") + (
        f"expected {err.expected}")
    suggestions: list[str] = []
    label = name
    name = params[name].config_path
    owner = next((n for n in assignment if params[n].config_path == err.path), None)
    if err.path != name and owner is not None:  # another searched key is the one that does not fit
        label, name, value = owner, err.path, assignment[owner]
    shown = format_value(value, 40)
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    if err.path == name and parent and get_path(base, parent) is None:
        hint = (f"the base config has no `{parent}` block, so {name} lands in a default one; add the block to the "
                "base config, or drop the key from the search")
    elif err.path == name:
        suggestions = [f"{parent}.{s}" if parent else s for s in err.suggestions]
        hint = ("if the key only applies to some choices of another parameter, make it conditional "
                "(e.g. when: {optimizer.name: sgd}); otherwise change the range")
    elif err.path and name.startswith(err.path + ".") and get_path(base, err.path) is None:
        hint = f"the base config has no {err.path}: add it there, then search {name}"
    elif err.path and owner is None and get_path(base, err.path) is not None and not name.startswith(err.path + "."):
        hint = (f"the base config's {err.path} does not fit {name} = {shown}: drop it for that choice with "
                f"`{err.path}: {{value: null, when: {{{name}: {shown}}}}}`, or change the base config")
    else:
        hint = "these values do not work together: change a range, or make a parameter conditional with when: {...}"
    return ConfigError(
        f"search.{label}", value,
        f"a value that gives a valid config, but the trial {_fmt_assignment(assignment)} fails with {inner}",
        suggestions=suggestions, hint=hint,
    )
