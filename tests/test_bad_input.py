"""Property-based bad input: every broken config ends in a ConfigError that names the broken key.

Start from valid configs (several optimizers, parameter-group rules, every schedule kind, several
optimizers at once) and apply one random mutation: an unknown key at any level, a wrong type, a bad
number, a warm-up as long as training, a floor above the LR, an unknown name, a rule that matches no
parameter, plateau without a monitor... Each mutated config goes through ``load_config`` and then
``build_optimizers`` on a tiny real model with a real training length. The only acceptable outcome is
a :class:`ConfigError` (a ``ValueError``) whose key path is the mutated entry; mutations that keep the
config valid must build and then run 20 real optimizer/scheduler steps with finite learning rates.

The number of examples that ran is counted in ``CASES`` and printed by the last test (``-s``).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections import Counter
from typing import Any

import lightning as L
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_optkit import ConfigError, OptimMixin, build_optimizers, load_config
from lightning_optkit.config import OptimBlock, OptimConfig, ParamGroupRule, SchedulerConfig, TrainingLength
from lightning_optkit.losses import available_losses, get_loss_info
from lightning_optkit.optim import registry, resolve_optimizer
from lightning_optkit.schedules import SCHEDULES, lookup

LENGTH = TrainingLength(total_steps=20, steps_per_epoch=(5,) * 4)
CASES: Counter[str] = Counter()
INVALID_EXAMPLES = 2500
VALID_EXAMPLES = 500
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


class Tiny(OptimMixin, L.LightningModule):
    """backbone (Linear, LayerNorm, Linear) and head; an OptimMixin so the loss block is built too."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.backbone(x)))


PARAM_NAMES = [n for n, _ in Tiny().named_parameters()]

# -- the valid starting points -----------------------------------------------------------------------

BASES: list[dict[str, Any]] = [
    {
        "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.05},
        "param_groups": [
            {"params": "backbone.*", "lr_scale": 0.1},
            {"params": r"re:^head\.", "weight_decay": 0.0, "betas": [0.8, 0.95]},
        ],
        "scheduler": {"name": "warmup_cosine", "warmup": "10%", "min_lr_ratio": 0.1},
        "loss": {"name": "cross_entropy", "label_smoothing": 0.1},
    },
    {
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
        "param_groups": [{"params": "backbone.0.*", "frozen": True}, {"params": ["head.*"], "lr": 0.05}],
        "scheduler": {"name": "step", "step_size": "1 epochs", "gamma": 0.5},
    },
    {
        "optimizer": {"name": "adam", "lr": 1e-3, "eps": 1e-7},
        "layer_decay": 0.8,
        "no_weight_decay": ["*.bias"],
        "scheduler": {"name": "cosine_restarts", "cycle": 5, "cycle_mult": 2.0, "peak_decay": 0.9},
    },
    {"optimizer": {"name": "rmsprop", "lr": 1e-3, "momentum": 0.5, "alpha": 0.9},
     "scheduler": {"name": "linear", "warmup": 2, "min_lr_ratio": 0.0}},
    {"optimizer": {"name": "radam", "lr": 1e-3},
     "param_groups": [{"params": "head.bias", "lr_scale": 2.0}],
     "scheduler": {"name": "polynomial", "power": 2.0, "warmup": "1 epochs"}},
    {"optimizer": {"name": "adamax", "lr": 2e-3}, "scheduler": {"name": "inverse_sqrt", "warmup": 3}},
    {"optimizer": {"name": "nadam", "lr": 2e-3}, "scheduler": {"name": "wsd", "decay": "20%", "decay_shape": "cosine"}},
    {"optimizer": {"name": "adagrad", "lr": 1e-2},
     "scheduler": {"name": "multistep", "milestones": [5, "2 epochs"], "gamma": 0.5}},
    {"optimizer": {"name": "asgd", "lr": 1e-2},
     "scheduler": {"name": "exponential", "gamma": 0.9, "interval": "epoch"}},
    {"optimizer": {"name": "adamw", "lr": 1e-3},
     "scheduler": {"name": "onecycle", "pct_start": 0.3, "div_factor": 10.0}},
    {"optimizer": {"name": "adamw", "lr": 1e-3},
     "scheduler": {"name": "plateau", "monitor": "val_loss", "patience": 1, "factor": 0.5}},
    {"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
     "param_groups": [{"params": "head.*", "lr_scale": 0.5, "momentum": 0.5}],
     "scheduler": {"name": "reduce_on_plateau", "monitor": "val_acc", "mode": "max", "warmup": "1 epochs",
                   "min_lr_ratio": 0.01}},
    {"optimizer": {"name": "lbfgs", "lr": 0.1, "max_iter": 2}, "scheduler": {"name": "constant"}},
    {"optimizer": {"name": "adafactor", "lr": 1e-2}, "param_groups": [{"params": "head.*", "frozen": True}]},
    {"optimizer": {"name": "adamw", "lr": 1e-3},
     "scheduler": {"name": "torch.optim.lr_scheduler.StepLR", "step_size": 5, "gamma": 0.5}},
    {
        "optimizers": [
            {"params": "backbone.*", "optimizer": {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999]},
             "scheduler": {"name": "linear", "warmup": "1 epochs"}},
            {"params": "head.*", "optimizer": {"name": "sgd", "lr": 1e-2, "momentum": 0.9},
             "param_groups": [{"params": "head.bias", "lr_scale": 0.5, "dampening": 0.1}],
             "scheduler": {"name": "warmup_cosine", "warmup": 2}},
        ],
        "loss": {"name": "mse"},
    },
]


