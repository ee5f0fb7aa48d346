"""Argument helpers shared by ``optkit fit`` and ``optkit schedule``: the config arguments, the
``--model`` class built with the optim block, and text wrapping for help.

The helpers every command shares (JSON objects, dotted imports, number types) live in
:mod:`lightning_optkit._internal.cli_args`.
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import textwrap
from typing import Any

from .._internal.cli_args import UsageError, import_class, json_object
from .._internal.imports import instantiate_objects


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help="YAML file with the optim block (default with --example: the example's preset)")
    p.add_argument("--config", dest="config_opt", metavar="PATH", help="the same as the positional CONFIG")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key by its dotted path, e.g. --set optimizer.lr=1e-3 "
                        "--set param_groups.0.lr_scale=0.2 (repeatable; values are YAML)")
    p.add_argument("--example", metavar="NAME", help="a built-in example: digits")
    p.add_argument("--model", metavar="pkg.mod.Class",
                   help="your LightningModule class (it must accept optim=, a dict)")
    p.add_argument("--model-args", metavar="JSON", default=None,
                   help="more keyword arguments for the model, as a JSON object")


# Commands whose parser lives with their code: importing it imports the training stack (torch,
# Lightning, Optuna), so :func:`main` builds it only when that command runs (or shows its help).
_LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "lr-find": ("lightning_optkit.lr_finder._cli", "run an LR range test and print the suggested learning rate"),
    "tune": ("lightning_optkit.tuning._cli", "tune the optim block with Optuna (search space, pruning, best config YAML)"),
    "diagnose": ("lightning_optkit.diagnostics._cli",
                 "diagnose a model: suspect labels, sharpness, landscape, capacity and convergence"),
}


def wrap(text: str) -> str:
    return textwrap.fill(text, width=min(shutil.get_terminal_size().columns - 2, 100))



def config_source(args: argparse.Namespace) -> str | None:
    if args.config and args.config_opt and args.config != args.config_opt:
        raise UsageError(f"two configs given ({args.config} and --config {args.config_opt}); give one")
    return args.config or args.config_opt

def _check_takes_optim(cls: type) -> None:
    params = inspect.signature(cls.__init__).parameters
    if "optim" not in params and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise UsageError(f"--model: {cls.__qualname__}.__init__ has no `optim` argument; add `optim: dict` "
                         "(and call self.save_hyperparameters()) so the config can reach OptimMixin")

def construct(cls: type, flag: str, **kwargs: Any) -> Any:
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UsageError(f"{flag}: cannot build {cls.__qualname__} ({exc})") from None

def build_user_model(args: argparse.Namespace, optim: dict[str, Any]) -> Any:
    import lightning as L

    model_cls = import_class(args.model, "--model", L.LightningModule)
    _check_takes_optim(model_cls)
    model_args = json_object(args.model_args, "--model-args")
    if "optim" in model_args:
        raise UsageError("--model-args: leave `optim` out; it comes from CONFIG and --set")
    return construct(model_cls, "--model-args", optim=optim, **instantiate_objects(model_args, "--model-args"))

def check_example_or_model(args: argparse.Namespace) -> None:
    if args.example and args.model:
        raise UsageError("give --example or --model, not both")

