"""Search-space presets: a base ``optim:`` block and a ``search:`` over it, by name.

The same presets ship as ``configs/search_<name>.yaml`` in the repository (a test keeps the two
equal); the YAML files are what users copy and edit, these dicts are what ``--search NAME`` and
``--example digits`` use from an installed package.
"""

from __future__ import annotations

import copy
from typing import Any

from ..config import ConfigError, did_you_mean

__all__ = ["PRESETS", "search_preset"]

_ADAMW_BASE: dict[str, Any] = {
    "optimizer": {"name": "adamw", "lr": 3.0e-4, "weight_decay": 0.05},
    "no_weight_decay": "auto",
    "scheduler": {"name": "warmup_cosine", "warmup": "5%", "min_lr_ratio": 0.01},
    "loss": {"name": "cross_entropy"},
}

PRESETS: dict[str, dict[str, Any]] = {
    # The default of `optkit tune --example digits`: optimizer family, LR, weight decay, SGD's
    # momentum, the warm-up and label smoothing; about 30 trials find ~0.98 validation accuracy.
    "digits": {
        "optim": None,  # the demo's own preset (configs/digits.yaml), filled in by search_preset()
        "search": {
            "optimizer.name": {"choices": ["adamw", "sgd"]},
            "optimizer.lr": {"low": 3.0e-4, "high": 3.0e-1, "log": True},
            "optimizer.weight_decay": {"low": 1.0e-5, "high": 1.0e-1, "log": True},
            "optimizer.momentum": {"low": 0.8, "high": 0.98, "when": {"optimizer.name": "sgd"}},
            "optimizer.nesterov": {"choices": [True, False], "when": {"optimizer.name": "sgd"}},
            "scheduler.warmup": {"choices": ["0%", "5%", "10%"]},
            "loss.label_smoothing": {"low": 0.0, "high": 0.2},
        },
    },
    # AdamW with warm-up + cosine: the LR first, then decay, the warm-up, the floor and beta2.
    "adamw": {
        "optim": _ADAMW_BASE,
        "search": {
            "optimizer.lr": {"low": 1.0e-5, "high": 1.0e-2, "log": True},
            "optimizer.weight_decay": {"low": 1.0e-4, "high": 0.3, "log": True},
            "optimizer.betas": {"choices": [[0.9, 0.999], [0.9, 0.98], [0.9, 0.95]]},
            "scheduler.warmup": {"choices": ["0%", "2%", "5%", "10%"]},
            "scheduler.min_lr_ratio": {"choices": [0.0, 0.01, 0.1]},
        },
    },
    # Which optimizer: AdamW, RAdam or SGD (with its momentum and Nesterov), each with its own LR.
    "optimizers": {
        "optim": _ADAMW_BASE,
        "search": {
            "optimizer.name": {"choices": ["adamw", "radam", "sgd"]},
            "optimizer.lr": {"low": 1.0e-5, "high": 1.0, "log": True},
            "optimizer.weight_decay": {"low": 1.0e-6, "high": 0.1, "log": True},
            "optimizer.decoupled_weight_decay": {"value": True, "when": {"optimizer.name": "radam"}},
            "optimizer.momentum": {"low": 0.8, "high": 0.99, "when": {"optimizer.name": "sgd"}},
            "optimizer.nesterov": {"choices": [True, False], "when": {"optimizer.name": "sgd"}},
        },
    },
    # The shape of the schedule at a fixed optimizer: decay curve, warm-up and floor.
    "schedules": {
        "optim": _ADAMW_BASE,
        "search": {
            "scheduler.name": {"choices": ["warmup_cosine", "linear", "wsd", "inverse_sqrt"]},
            "scheduler.warmup": {"choices": ["0%", "2%", "5%", "10%"]},
            "scheduler.min_lr_ratio": {"choices": [0.0, 0.01, 0.1]},
            "optimizer.lr": {"low": 1.0e-5, "high": 1.0e-2, "log": True},
        },
    },
    # The Trainer and data knobs around the LR (model./data./trainer. keys, checked against the
    # classes' signatures): gradient clipping, gradient accumulation and the batch size, the LR
    # following the effective batch size by the square-root rule (relative to the datamodule's own
    # batch size and accumulate_grad_batches=1). Add it to another preset: --search adamw+training.
    "training": {
        "optim": _ADAMW_BASE,
        "search": {
            "optimizer.lr": {"low": 1.0e-5, "high": 1.0e-2, "log": True},
            "trainer.gradient_clip_val": {"choices": [0.0, 0.5, 1.0, 5.0]},
            "trainer.accumulate_grad_batches": {"choices": [1, 2, 4], "lr_scaling": "sqrt"},
            "data.batch_size": {"choices": [16, 32, 64, 128], "lr_scaling": "sqrt"},
        },
    },
    # Regularization: the model's dropout (a `dropout` argument of its __init__), weight decay and
    # label smoothing, at a searched LR.
    "regularization": {
        "optim": _ADAMW_BASE,
        "search": {
            "optimizer.lr": {"low": 1.0e-5, "high": 1.0e-2, "log": True},
            "optimizer.weight_decay": {"low": 1.0e-4, "high": 0.3, "log": True},
            "model.dropout": {"low": 0.0, "high": 0.5},
            "loss.label_smoothing": {"low": 0.0, "high": 0.2},
        },
    },
    # Fine-tuning a pretrained backbone: the head's LR, the backbone's share of it, layer decay.
    "finetune": {
        "optim": {
            "optimizer": {"name": "adamw", "lr": 1.0e-3, "weight_decay": 0.05},
            "param_groups": [{"params": "backbone.*", "name": "backbone", "lr_scale": 0.5}],
            "layer_decay": 0.8,
            "scheduler": {"name": "warmup_cosine", "warmup": "10%", "min_lr_ratio": 0.0},
            "loss": {"name": "cross_entropy", "label_smoothing": 0.1},
        },
        "search": {
            "optimizer.lr": {"low": 1.0e-5, "high": 3.0e-3, "log": True},
            "param_groups.0.lr_scale": {"low": 0.01, "high": 1.0, "log": True},
            "layer_decay": {"low": 0.5, "high": 1.0},
            "optimizer.weight_decay": {"low": 1.0e-3, "high": 0.1, "log": True},
            "scheduler.warmup": {"choices": ["5%", "10%", "20%"]},
        },
    },
}


def search_preset(name: str) -> dict[str, Any]:
    """A preset as ``{"optim": base config, "search": space}`` (a fresh copy).

    ``"a+b"`` joins presets: the search keys of all (for a key both have, the first preset's spec:
    ``digits+training`` keeps the digits LR range), the base optim block of the first.

    Example:
        >>> sorted(search_preset("adamw")["search"])[:2]
        ['optimizer.betas', 'optimizer.lr']
        >>> "data.batch_size" in search_preset("digits+training")["search"]
        True
    """
    if "+" in str(name):
        parts = [search_preset(part) for part in str(name).split("+")]
        search: dict[str, Any] = {}
        for part in parts:
            for key, spec in part["search"].items():
                search.setdefault(key, spec)
        return {"optim": parts[0]["optim"], "search": search}
    key = str(name).strip().lower()
    if key not in PRESETS:
        raise ConfigError("search", name, "a preset: " + ", ".join(sorted(PRESETS)), suggestions=did_you_mean(name, PRESETS))
    preset = copy.deepcopy(PRESETS[key])
    if preset["optim"] is None:
        from ..demo import digits_config

        preset["optim"] = digits_config()
    return preset