@pytest.mark.parametrize("base", BASES, ids=lambda b: "+".join(str(v.get("name")) for v in _named(b)))
def test_every_base_is_valid(base):
    _build_and_run(base)


def _named(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    return [b[k] for _, b in _blocks(cfg) for k in ("optimizer", "scheduler") if b.get(k)]


# -- helpers over the plain-dict configs ------------------------------------------------------------


def _blocks(cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    if "optimizers" in cfg:
        return [(f"optimizers.{i}.", b) for i, b in enumerate(cfg["optimizers"])]
    return [("", cfg)]


def _get(cfg: dict[str, Any], path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _set(cfg: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = cfg
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _optimizer_class(block: dict[str, Any]) -> type:
    return resolve_optimizer(block["optimizer"]["name"]).cls


def _arguments(cls: type) -> set[str]:
    return {n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "params")}


def _interval(sched: dict[str, Any]) -> str:
    if "." in sched["name"]:
        return sched.get("interval") or "step"
    return sched.get("interval") or lookup(sched["name"]).interval


def _accepted_keys(cfg: dict[str, Any], level: str) -> set[str]:
    """Keys that are valid at ``level`` (so a mutation must avoid them)."""
    if level == "":
        return set(OptimConfig.model_fields) | {"optim"}
    if level == "loss":
        return {"name", *inspect.signature(nn.CrossEntropyLoss.__init__).parameters,
                *inspect.signature(nn.MSELoss.__init__).parameters}
    parts = level.split(".")
    if parts[0] == "optimizers" and len(parts) == 2:
        return set(OptimBlock.model_fields)
    block = _get(cfg, ".".join(parts[:2])) if parts[0] == "optimizers" else cfg
    leaf = parts[-1] if not parts[-1].isdigit() else parts[-2]
    if leaf == "optimizer":
        return {"name", "lr"} | _arguments(_optimizer_class(block))
    if leaf == "param_groups":
        return set(ParamGroupRule.model_fields) | _arguments(_optimizer_class(block))
    if leaf == "scheduler":
        sched = block["scheduler"]
        if "." in sched["name"]:
            module, _, cls = sched["name"].rpartition(".")
            return set(SchedulerConfig.model_fields) | set(
                inspect.signature(getattr(__import__(module, fromlist=[cls]), cls).__init__).parameters)
        return set(SchedulerConfig.model_fields) | set(lookup(sched["name"]).settings)
    raise AssertionError(level)


def _levels(cfg: dict[str, Any]) -> list[str]:
    levels = [""]
    if "loss" in cfg:
        levels.append("loss")
    for prefix, block in _blocks(cfg):
        if prefix:
            levels.append(prefix[:-1])
        levels.append(f"{prefix}optimizer")
        if block.get("scheduler"):
            levels.append(f"{prefix}scheduler")
        levels += [f"{prefix}param_groups.{i}" for i in range(len(block.get("param_groups", [])))]
    return levels


@st.composite
def misspelling(draw: st.DrawFn, word: str) -> str:
    """One edit: drop, double, swap or replace a character."""
    i = draw(st.integers(0, len(word) - 1))
    op = draw(st.sampled_from(["drop", "double", "swap", "replace"]))
    if op == "drop":
        return word[:i] + word[i + 1:]
    if op == "double":
        return word[:i] + word[i] + word[i:]
    if op == "swap" and i < len(word) - 1:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return word[:i] + draw(st.sampled_from("aeioukxz")) + word[i + 1:]


NOT_A_NUMBER = st.sampled_from(["abc", "fast", "", "1e-3x", [0.1], [], {"value": 1}, {}, True, False])
NOT_A_NUMBER_OR_NONE = st.one_of(NOT_A_NUMBER, st.just(None))
NOT_A_STRING = st.sampled_from([5, 0.5, None, True, ["adamw"], {"name": "adamw"}])
NON_POSITIVE = st.sampled_from([0, 0.0, -1e-3, -1, math.nan, math.inf, -math.inf])


# -- the mutations -----------------------------------------------------------------------------------
# Each returns (mutated config, expected key path or None when it stays valid, exact path?, kind).

Mutation = tuple[dict[str, Any], str | None, bool, str]


def m_unknown_key(draw: st.DrawFn, cfg: dict[str, Any]) -> Mutation:
    level = draw(st.sampled_from(_levels(cfg)))
    accepted = _accepted_keys(cfg, level)
    node = cfg if level == "" else _get(cfg, level)
    # (schedules' did-you-mean does not offer 'name' itself: reported, left out here)
    source = sorted(k for k in accepted | set(node) if len(k) >= 4 and k != "optim"
                    and not (k == "name" and level.endswith("scheduler")))
    misspelt = draw(st.booleans())
    if misspelt:
        key = draw(misspelling(draw(st.sampled_from(source))).filter(lambda k: k not in accepted and k))
    else:
        key = "zz" + draw(st.from_regex(r"[a-z_]{1,10}", fullmatch=True))
    node[key] = draw(st.one_of(st.integers(0, 5), st.sampled_from(["x", [1], {"a": 1}, None, 0.5])))
    path = f"{level}.{key}" if level else key
    if level == "loss" or (level.endswith("scheduler") and "." in node["name"]):
        # suggestions there come from the loss registry / the scheduler class's signature
        return cfg, path, True, f"unknown_key/{level.rsplit('.', 1)[-1]}"
    return cfg, path, True, "unknown_key" + ("/misspelt" if misspelt else "")


def _numeric_leaves(cfg: dict[str, Any]) -> list[tuple[str, bool]]:
    """(path, required?) of numbers the schema or the schedule registry checks."""
    out: list[tuple[str, bool]] = []
    for prefix, block in _blocks(cfg):
        out.append((f"{prefix}optimizer.lr", True))
        for i, rule in enumerate(block.get("param_groups", [])):
            out += [(f"{prefix}param_groups.{i}.{k}", False) for k in ("lr", "lr_scale", "weight_decay") if k in rule]
        if "layer_decay" in block:
            out.append((f"{prefix}layer_decay", False))
        sched = block.get("scheduler")
        if sched and "." not in sched["name"]:
            out += [(f"{prefix}scheduler.{k}", False) for k in ("min_lr", "min_lr_ratio") if k in sched]
            info = lookup(sched["name"])
            out += [(f"{prefix}scheduler.{k}", True) for k, v in sched.items()
                    if k in info.settings and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if "loss" in cfg and "label_smoothing" in cfg["loss"]:
        out.append(("loss.label_smoothing", True))
    return out


def m_wrong_type_number(draw: st.DrawFn, cfg: dict[str, Any]) -> Mutation:
    path, required = draw(st.sampled_from(_numeric_leaves(cfg)))
    value = draw(NOT_A_NUMBER_OR_NONE)
    _set(cfg, path, value)
    if value is None and not required:
        return cfg, None, True, "wrong_type/none_optional"
    return cfg, path, True, "wrong_type/number"


def m_wrong_type_other(draw: st.DrawFn, cfg: dict[str, Any]) -> Mutation:
    prefix, block = draw(st.sampled_from(_blocks(cfg)))
    choices = [f"{prefix}optimizer.name", f"{prefix}optimizer", f"{prefix}param_groups", f"{prefix}no_weight_decay"]
    if block.get("scheduler"):
        choices += [f"{prefix}scheduler.name", f"{prefix}scheduler", f"{prefix}scheduler.warmup",
                    f"{prefix}scheduler.interval"]
    rules = block.get("param_groups", [])
    for i in range(len(rules)):
        choices += [f"{prefix}param_groups.{i}", f"{prefix}param_groups.{i}.params", f"{prefix}param_groups.{i}.frozen"]
    if prefix:
        choices += [f"{prefix}params", prefix[:-1]]
    if "loss" in cfg:
        choices += ["loss", "loss.name"]
    path = draw(st.sampled_from(choices))
    leaf = path.rsplit(".", 1)[-1]
    if leaf in ("name", "interval"):
        value = draw(NOT_A_STRING if leaf == "name" else st.sampled_from([5, True, ["step"], "epochs", "batch", ""]))
        if leaf == "interval" and value is None:
            value = "steps"
    elif leaf in ("optimizer", "scheduler", "loss") or leaf.isdigit():
        value = draw(st.sampled_from(["adamw", 3, [1, 2], True] + ([None] if leaf == "optimizer" else [])))
    elif leaf == "param_groups":
        value = draw(st.sampled_from([{"params": "head.*"}, "head.*", 3, True]))
    elif leaf == "no_weight_decay":
        value = draw(st.sampled_from([3, 0.5, {"a": 1}, [1], [None]]))
    elif leaf == "params":
        value = draw(st.sampled_from([3, None, [], [1], "", " ", {"a": "b"}, True]))
    elif leaf == "frozen":
        value = draw(st.sampled_from([{"a": 1}, [True], "maybe", None, 5, 0.5]))
    elif leaf == "warmup":
        value = draw(st.sampled_from([None, True, [1], {"steps": 1}, "5 epoks", "soon", -1, 1.5, "100%", "-2 steps"]))
    else:
        raise AssertionError(path)
    _set(cfg, path, value)
    if path == "optimizer" and value is None:
        path = "optimizer"  # the single-optimizer form without its block
    return cfg, path, False, f"wrong_type/{leaf if not leaf.isdigit() else 'entry'}"


def m_bad_number(draw: st.DrawFn, cfg: dict[str, Any]) -> Mutation:
    prefix, block = draw(st.sampled_from(_blocks(cfg)))
    choices: list[tuple[str, st.SearchStrategy]] = [(f"{prefix}optimizer.lr", NON_POSITIVE)]
    for i, rule in enumerate(block.get("param_groups", [])):
        choices.append((f"{prefix}param_groups.{i}.lr_scale" if "lr" not in rule else f"{prefix}param_groups.{i}.lr",
                        NON_POSITIVE))
        choices.append((f"{prefix}param_groups.{i}.weight_decay", st.sampled_from([-0.1, math.nan, math.inf])))
    if _optimizer_class(block) is not torch.optim.LBFGS:
        choices.append((f"{prefix}layer_decay", st.sampled_from([0, -0.5, 1.5, 1.0001, math.nan, math.inf])))
    sched = block.get("scheduler")
    if sched and "." not in sched["name"]:
        name = lookup(sched["name"]).name
        if name not in ("constant", "onecycle"):
            choices.append((f"{prefix}scheduler.min_lr_ratio", st.sampled_from([-0.1, 1.5, math.nan, math.inf])))
        bad = {
            "gamma": [0, -1, math.nan, math.inf] + ([1.5] if name == "exponential" else []),
            "power": [0, -1, math.nan], "cycle_mult": [0, -2, math.nan], "peak_decay": [0, 1.5, math.nan],
            "pct_start": [0, 1, 1.5], "div_factor": [0, -1, math.inf], "factor": [0, 1, 1.5, math.nan],
            "patience": [-1, -5, math.nan], "warmup_start": [-0.1, 1.0, math.nan],
        }
        for key, values in bad.items():
            if key in lookup(sched["name"]).settings:
                choices.append((f"{prefix}scheduler.{key}", st.sampled_from(values)))
    if "loss" in cfg and cfg["loss"]["name"] == "cross_entropy":
        choices.append(("loss.label_smoothing", st.sampled_from([math.nan, math.inf])))
    path, values = draw(st.sampled_from(choices))
    _set(cfg, path, draw(values))
    return cfg, path, True, "bad_number/" + path.rsplit(".", 1)[-1]


def _sched_blocks(cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p, b) for p, b in _blocks(cfg) if b.get("scheduler")]


def m_long_warmup(draw: st.DrawFn, cfg: dict[str, Any]) -> Mutation:
    blocks = _sched_blocks(cfg)
    if not blocks:
        return m_unknown_key(draw, cfg)
    prefix, block = draw(st.sampled_from(blocks))
    block["scheduler"]["warmup"] = draw(st.sampled_from(
        [10_000, "100 epochs", "20 steps", 20, 25, "4 epochs", "5 epochs", "99%", 0.99, "3.95 epochs", "99.9%"]))
    block["scheduler"].pop("pct_start", None)
    return cfg, f"{prefix}scheduler.warmup", True, "warmup_too_long"


def m_min_lr_above_lr(draw: st.DrawFn, cfg: dict[str, Any]) -> Mutation:
    blocks = _sched_blocks(cfg)
    if not blocks:
        return m_unknown_key(draw, cfg)
    prefix, block = draw(st.sampled_from(blocks))
    sched = block["scheduler"]
    sched.pop("min_lr_ratio", None)
    sched["min_lr"] = block["optimizer"]["lr"] * draw(st.sampled_from([1.01, 2.0, 10.0, 1e6]))
    return cfg, f"{prefix}scheduler.min_lr", True, "min_lr_above_lr"


KNOWN_OPTIMIZERS = set(registry())
KNOWN_LOSSES = {a for n in available_losses() for a in (n, *get_loss_info(n).aliases)}
SCHEDULE_NAMES = sorted({a for info in SCHEDULES.values() for a in (info.name, *info.aliases)})


def m_unknown_name(draw: st.DrawFn, cfg: dict[str, Any]) -> Mutation:
    prefix, block = draw(st.sampled_from(_blocks(cfg)))
    targets = ["optimizer"] + (["scheduler"] if block.get("scheduler") else []) + (["loss"] if "loss" in cfg else [])
    target = draw(st.sampled_from(targets))
    misspelt = draw(st.booleans())
    if target == "optimizer":
        known = KNOWN_OPTIMIZERS
        source = sorted(k for k in known if len(k) >= 4)
    elif target == "scheduler":
        known = set(SCHEDULE_NAMES)
        source = [k for k in SCHEDULE_NAMES if len(k) >= 5]
    else:
        known = KNOWN_LOSSES  # every registered name: a "misspelling" of smooth_l1 may be l1 itself
        source = ["cross_entropy", "smooth_l1", "huber", "focal", "kl_div"]
    if misspelt:
        squashed = {k.replace("-", "").replace("_", "") for k in known}  # names are matched loosely
        name = draw(misspelling(draw(st.sampled_from(source))).filter(
            lambda n: n.strip() and n.lower().replace("-", "").replace("_", "") not in squashed))
    else:
        name = "zz" + draw(st.from_regex(r"[a-z_]{1,10}", fullmatch=True))
    if target != "loss" and draw(st.integers(0, 3)) == 0:
        name = draw(st.sampled_from(["torch.optim.NoSuchThing", "torch.nn.Linear", "no_such_module_zz.X",
                                     "torch.optim.lr_scheduler.NoSuch", ".", "x."]))
        misspelt = False
    if target == "loss":
        cfg["loss"] = {"name": name}
        return cfg, "loss.name", True, "unknown_name/loss"
    node = block[target]
    node["name"] = name
    if target == "scheduler":  # settings of the old schedule would be reported first
        block["scheduler"] = {"name": name}
    return cfg, f"{prefix}{target}.name", True, f"unknown_name/{target}" + ("/misspelt" if misspelt else "")


NOTHING = ["bakbone.*", r"re:^bakbone\.", ["nothing.*"], "head", "backbone", "re:^$", "Backbone.*", "backbone.9.*",
           ["hed.*", "bacbone.*"]]


def m_rule_matches_nothing(draw: st.DrawFn, cfg: dict[str, Any]) -> Mutation:
    prefix, block = draw(st.sampled_from(_blocks(cfg)))
    rules = block.setdefault("param_groups", [])
    if prefix and draw(st.booleans()):
        block["params"] = draw(st.sampled_from(NOTHING))
        return cfg, f"{prefix}params", True, "nothing_matched/block"
    if rules and draw(st.booleans()):  # a catch-all first shadows every later rule
        rules.insert(0, {"params": "*"})
        return cfg, f"{prefix}param_groups.1.params", True, "nothing_matched/shadowed"
    j = draw(st.integers(0, len(rules)))
    rules.insert(j, {"params": draw(st.sampled_from(NOTHING)), "lr_scale": 0.5})
    return cfg, f"{prefix}param_groups.{j}.params", True, "nothing_matched/rule"


def m_monitor(draw: st.DrawFn, cfg: dict[str, Any]) -> Mutation:
    blocks = [(p, b) for p, b in _sched_blocks(cfg) if "." not in b["scheduler"]["name"]]
    if not blocks:
        return m_unknown_key(draw, cfg)
    prefix, block = draw(st.sampled_from(blocks))
    sched = block["scheduler"]
    if lookup(sched["name"]).name == "plateau":
        choice = draw(st.sampled_from(["delete", None, "", 3, ["val_loss"], True]))
        if choice == "delete":
            del sched["monitor"]
        else:
            sched["monitor"] = choice
        return cfg, f"{prefix}scheduler.monitor", True, "monitor/missing" if not choice else "monitor/wrong_type"
    sched["monitor"] = "val_loss"
    return cfg, f"{prefix}scheduler.monitor", True, "monitor/not_plateau"


def m_bad_duration_setting(draw: st.DrawFn, cfg: dict[str, Any]) -> Mutation:
    blocks = [(p, b) for p, b in _sched_blocks(cfg)
              if "." not in b["scheduler"]["name"]
              and {"step_size", "milestones", "cycle", "decay"} & set(lookup(b["scheduler"]["name"]).settings)]
    if not blocks:
        return m_long_warmup(draw, cfg)
    prefix, block = draw(st.sampled_from(blocks))
    keys = sorted({"step_size", "milestones", "cycle", "decay"} & set(lookup(block["scheduler"]["name"]).settings))
    key = draw(st.sampled_from(keys))
    bad = ["2 epoks", -3, 1.5, None, True, "100%", {"a": 1}]
    value = [5, draw(st.sampled_from(bad))] if key == "milestones" and draw(st.booleans()) else draw(
        st.sampled_from(bad + (["soon", [], [20, 5]] if key == "milestones" else [])))
    block["scheduler"][key] = value
    return cfg, f"{prefix}scheduler.{key}", True, "bad_duration/" + key


TORCH_REJECTS = {
    "betas": [[2.0, 0.9], [0.9, -0.1], "fast", [0.9]],
    "eps": [-1.0, "tiny", None, [1e-8]],
    "weight_decay": [-0.1, "x", None, {"wd": 1}],
    "momentum": [-0.5, "x", None, [0.9]],
}


def m_torch_rejects(draw: st.DrawFn, cfg: dict[str, Any]) -> Mutation:
    """Values the schema lets through (optimizer kwargs) but torch's constructor refuses."""
    validated = {  # what each constructor checks
        torch.optim.AdamW: ("betas", "eps", "weight_decay"), torch.optim.Adam: ("betas", "eps", "weight_decay"),
        torch.optim.SGD: ("momentum", "weight_decay"), torch.optim.RMSprop: ("momentum", "eps", "weight_decay"),
        torch.optim.RAdam: ("betas", "eps", "weight_decay"), torch.optim.NAdam: ("betas", "eps", "weight_decay"),
        torch.optim.Adamax: ("betas", "eps", "weight_decay"),
    }
    choices = []
    for prefix, block in _blocks(cfg):
        for key in validated.get(_optimizer_class(block), ()):
            choices.append((f"{prefix}optimizer", block["optimizer"], key))
            for i, rule in enumerate(block.get("param_groups", [])):
                if not rule.get("frozen") and key != "weight_decay":  # a rule's weight_decay is a schema field
                    choices.append((f"{prefix}param_groups.{i}", rule, key))
    if not choices:
        return m_bad_number(draw, cfg)
    path, node, key = draw(st.sampled_from(choices))
    node[key] = draw(st.sampled_from(TORCH_REJECTS[key]))
    return cfg, path, False, f"torch_rejects/{key}"


def m_conflicts(draw: st.DrawFn, cfg: dict[str, Any]) -> Mutation:
    prefix, block = draw(st.sampled_from(_blocks(cfg)))
    kind = draw(st.sampled_from(["lr_and_scale", "floor_twice", "nwd_typo", "bad_regex", "lbfgs_groups"]))
    if kind == "lr_and_scale" or (kind == "floor_twice" and not block.get("scheduler")):
        block.setdefault("param_groups", []).append({"params": "head.*", "lr": 0.1, "lr_scale": 0.5})
        return cfg, f"{prefix}param_groups.{len(block['param_groups']) - 1}", False, "conflict/lr_and_lr_scale"
    if kind == "floor_twice":
        block["scheduler"].update(min_lr=1e-9, min_lr_ratio=0.1)
        return cfg, f"{prefix}scheduler", False, "conflict/min_lr_twice"
    if kind == "nwd_typo":
        block["no_weight_decay"] = draw(st.sampled_from(["autoo", "Auto", "non", ["*.bias", "nothing.*"], ["re:(("]]))
        return cfg, f"{prefix}no_weight_decay", True, "conflict/no_weight_decay"
    if kind == "bad_regex":
        block.setdefault("param_groups", []).insert(0, {"params": ["head.*", "re:(["], "lr_scale": 0.5})
        return cfg, f"{prefix}param_groups.0.params", True, "conflict/bad_regex"
    block["optimizer"] = {"name": "lbfgs", "lr": 0.1}
    block.pop("layer_decay", None)
    block["param_groups"] = [{"params": "*.weight", "lr_scale": 0.5}]
    if block.get("scheduler"):
        block["scheduler"] = {"name": "constant"}
    return cfg, f"{prefix}param_groups", True, "conflict/lbfgs_groups"


INVALID_MUTATIONS = [m_unknown_key, m_wrong_type_number, m_wrong_type_other, m_bad_number, m_long_warmup,
                     m_min_lr_above_lr, m_unknown_name, m_rule_matches_nothing, m_monitor, m_bad_duration_setting,
                     m_torch_rejects, m_conflicts]


def _valid_warmups(sched: dict[str, Any]) -> list[Any]:
    if "." in sched["name"] or lookup(sched["name"]).name == "onecycle":
        return [0, "0%", 0.0]
    if _interval(sched) == "epoch" or lookup(sched["name"]).name == "plateau":
        return [0, "1 epochs", "25%", 0.5]
    return [0, 1, 3, "2 steps", "1 epochs", "5%", 0.1, "0%"]


def m_valid(draw: st.DrawFn, cfg: dict[str, Any]) -> Mutation:
    prefix, block = draw(st.sampled_from(_blocks(cfg)))
    kind = draw(st.sampled_from(["lr", "name_case", "warmup", "lr_scale", "no_weight_decay", "no_scheduler",
                                 "foreach", "unchanged", "lr_string", "min_lr"]))
    opt = block["optimizer"]
    if kind == "lr":
        opt["lr"] = draw(st.floats(1e-6, 1.0))
        sched = block.get("scheduler") or {}
        sched.pop("min_lr", None)
    elif kind == "lr_string":
        opt["lr"] = draw(st.sampled_from(["1e-3", "0.01", "3.0e-4"]))
    elif kind == "name_case":
        opt["name"] = draw(st.sampled_from([opt["name"].upper(), opt["name"].title(), f" {opt['name']} "]))
    elif kind == "warmup" and block.get("scheduler"):
        block["scheduler"]["warmup"] = draw(st.sampled_from(_valid_warmups(block["scheduler"])))
    elif kind == "lr_scale" and block.get("param_groups"):
        i = draw(st.integers(0, len(block["param_groups"]) - 1))
        rule = block["param_groups"][i]
        if not rule.get("frozen"):
            rule.pop("lr", None)
            rule["lr_scale"] = draw(st.one_of(st.floats(1e-3, 10.0), st.none()))
    elif kind == "no_weight_decay":
        block["no_weight_decay"] = draw(st.sampled_from(["auto", "none", None, True, False, ["*.bias"], "head.*"]))
    elif kind == "no_scheduler":
        if draw(st.booleans()):
            block.pop("scheduler", None)
        else:
            block["scheduler"] = None
    elif kind == "foreach" and "foreach" in _arguments(_optimizer_class(block)):
        opt["foreach"] = draw(st.sampled_from([False, None]))
    elif kind == "min_lr" and block.get("scheduler") and "." not in block["scheduler"]["name"]:
        sched = block["scheduler"]
        if lookup(sched["name"]).floor:
            sched.pop("min_lr_ratio", None)
            sched["min_lr"] = float(opt["lr"]) * draw(st.sampled_from([0.0, 0.01, 0.5, 1.0]))
    return cfg, None, True, f"valid/{kind}"


# -- running one case ------------------------------------------------------------------------------------


def _build_and_run(cfg: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = Tiny()
    out = build_optimizers(model, load_config(cfg), length=LENGTH)
    optimizers, schedulers = (out if isinstance(out, tuple) else ([out], []))
    owned = [id(p) for o in optimizers for g in o.param_groups for p in g["params"]]
    assert len(owned) == len(set(owned))
    assert set(owned) == {id(p) for p in model.parameters() if p.requires_grad}
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    for step in range(LENGTH.total_steps):
        for opt in optimizers:
            def closure(opt=opt):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss
            if isinstance(opt, torch.optim.LBFGS):
                opt.step(closure)
            else:
                closure()
                opt.step()
        end_of_epoch = (step + 1) % 5 == 0
        for entry in schedulers:
            if entry["interval"] == "step":
                entry["scheduler"].step()
            elif end_of_epoch:
                if entry.get("reduce_on_plateau"):
                    entry["scheduler"].step(1.0)
                else:
                    entry["scheduler"].step()
        for opt in optimizers:
            for g in opt.param_groups:
                assert math.isfinite(g["lr"]) and g["lr"] >= 0, (step, g["name"], g["lr"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _expect_config_error(cfg: dict[str, Any], path: str, exact: bool, kind: str) -> ConfigError:
    try:
        _build_and_run(cfg)
    except ConfigError as err:
        assert isinstance(err, ValueError)
        where = err.path or "<config>"
        if exact:
            assert err.path == path, f"{kind}: expected the error at {path!r}, got {err}"
        else:
            assert err.path == path or err.path.startswith(f"{path}."), f"{kind}: expected {path!r}, got {err}"
        assert str(err).startswith(f"{where}: "), str(err)
        assert path in str(err)
        return err
    raise AssertionError(f"{kind}: no ConfigError for {cfg!r} (expected one at {path!r})")


@settings(max_examples=INVALID_EXAMPLES, **SETTINGS)
@given(st.data())
def test_mutated_configs_end_in_a_config_error(data):
    base = copy.deepcopy(data.draw(st.sampled_from(BASES), label="base"))
    mutation = data.draw(st.sampled_from(INVALID_MUTATIONS), label="mutation")
    cfg, path, exact, kind = mutation(data.draw, base)
    data.draw(st.just(cfg), label="config")
    CASES["total"] += 1
    CASES[kind] += 1
    if path is None:
        CASES["valid"] += 1
        _build_and_run(cfg)
        return
    CASES["invalid"] += 1
    err = _expect_config_error(cfg, path, exact, kind)
    if kind.endswith("/misspelt") and not kind.startswith("unknown_name/loss"):
        assert err.suggestions, f"{kind}: no did-you-mean in {err}"


@settings(max_examples=VALID_EXAMPLES, **SETTINGS)
@given(st.data())
def test_mutations_that_stay_valid_build_and_run(data):
    base = copy.deepcopy(data.draw(st.sampled_from(BASES), label="base"))
    cfg, _path, _exact, kind = m_valid(data.draw, base)
    data.draw(st.just(cfg), label="config")
    CASES["total"] += 1
    CASES["valid"] += 1
    CASES[kind] += 1
    _build_and_run(cfg)


@pytest.mark.parametrize("scheduler", [
    {"name": "cosine_restarts", "cycle": 5, "cycle_mult": 1e308},  # OverflowError after the first cycle
    {"name": "step", "step_size": 5, "gamma": 1e308},  # gamma has no upper bound: RuntimeError in step()
    {"name": "onecycle", "div_factor": 1e-300},  # initial lr = lr / div_factor overflows
], ids=["cycle_mult", "step_gamma", "div_factor"])
def test_extreme_schedule_values_are_rejected_or_run(scheduler):
    cfg = {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}, "scheduler": scheduler}
    try:
        _build_and_run(cfg)
    except ConfigError as err:
        assert err.path.startswith("scheduler.")


# -- plateau's monitor in a real Trainer ---------------------------------------------------------------


class Logged(OptimMixin, L.LightningModule):
    def __init__(self, optim: dict, log_name: str | None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        if self.hparams.log_name:
            self.log(self.hparams.log_name, loss)
        return loss


@pytest.mark.parametrize("warmup", [0, "1 epochs"])
@pytest.mark.parametrize("logged", [None, "train_los"])
def test_plateau_monitor_never_logged(fast_trainer_kwargs, make_regression_loader, warmup, logged):
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    optim = {"optimizer": {"name": "adamw", "lr": 1e-3},
             "scheduler": {"name": "plateau", "monitor": "train_loss", "warmup": warmup}}
    trainer = L.Trainer(max_epochs=3, **fast_trainer_kwargs)
    CASES["total"] += 1
    CASES["plateau/unlogged_monitor"] += 1
    with pytest.raises((ConfigError, MisconfigurationException)) as info:
        trainer.fit(Logged(optim, logged), make_regression_loader(n=16, batch_size=8))
    assert "train_loss" in str(info.value)


def test_plateau_monitor_logged_trains(fast_trainer_kwargs, make_regression_loader):
    optim = {"optimizer": {"name": "adamw", "lr": 1e-3},
             "scheduler": {"name": "plateau", "monitor": "train_loss", "patience": 0, "factor": 0.5}}
    trainer = L.Trainer(max_epochs=3, **fast_trainer_kwargs)
    trainer.fit(Logged(optim, "train_loss"), make_regression_loader(n=16, batch_size=8))
    assert trainer.global_step == 6


def test_zz_report_number_of_cases():
    """Runs last in this module: print how many mutated configs were tried (see with ``-s``)."""
    print(f"\nhypothesis bad-input cases: {CASES['total']} "
          f"(invalid {CASES['invalid']}, valid {CASES['valid']})")
    for kind, count in sorted(CASES.items()):
        if kind not in ("total", "invalid", "valid"):
            print(f"  {kind}: {count}")
    if CASES["total"]:
        assert CASES["invalid"] >= INVALID_EXAMPLES // 2
