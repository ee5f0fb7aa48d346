"""Parameter-group rules: which parameter goes into which optimizer group, with what settings.

Precedence, in order:

1. ``optimizers[i].params`` (several optimizers only) picks the parameters a block owns.
2. ``param_groups`` rules are tried in order; the **first** rule whose glob(s) match a parameter's
   name (from ``named_parameters()``) decides its group. Unmatched parameters form the default group.
3. ``frozen: true`` turns ``requires_grad`` off and leaves the parameter out of the optimizer.
   Parameters that already have ``requires_grad=False`` are left out too.
4. ``no_weight_decay`` splits each group into a decayed and an undecayed part (weight decay 0).
5. ``layer_decay`` multiplies each parameter's LR by ``rate ** (num_layers + 1 - layer_id)``; it is
   folded into the group's ``lr``, so every schedule scales it (timm keeps a separate ``lr_scale``
   that only its own schedulers read).

Globs use :func:`fnmatch.fnmatchcase` (``*`` also crosses dots); ``"re:<regex>"`` uses
:func:`re.search`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..config import ConfigError, OptimBlock, ParamGroupRule, did_you_mean
from ._registry import OptimInfo

__all__ = ["GroupPlan", "build_param_groups", "format_groups", "layer_ids", "matches", "no_decay_names"]

_NORM_TYPES: tuple[type, ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
    *( (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def _patterns(globs: str | Sequence[str]) -> list[str]:
    return [globs] if isinstance(globs, str) else list(globs)


def matches(name: str, globs: str | Sequence[str]) -> bool:
    """True when ``name`` matches any glob (or ``re:`` regex) in ``globs``.

    Example:
        >>> matches("backbone.0.weight", "backbone.*"), matches("head.bias", ["re:^head\\\\."])
        (True, True)
    """
    for pat in _patterns(globs):
        if pat.startswith("re:"):
            if re.search(pat[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, pat):
            return True
    return False


def _check_regexes(globs: str | Sequence[str], path: str) -> None:
    for pat in _patterns(globs):
        if pat.startswith("re:"):
            try:
                re.compile(pat[3:])
            except re.error as exc:
                raise ConfigError(path, pat, f"a valid regular expression after 're:' ({exc})") from None


def _similar(pattern: str, names: Iterable[str]) -> list[str]:
    names = list(names)
    prefixes = sorted({".".join(n.split(".")[:k]) for n in names for k in range(1, n.count(".") + 1)})
    literal = pattern[3:] if pattern.startswith("re:") else pattern
    literal = re.sub(r"[\\^$*?\[\]()+{}|]", "", literal).strip(".")
    return [*did_you_mean(literal, prefixes, n=3), *did_you_mean(literal, names, n=2)][:3]


def no_decay_names(module: nn.Module, setting: str | Sequence[str]) -> set[str]:
    """Parameter names that get no weight decay.

    ``"auto"``: biases, every parameter with ``ndim <= 1``, parameters of normalization layers (by
    type, and by class name containing ``Norm`` so custom RMSNorm-like layers count), and names
    returned by a ``no_weight_decay()`` method of the module (timm's convention). A list: globs.
    ``"none"``: nothing.

    Example:
        >>> sorted(no_decay_names(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)), "auto"))
        ['0.bias', '1.bias', '1.weight']
    """
    if setting == "none":
        return set()
    if setting != "auto":
        return {n for n, _p in module.named_parameters() if matches(n, list(setting))}
    out: set[str] = set()
    for mod_name, mod in module.named_modules():
        is_norm = isinstance(mod, _NORM_TYPES) or "norm" in type(mod).__name__.lower()
        for p_name, p in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if is_norm or p.ndim <= 1 or p_name == "bias" or p_name.endswith("_bias"):
                out.add(full)
    names = [n for n, _p in module.named_parameters()]
    for mod_name, mod in module.named_modules():
        # timm's convention, on the model itself or on any submodule (a timm backbone in a LightningModule)
        hook = getattr(mod, "no_weight_decay", None)
        if not callable(hook):
            continue
        pre = f"{mod_name}." if mod_name else ""
        for item in hook() or ():
            full = f"{pre}{item}"
            out.update(n for n in names if n == full or n.startswith(f"{full}.") or matches(n, full))
    return out


def layer_ids(module: nn.Module, names: Sequence[str]) -> tuple[dict[str, int], int]:
    """Layer index of each parameter for layer-wise LR decay, and the number of layers.

    The layers are the children of the largest ``ModuleList``/``Sequential`` (the stack of blocks).
    Parameters registered before it (embeddings, stem) are layer 0, those of child ``i`` layer
    ``i + 1``, and those after it (final norm, head) layer ``num_layers + 1``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
        >>> layer_ids(net, [n for n, _ in net.named_parameters()])[0]["2.weight"]
        3
    """
    best_name, best_children = None, []
    for mod_name, mod in module.named_modules():
        if isinstance(mod, (nn.ModuleList, nn.Sequential)):
            kids = [k for k, c in mod.named_children() if any(True for _ in c.parameters())]
            if len(kids) > len(best_children):
                best_name, best_children = mod_name, kids
    if best_name is None or len(best_children) < 2:
        raise ConfigError("layer_decay", None, "a model with a stack of layers (an nn.ModuleList or nn.Sequential)",
                          hint="layer-wise decay needs to know the layers; set layer_decay: null")
    prefix = f"{best_name}." if best_name else ""
    index = {kid: i + 1 for i, kid in enumerate(best_children)}
    num = len(best_children)
    ids: dict[str, int] = {}
    seen_stack = False
    for n in names:
        if n.startswith(prefix):
            kid = n[len(prefix):].split(".", 1)[0]
            if kid in index:
                ids[n] = index[kid]
                seen_stack = True
                continue
        ids[n] = num + 1 if seen_stack else 0
    return ids, num


@dataclass
class GroupPlan:
    """One optimizer parameter group before the optimizer exists (names kept for the summary)."""

    name: str
    names: list[str] = field(default_factory=list)
    params: list[nn.Parameter] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def as_torch_group(self) -> dict[str, Any]:
        return {"params": self.params, "name": self.name, **self.options}


def _rule_label(rule_name: str | None, globs: str | Sequence[str], index: int) -> str:
    if rule_name:
        return rule_name
    first = _patterns(globs)[0]
    if first.startswith("re:"):
        return f"group{index}"
    label = first.split("*")[0].split("?")[0].split("[")[0].strip(".")
    return label or f"group{index}"


def build_param_groups(
    module: nn.Module, block: OptimBlock, info: OptimInfo, prefix: str = "", taken: set[str] | None = None
) -> list[GroupPlan]:
    """Apply ``block``'s rules to ``module.named_parameters()``; see the module docstring for precedence.

    ``taken`` collects names already owned by an earlier block (several optimizers) and is updated.
    """
    taken = set() if taken is None else taken
    named = _owned_params(module, block, prefix, taken)
    rules = block.param_groups
    assigned = _assign_rules(module, named, rules, prefix)
    for n, p in named:
        idx = assigned[n]
        if idx is not None and rules[idx].frozen:
            p.requires_grad_(False)
    trainable = [(n, p) for n, p in named if p.requires_grad]
    taken.update(n for n, _p in named)
    if not trainable:
        raise ConfigError(f"{prefix}param_groups", None, "at least one trainable parameter left for the optimizer",
                          hint="every parameter is frozen or already owned by another optimizer")

    if info.sparse_only:
        _check_sparse(module, trainable, info, block.optimizer.name, prefix)
    opt_kwargs = {**info.defaults, **block.optimizer.kwargs}
    _check_options(info, block, opt_kwargs, prefix, trainable[0][1])
    base_wd = opt_kwargs.get("weight_decay", _signature_default(info, "weight_decay"))
    if block.no_weight_decay not in ("auto", "none"):
        _check_no_decay_globs(module, block.no_weight_decay, f"{prefix}no_weight_decay")
    no_decay = no_decay_names(module, block.no_weight_decay) if info.has_weight_decay else set()
    lids, num_layers = ({}, 0)
    if block.layer_decay is not None:
        lids, num_layers = layer_ids(module, [n for n, _ in named])

    plans = _plan_groups(trainable, assigned, block, info, base_wd, no_decay, (lids, num_layers))
    groups = sorted(plans.values(), key=lambda g: [n for n, _ in named].index(g.names[0]))
    _dedupe_labels(groups)
    if info.single_group and len(groups) > 1:
        raise ConfigError(f"{prefix}param_groups", [g.name for g in groups],
                          f"a single parameter group: {info.cls.__name__} does not support per-parameter options",
                          hint="drop param_groups rules (frozen-only rules are fine) and layer_decay")
    return groups


def _owned_params(
    module: nn.Module, block: OptimBlock, prefix: str, taken: set[str]
) -> list[tuple[str, nn.Parameter]]:
    """The named parameters ``block`` owns: not ``taken`` by an earlier block, matching ``block.params``."""
    named = [(n, p) for n, p in module.named_parameters() if n not in taken]
    if block.params != "*":
        _check_regexes(block.params, f"{prefix}params")
        owned = [(n, p) for n, p in named if matches(n, block.params)]
        if not owned:
            pat = _patterns(block.params)[0]
            raise ConfigError(f"{prefix}params", block.params, "globs that match parameter names of the model",
                              suggestions=_similar(pat, [n for n, _ in named]))
        named = owned
    return named


def _assign_rules(
    module: nn.Module, named: Sequence[tuple[str, nn.Parameter]], rules: Sequence[ParamGroupRule], prefix: str
) -> dict[str, int | None]:
    """Map each parameter name to the index of the first rule matching it (``None``: no rule).

    Raises:
        ConfigError: for a bad regex or a rule that matches no parameter.
    """
    for i, rule in enumerate(rules):
        _check_regexes(rule.params, f"{prefix}param_groups.{i}.params")
    assigned: dict[str, int | None] = {}
    hit = [False] * len(rules)
    for n, _p in named:
        for i, rule in enumerate(rules):
            if matches(n, rule.params):
                assigned[n] = i
                hit[i] = True
                break
        else:
            assigned[n] = None
    for i, ok in enumerate(hit):
        if not ok:
            pat = _patterns(rules[i].params)[0]
            raise ConfigError(f"{prefix}param_groups.{i}.params", rules[i].params,
                              "globs that match at least one parameter name (earlier rules take precedence)",
                              suggestions=_similar(pat, [n for n, _ in named]),
                              hint=_shared_hint(module, rules[i].params))
    return assigned


def _plan_groups(
    trainable: Sequence[tuple[str, nn.Parameter]],
    assigned: dict[str, int | None],
    block: OptimBlock,
    info: OptimInfo,
    base_wd: Any,
    no_decay: set[str],
    layers: tuple[dict[str, int], int],
) -> dict[tuple[Any, ...], GroupPlan]:
    """Group ``trainable`` by (rule, decayed, layer) with each group's ``lr``/``weight_decay`` options.

    ``layers`` is :func:`layer_ids`'s ``(ids, num_layers)`` (empty ids without ``layer_decay``).
    """
    lids, num_layers = layers
    rules = block.param_groups
    plans: dict[tuple[Any, ...], GroupPlan] = {}
    for n, p in trainable:
        idx = assigned[n]
        rule = rules[idx] if idx is not None else None
        lr = block.optimizer.lr
        options: dict[str, Any] = {}
        if rule is not None:
            options.update(rule.kwargs)
            if rule.lr is not None:
                lr = rule.lr
            elif rule.lr_scale is not None:
                lr = lr * rule.lr_scale
        wd = rule.weight_decay if rule is not None and rule.weight_decay is not None else base_wd
        decayed = True
        if info.has_weight_decay and n in no_decay and wd:
            wd, decayed = 0.0, False
        layer = lids.get(n) if lids else None
        if layer is not None:
            lr = lr * block.layer_decay ** (num_layers + 1 - layer)  # type: ignore[operator]
        options["lr"] = lr
        if info.has_weight_decay and wd is not None:
            options["weight_decay"] = wd
        key = (idx, decayed, layer)
        if key not in plans:
            label = "default" if rule is None else _rule_label(rule.name, rule.params, idx)  # type: ignore[arg-type]
            if layer is not None:
                label += f"/layer{layer}"
            if not decayed:
                label += "/no_decay"
            plans[key] = GroupPlan(label, options=options)
        plans[key].names.append(n)
        plans[key].params.append(p)
    return plans


def _check_sparse(module: nn.Module, trainable: Sequence[tuple[str, nn.Parameter]], info: OptimInfo,
                  name: str, prefix: str) -> None:
    """SparseAdam steps only on sparse gradients: every parameter must come from a sparse embedding."""
    sparse = {id(p) for m in module.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse
              for p in m.parameters(recurse=False)}
    dense = [n for n, p in trainable if id(p) not in sparse]
    if dense:
        raise ConfigError(f"{prefix}optimizer.name", name,
                          f"an optimizer for dense gradients: {info.cls.__name__} takes only parameters of "
                          f"nn.Embedding(sparse=True), not {', '.join(dense[:3])}{'...' if len(dense) > 3 else ''}",
                          hint="give the dense parameters their own optimizer in an `optimizers:` list "
                               "(e.g. params: 'embed.*' with sparseadam, params: '*' with adamw), or freeze them")


def _shared_hint(module: nn.Module, globs: str | Sequence[str]) -> str:
    """A hint when the globs match only the second name of a shared (tied) parameter."""
    first: dict[int, str] = {}
    for n, p in module.named_parameters(remove_duplicate=False):
        owner = first.setdefault(id(p), n)
        if owner != n and matches(n, globs):
            return (f"'{n}' is the same tensor as '{owner}': a shared parameter is listed once, under its "
                    f"first name; match '{owner}' instead")
    return ""


def _check_no_decay_globs(module: nn.Module, globs: Sequence[str], path: str) -> None:
    """An explicit ``no_weight_decay`` list: valid regexes, and every glob matches some parameter."""
    _check_regexes(globs, path)
    names = [n for n, _p in module.named_parameters()]
    for pat in globs:
        if not any(matches(n, pat) for n in names):
            raise ConfigError(path, pat, "'auto', 'none' or globs that match parameter names of the model",
                              suggestions=did_you_mean(pat, ["auto", "none"]) or _similar(pat, names))


def _check_options(
    info: OptimInfo, block: OptimBlock, opt_kwargs: dict[str, Any], prefix: str, like: nn.Parameter
) -> None:
    """The optimizer's keyword arguments, and each rule's options, pass torch's own checks.

    torch validates only the constructor's defaults, not the options of each parameter group, so a
    bad ``betas`` in a rule would otherwise surface as a TypeError inside ``optimizer.step()``; and
    some bad defaults raise errors other than ValueError (``betas: [0.9]`` is an IndexError). Each is
    tried on a throw-away optimizer over a 2-D tensor on the model's device, and the key that fails
    is named (``optimizer.betas``, ``param_groups.1.momentum``). Only torch's own classes are probed:
    a custom optimizer's constructor may have side effects.
    """
    if not info.cls.__module__.startswith("torch.optim"):
        return
    import torch

    def probe(kwargs: dict[str, Any]) -> Exception | None:
        dummy = torch.zeros(2, 2, device=like.device, dtype=like.dtype, requires_grad=True)
        try:
            info.cls([dummy], lr=block.optimizer.lr, **kwargs)
        except (TypeError, ValueError, RuntimeError, IndexError, KeyError, AttributeError) as exc:
            return exc
        return None

    def fail(path: str, given: dict[str, Any], base: dict[str, Any], exc: Exception) -> ConfigError:
        key = next((k for k, v in given.items() if probe({**base, k: v}) is not None), None)
        return ConfigError(path + (f".{key}" if key else ""), given[key] if key else given,
                           f"a value {info.cls.__name__} accepts ({exc})")

    exc = probe(opt_kwargs)
    if exc is not None:
        raise fail(f"{prefix}optimizer", block.optimizer.kwargs, dict(info.defaults), exc)
    for i, rule in enumerate(block.param_groups):
        if rule.kwargs and not rule.frozen:
            exc = probe({**opt_kwargs, **rule.kwargs})
            if exc is not None:
                raise fail(f"{prefix}param_groups.{i}", rule.kwargs, opt_kwargs, exc)


def _dedupe_labels(groups: list[GroupPlan]) -> None:
    seen: dict[str, int] = {}
    for g in groups:
        if g.name in seen:
            seen[g.name] += 1
            g.name = f"{g.name}#{seen[g.name]}"
        else:
            seen[g.name] = 0


def _signature_default(info: OptimInfo, key: str) -> Any:
    import inspect

    try:
        param = inspect.signature(info.cls.__init__).parameters.get(key)
    except (TypeError, ValueError):
        return None
    if param is None or param.default is inspect.Parameter.empty:
        return None
    return param.default


def format_groups(groups: Sequence[GroupPlan] | Sequence[dict[str, Any]], title: str = "") -> list[str]:
    """One line per group: name, tensors, parameters, lr and weight decay.

    Example:
        >>> g = GroupPlan("default", ["w"], [nn.Parameter(__import__("torch").zeros(3))], {"lr": 0.1})
        >>> format_groups([g])[0]
        'default: 1 tensors, 3 params, lr=0.1, weight_decay=-'
    """
    lines = [title] if title else []
    for g in groups:
        name, params, opts = (g.name, g.params, g.options) if isinstance(g, GroupPlan) else (
            g.get("name", "?"), g["params"], g)
        count = sum(p.numel() for p in params)
        wd = opts.get("weight_decay")
        lines.append(f"{name}: {len(params)} tensors, {count:,} params, lr={opts.get('lr'):.4g}, "
                     f"weight_decay={'-' if wd is None else f'{wd:g}'}")
    return lines
