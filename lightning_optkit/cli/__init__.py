"""The ``optkit`` command.

Subcommands:

* ``optkit fit`` trains the built-in example (``--example digits``) or your own LightningModule
  (``--model pkg.mod.Class --data pkg.mod.DataModule``) with an ``optim:`` config, logging to
  TensorBoard.
* ``optkit schedule`` draws the learning rate of every parameter group over a run, stepping the
  real scheduler the library builds, and prints the peak, the end of the warm-up and the final LR.
* ``optkit lr-find`` runs an LR range test and prints every rule's suggestion
  (:mod:`lightning_optkit.lr_finder`).
* ``optkit tune`` runs an Optuna study over the ``optim:`` block (:mod:`lightning_optkit.tuning`).

Every configuration mistake is reported as one ``error: <message>`` line on stderr, exit status 2.

Layout: one module per command (:mod:`._fit`, :mod:`._schedule`; ``lr-find``, ``tune`` and
``diagnose`` live with their packages and are imported only when they run), the fit/schedule
argument helpers in :mod:`._common`, and the helpers every command shares in
:mod:`lightning_optkit._internal.cli_args`. The LR simulation behind ``optkit schedule`` is
:func:`lightning_optkit.schedules.simulate`.

Example:
    >>> main(["schedule", "--example", "digits", "--out", "/tmp/optkit_doctest_lr.png"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Collection, Sequence
from typing import Any

from .._internal.cli_args import UsageError
from ..config import ConfigError
from . import _fit, _schedule

__all__ = ["LRTrace", "UsageError", "build_parser", "main", "simulate"]


# Commands whose parser lives with their code: importing it imports the training stack (torch,
# Lightning, Optuna), so :func:`main` builds it only when that command runs (or shows its help).
_LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "lr-find": ("lightning_optkit.lr_finder._cli", "run an LR range test and print the suggested learning rate"),
    "tune": ("lightning_optkit.tuning._cli", "tune the optim block with Optuna (search space, pruning, best config YAML)"),
    "diagnose": ("lightning_optkit.diagnostics._cli",
                 "diagnose a model: suspect labels, sharpness, landscape, capacity and convergence"),
}


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``optkit`` argument parser (one subparser per command).

    ``commands`` names the subcommands of :data:`_LAZY_COMMANDS` to build in full (default: all);
    the others get a placeholder that only lists them in ``optkit --help``, so that ``--version``
    and ``--help`` import no torch.

    Example:
        >>> build_parser(commands=()).parse_args(["schedule", "--steps", "10"]).steps
        10
    """
    parser = argparse.ArgumentParser(
        prog="optkit",
        description="Declarative optimizers, schedules and losses for PyTorch Lightning: "
                    "train with an optim config, inspect its learning-rate schedule, find the LR "
                    "and tune the config with Optuna.",
        epilog="Run `optkit COMMAND --help` for the options of a command. "
               "Config mistakes exit with status 2 and one `error:` line naming the key.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _fit.add_parser(sub)
    _schedule.add_parser(sub)
    for command, (module, text) in _LAZY_COMMANDS.items():
        if commands is None or command in commands:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(command, help=text, add_help=False)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def _version() -> str:
    from .. import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``optkit`` command; returns the exit status (0 ok, 2 for config and usage errors).

    Example:
        >>> main(["--version"])  # doctest: +SKIP
        optkit 0.1.0
        0
    """
    argv = list(argv) if argv is not None else sys.argv[1:]
    parser = build_parser(commands=[c for c in (_command_of(argv),) if c is not None])
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse's own usage errors (status 2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except (ConfigError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def __getattr__(name: str) -> Any:
    """``LRTrace`` and ``simulate`` now live in :mod:`lightning_optkit.schedules` (imported on use: torch)."""
    if name in ("LRTrace", "simulate"):
        from .. import schedules

        return getattr(schedules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
