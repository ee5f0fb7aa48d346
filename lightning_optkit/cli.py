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

Example:
    >>> main(["schedule", "--example", "digits", "--out", "/tmp/optkit_doctest_lr.png"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import io
import shutil
import sys
import textwrap
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._cli_args import UsageError, import_class, instantiate_objects, json_object, positive_int
from ._io import atomic_write_bytes
from .config import ConfigError, OptimBlock, OptimConfig, TrainingLength, load_config, parse_overrides

__all__ = ["LRTrace", "UsageError", "build_parser", "main", "simulate"]

PLATEAU_METRIC = 1.0


# --------------------------------------------------------------------------------------------------
# Parser


_FIT_EPILOG = """\
examples:
  optkit fit --example digits
  optkit fit --example digits --set optimizer.lr=1e-3 --set scheduler.name=onecycle --max-epochs 5
  optkit fit configs/adamw_warmup_cosine.yaml --model mypkg.models.Net --data mypkg.data.DataModule \\
      --model-args '{"hidden": 256}' --data-args '{"batch_size": 64}' --max-epochs 20

Your model must take the optim block as a keyword argument `optim` (a dict) and use
lightning_optkit.OptimMixin (or call build_optimizers in its own configure_optimizers).
"""

_SCHEDULE_EPILOG = """\
examples:
  optkit schedule --example digits                       # the demo preset, over the demo's run
  optkit schedule configs/sgd_onecycle.yaml --steps 1000 --out onecycle.png
  optkit schedule configs/finetune_layer_decay.yaml --epochs 10 --steps-per-epoch 100 \\
      --model mypkg.models.Net --model-args '{"depth": 12}'

Without a model, the plot has the main optimizer LR and one line per param_groups rule (its lr or
lr_scale); layer_decay needs the model's layers. A plateau schedule is fed a constant metric (it
never improves), so its curve shows the fastest decay the config allows.
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
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

    fit = sub.add_parser(
        "fit", help="train the built-in example or your own model with an optim config",
        description=_wrap("Train with an optim config: the built-in example (--example digits) or your own "
                          "LightningModule and LightningDataModule. Deterministic for a given --seed; logs "
                          "to TensorBoard, with the LR of every parameter group at every step."),
        epilog=_FIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(fit)
    fit.add_argument("--data", metavar="pkg.mod.DataModule", help="your LightningDataModule class (with --model)")
    fit.add_argument("--data-args", metavar="JSON", default=None,
                     help="keyword arguments for the datamodule, as a JSON object")
    fit.add_argument("--max-epochs", type=positive_int, default=None, metavar="N",
                     help="epochs to train (default: the example's, 10 for your own model)")
    fit.add_argument("--seed", type=int, default=None, metavar="S",
                     help="random seed (default: 0, or a LightningCLI config's seed_everything)")
    fit.add_argument("--log-dir", default="optkit_runs", metavar="DIR",
                     help="TensorBoard log folder (default: optkit_runs/)")
    fit.add_argument("--accelerator", default=None, metavar="NAME",
                     help="cpu, gpu, mps, auto... (default: cpu for --example, auto for your model)")
    fit.add_argument("--devices", default=None, metavar="N",
                     help="devices to use (default: 1, or a LightningCLI config's trainer.devices)")
    fit.add_argument("--cli", metavar="pkg.mod:cli_main",
                     help="with a LightningCLI CONFIG (as --print_config writes it): your project's LightningCLI, "
                          "its cli_main function or LightningCLI subclass; its parser builds the run")
    fit.add_argument("--log-every-n-steps", type=positive_int, default=None, metavar="N",
                     help="how often step metrics (the LR) are logged (default: 1 for --example, else 50)")
    fit.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no model summary")
    fit.set_defaults(func=_cmd_fit)

    sched = sub.add_parser(
        "schedule", help="plot the LR of every parameter group over a run",
        description=_wrap("Build the optimizer and scheduler of an optim config, step the scheduler through "
                          "the whole run and plot the learning rate of every parameter group. Prints the "
                          "peak LR, the step where the warm-up ends and the final LR of each group."),
        epilog=_SCHEDULE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(sched)
    sched.add_argument("--steps", type=positive_int, default=None, metavar="N",
                       help="optimizer steps of the run (as Trainer(max_steps=N))")
    sched.add_argument("--epochs", type=positive_int, default=None, metavar="E",
                       help="epochs of the run (needs --steps-per-epoch unless --example gives it)")
    sched.add_argument("--steps-per-epoch", type=positive_int, default=None, metavar="S",
                       help="optimizer steps per epoch (batches / gradient accumulation)")
    sched.add_argument("--data-args", metavar="JSON", default=None,
                       help="datamodule arguments of --example (e.g. '{\"batch_size\": 32}'): they set the "
                            "steps per epoch")
    sched.add_argument("--out", default="lr.png", metavar="PNG", help="where to write the plot (default: lr.png)")
    sched.add_argument("--log-y", action="store_true", help="logarithmic LR axis")
    sched.set_defaults(func=_cmd_schedule)

    for command, (module, text) in _LAZY_COMMANDS.items():
        if commands is None or command in commands:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(command, help=text, add_help=False)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=min(shutil.get_terminal_size().columns - 2, 100))




def _version() -> str:
    from . import __version__

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


# --------------------------------------------------------------------------------------------------
# Shared helpers



def _config_source(args: argparse.Namespace) -> str | None:
    if args.config and args.config_opt and args.config != args.config_opt:
        raise UsageError(f"two configs given ({args.config} and --config {args.config_opt}); give one")
    return args.config or args.config_opt






def _check_takes_optim(cls: type) -> None:
    params = inspect.signature(cls.__init__).parameters
    if "optim" not in params and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise UsageError(f"--model: {cls.__qualname__}.__init__ has no `optim` argument; add `optim: dict` "
                         "(and call self.save_hyperparameters()) so the config can reach OptimMixin")


def _construct(cls: type, flag: str, **kwargs: Any) -> Any:
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UsageError(f"{flag}: cannot build {cls.__qualname__} ({exc})") from None


def _build_user_model(args: argparse.Namespace, optim: dict[str, Any]) -> Any:
    import lightning as L

    model_cls = import_class(args.model, "--model", L.LightningModule)
    _check_takes_optim(model_cls)
    model_args = json_object(args.model_args, "--model-args")
    if "optim" in model_args:
        raise UsageError("--model-args: leave `optim` out; it comes from CONFIG and --set")
    return _construct(model_cls, "--model-args", optim=optim, **instantiate_objects(model_args, "--model-args"))


def _check_example_or_model(args: argparse.Namespace) -> None:
    if args.example and args.model:
        raise UsageError("give --example or --model, not both")


# --------------------------------------------------------------------------------------------------
# optkit fit


def _cmd_fit(args: argparse.Namespace) -> int:
    _check_example_or_model(args)
    source = _config_source(args)
    overrides = parse_overrides(args.overrides)
    if _lightningcli_file(source, args):
        return _fit_lightningcli(args, str(source), overrides)
    args.seed = 0 if args.seed is None else args.seed
    args.devices = "1" if args.devices is None else args.devices
    if not args.example and not args.model:
        from .tuning._refit import cmd_fit_run, read_run

        if source is not None and read_run(source) is not None:  # a best_config.yaml of optkit tune: a whole run
            return cmd_fit_run(source, args, overrides)
        raise UsageError("give --example digits, or CONFIG with --model pkg.mod.Class --data pkg.mod.DataModule")

    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import TensorBoardLogger

    L.seed_everything(args.seed, workers=True, verbose=False)
    if args.example and args.data:
        raise UsageError("--data goes with --model; --example brings its own data (tune it with --data-args)")
    if args.example:
        from .demo import get_example, make_example

        info = get_example(args.example)
        model_args = json_object(args.model_args, "--model-args")
        data_args = json_object(args.data_args, "--data-args")
        try:
            model, data = make_example(info.name, source, overrides=overrides, model_args=model_args,
                                       data_args=data_args)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--model-args/--data-args of --example {info.name}: {exc}") from None
        name, max_epochs = info.name, args.max_epochs or info.max_epochs
        accelerator = args.accelerator or "cpu"
        log_every = args.log_every_n_steps or 1
    else:
        if source is None:
            raise UsageError("--model needs CONFIG (a YAML file with the optim block)")
        if not args.data:
            raise UsageError("--model needs --data pkg.mod.DataModule")
        optim = load_config(source, overrides).to_dict()
        model = _build_user_model(args, optim)
        data_cls = import_class(args.data, "--data", L.LightningDataModule)
        data = _construct(data_cls, "--data-args",
                          **instantiate_objects(json_object(args.data_args, "--data-args"), "--data-args"))
        name, max_epochs = type(model).__name__, args.max_epochs or 10
        accelerator = args.accelerator or "auto"
        log_every = args.log_every_n_steps or 50

    logger = TensorBoardLogger(save_dir=args.log_dir, name=name, default_hp_metric=False)
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=_devices(args.devices),
        logger=logger,
        callbacks=[LearningRateMonitor(logging_interval="step")],
        deterministic=True,
        log_every_n_steps=log_every,
        enable_progress_bar=not args.quiet,
        enable_model_summary=not args.quiet,
    )
    trainer.fit(model, datamodule=data)
    return _report_fit(trainer, logger, args.log_dir)


def _report_fit(trainer: Any, logger: Any, log_dir: str) -> int:
    """Print the final validation metrics, the checkpoint and where the logs are; the exit status."""
    if trainer.interrupted:
        print("training interrupted", file=sys.stderr)
        return 130
    if trainer.global_rank != 0:
        return 0
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
    if not metrics:
        print("no validation metrics were logged (does the model have a validation_step?)")
    for key in sorted(metrics, key=lambda k: (k != "val_acc", k)):
        print(f"{key}: {metrics[key]:.4f}")
    ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or getattr(
        trainer.checkpoint_callback, "best_model_path", "")
    if ckpt:
        print(f"checkpoint: {ckpt}")
    print(f"logs: {logger.log_dir}")
    print(f"view them with: tensorboard --logdir {log_dir}")
    return 0


def _lightningcli_file(source: str | None, args: argparse.Namespace) -> bool:
    """Whether CONFIG is a LightningCLI config (``model:`` section) rather than an optim block."""
    from ._lightningcli import is_lightningcli_config
    from .config import read_yaml

    if source is None or args.example or not Path(source).is_file():
        if getattr(args, "cli", None):
            raise UsageError("--cli needs CONFIG: the LightningCLI config your script prints with --print_config")
        return False
    if is_lightningcli_config(read_yaml(source)):
        return True
    if getattr(args, "cli", None):
        raise UsageError(f"--cli goes with a LightningCLI config; {source} is an optim block")
    return False


def _fit_lightningcli(args: argparse.Namespace, source: str, overrides: dict[str, Any]) -> int:
    """``optkit fit CONFIG`` for a LightningCLI config: the run the project's CLI would build, our logger."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import TensorBoardLogger

    from ._lightningcli import LightningCLIConfig

    for flag, value in (("--model-args", args.model_args), ("--data-args", args.data_args)):
        if value:
            raise UsageError(f"{flag}: put the arguments in the model:/data: sections of {source}")
    if args.cli and (args.model or args.data):
        raise UsageError("give --cli or --model/--data, not both: the CLI knows its classes")
    cfg = LightningCLIConfig(source, cli=args.cli, model=args.model, data=args.data)
    optim = load_config(cfg.base_optim(), overrides).to_dict()
    seed = args.seed if args.seed is not None else cfg.seed()
    if seed is not None:
        L.seed_everything(seed, workers=True, verbose=False)
    run = cfg.instantiate(optim)
    kwargs = dict(run.trainer_kwargs)
    for key, value in (("max_epochs", args.max_epochs), ("accelerator", args.accelerator),
                       ("devices", _devices(args.devices) if args.devices else None),
                       ("log_every_n_steps", args.log_every_n_steps)):
        if value is not None:
            kwargs[key] = value
    if kwargs.get("max_epochs") is None and kwargs.get("max_steps") in (None, -1):
        kwargs["max_epochs"] = 10
    if args.quiet:
        kwargs.update(enable_progress_bar=False, enable_model_summary=False)
    if (cfg.raw.get("trainer") or {}).get("logger") not in (None, False):
        print(f"note: trainer.logger of {source} is replaced by TensorBoard under {args.log_dir}")
    logger = TensorBoardLogger(save_dir=args.log_dir, name=cfg.name, default_hp_metric=False)
    trainer = L.Trainer(**kwargs, logger=logger, callbacks=[*run.callbacks, LearningRateMonitor(logging_interval="step")])
    trainer.fit(run.model, datamodule=run.data, ckpt_path=run.ckpt_path)
    return _report_fit(trainer, logger, args.log_dir)


def _devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


# --------------------------------------------------------------------------------------------------
# optkit schedule


@dataclass
class LRTrace:
    """The LR of one parameter group at every optimizer step (what :func:`simulate` returns).

    ``peak_step`` is the first step at the peak: where a warm-up ends (0 when there is none).

    Example:
        >>> t = LRTrace("lr-SGD", [0.0, 0.05, 0.1, 0.08])
        >>> t.peak, t.peak_step, t.lrs[-1]
        (0.1, 2, 0.08)
    """

    label: str
    lrs: list[float] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return max(self.lrs)

    @property
    def peak_step(self) -> int:
        top = self.peak
        return next(i for i, v in enumerate(self.lrs) if v >= top * (1 - 1e-9))


def _schedule_length(args: argparse.Namespace, example: Any) -> TrainingLength:
    spe, epochs, steps = args.steps_per_epoch, args.epochs, args.steps
    if example is not None:
        if spe is None:
            spe = _example_steps_per_epoch(example, args)
        if epochs is None and steps is None:
            epochs = example.max_epochs
    if epochs is not None and spe is None:
        raise UsageError("--epochs needs --steps-per-epoch S (optimizer steps in one epoch)")
    if steps is None:
        if epochs is None:
            raise UsageError("give the length of the run: --steps N, or --epochs E with --steps-per-epoch S")
        steps = epochs * spe
    elif epochs is not None:
        steps = min(steps, epochs * spe)  # as Trainer(max_epochs=E, max_steps=N): whichever comes first
    if spe is None:
        return TrainingLength(steps, ())
    per = [spe] * (steps // spe) + ([steps % spe] if steps % spe else [])
    return TrainingLength(steps, tuple(per))


def _example_steps_per_epoch(example: Any, args: argparse.Namespace) -> int:
    kwargs = json_object(args.data_args, "--data-args")
    try:
        data = example.data_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--data-args of --example {example.name}: {exc}") from None
    data.setup("fit")
    return len(data.train_dataloader())


def _check_epoch_intervals(cfg: OptimConfig, length: TrainingLength) -> None:
    from .schedules import lookup

    if length.steps_per_epoch:
        return
    for prefix, block in cfg.blocks():
        sched = block.scheduler
        if sched is None:
            continue
        info = lookup(sched.name)
        interval = sched.interval or (info.interval if info is not None else "step")
        if interval == "epoch":
            raise UsageError(f"{prefix}scheduler steps once per epoch (interval: epoch): give --epochs E "
                             "--steps-per-epoch S instead of --steps alone")


def _is_plateau(block: OptimBlock) -> bool:
    from .schedules import lookup

    sched = block.scheduler
    if sched is None:
        return False
    info = lookup(sched.name)
    if info is not None:
        return info.name == "plateau"
    return "plateau" in sched.name.lower()


def _dummy_optimizers(cfg: OptimConfig, length: TrainingLength) -> tuple[list[Any], list[dict[str, Any]], list[str]]:
    """One optimizer per block with a one-parameter group per param_groups rule (no model needed)."""
    import torch

    from .optim import resolve_optimizer
    from .schedules import build_scheduler

    optimizers: list[Any] = []
    schedulers: list[dict[str, Any]] = []
    notes: list[str] = []
    blocks = cfg.blocks()
    for i, (prefix, block) in enumerate(blocks):
        info = resolve_optimizer(block.optimizer.name, f"{prefix}optimizer.name")
        base = block.optimizer.lr
        groups: list[dict[str, Any]] = [{"params": [torch.nn.Parameter(torch.zeros(1))], "name": "default", "lr": base}]
        for j, rule in enumerate(block.param_groups):
            if rule.frozen:
                continue
            lr = rule.lr if rule.lr is not None else base * (rule.lr_scale if rule.lr_scale is not None else 1.0)
            globs = rule.params if isinstance(rule.params, str) else ",".join(rule.params)
            groups.append({"params": [torch.nn.Parameter(torch.zeros(1))], **rule.kwargs, "lr": lr,
                           "name": rule.name or f"param_groups.{j} ({globs})"})
        if info.single_group and len(groups) > 1:
            groups = groups[:1]
        kwargs = {**info.defaults, **block.optimizer.kwargs}
        try:
            optimizer = info.cls(groups, lr=base, **kwargs)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"{prefix}optimizer", block.optimizer.model_dump(),
                              f"arguments {info.cls.__name__} accepts ({exc})") from None
        label = f"lr-{type(optimizer).__name__}" + (f"-{i}" if len(blocks) > 1 else "")
        optimizer.optkit_label = label  # type: ignore[attr-defined]
        optimizers.append(optimizer)
        if block.scheduler is not None:
            schedulers.extend(build_scheduler(block, optimizer, length, prefix, name=label))
        if block.layer_decay is not None:
            notes.append(f"{prefix}layer_decay={block.layer_decay:g} is not drawn: it depends on the model's "
                         "layers (give --model or --example)")
    return optimizers, schedulers, notes


def _model_optimizers(model: Any, cfg: OptimConfig, length: TrainingLength) -> tuple[list[Any], list[dict[str, Any]]]:
    import torch

    from .mixin import build_optimizers

    out = build_optimizers(model, cfg, length=length)
    if isinstance(out, torch.optim.Optimizer):
        optimizers, schedulers = [out], []
    else:
        optimizers, schedulers = list(out[0]), list(out[1])
    for i, optimizer in enumerate(optimizers):
        optimizer.optkit_label = f"lr-{type(optimizer).__name__}" + (f"-{i}" if len(optimizers) > 1 else "")
    return optimizers, schedulers


def _step(entry: dict[str, Any]) -> None:
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    sched = entry["scheduler"]
    if entry.get("reduce_on_plateau") or isinstance(sched, ReduceLROnPlateau):
        sched.step(PLATEAU_METRIC)
    else:
        sched.step()


def simulate(optimizers: Sequence[Any], schedulers: Sequence[dict[str, Any]], length: TrainingLength) -> list[LRTrace]:
    """Step the schedulers as Lightning does and record every group's LR at each optimizer step.

    Per optimizer step: the LR in use is recorded, then the ``interval: step`` schedulers step; at the
    end of each epoch the ``interval: epoch`` ones step (a plateau scheduler is fed a constant metric).

    Example:
        >>> import torch
        >>> from lightning_optkit.config import load_config
        >>> from lightning_optkit.schedules import build_scheduler
        >>> cfg = load_config({"optimizer": {"name": "sgd", "lr": 0.1},
        ...                    "scheduler": {"name": "warmup_cosine", "warmup": 2}})
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> length = TrainingLength(6, (3, 3))
        >>> [round(v, 3) for v in simulate([opt], build_scheduler(cfg.blocks()[0][1], opt, length), length)[0].lrs]
        [0.0, 0.05, 0.1, 0.075, 0.025, 0.0]
    """
    traces: list[tuple[Any, dict[str, Any], LRTrace]] = []
    for optimizer in optimizers:
        groups = optimizer.param_groups
        label = getattr(optimizer, "optkit_label", f"lr-{type(optimizer).__name__}")
        for k, group in enumerate(groups):
            name = group.get("name") or (f"pg{k + 1}" if len(groups) > 1 else "")
            traces.append((optimizer, group, LRTrace(f"{label}/{name}" if name else label)))
    by_interval: dict[str, list[dict[str, Any]]] = {"step": [], "epoch": []}
    for entry in schedulers:
        by_interval[entry.get("interval", "epoch")].append(entry)
    epochs = length.steps_per_epoch or (length.total_steps,)
    step = 0
    with warnings.catch_warnings():
        # no optimizer.step() here: nothing is trained, so torch's order check does not apply
        warnings.filterwarnings("ignore", message=r".*lr_scheduler\.step\(\)` before `optimizer\.step\(\)")
        for epoch, steps in enumerate(epochs):
            for batch in range(steps):
                if step >= length.total_steps:
                    break
                for _opt, group, trace in traces:
                    trace.lrs.append(float(group["lr"]))
                for entry in by_interval["step"]:
                    if (batch + 1) % int(entry.get("frequency", 1) or 1) == 0:
                        _step(entry)
                step += 1
            for entry in by_interval["epoch"]:
                if (epoch + 1) % int(entry.get("frequency", 1) or 1) == 0:
                    _step(entry)
    return [t for _o, _g, t in traces]


def _describe_length(length: TrainingLength) -> str:
    text = f"{length.total_steps} optimizer steps"
    per = length.steps_per_epoch
    if per:
        if len(set(per)) == 1:
            text += f" = {len(per)} epochs x {per[0]} steps"
        else:
            text += f" over {len(per)} epochs"
    return text


def _fmt(value: float) -> str:
    return f"{value:.3e}"


def _plot(traces: Sequence[LRTrace], length: TrainingLength, title: str, out: Path, log_y: bool) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5), layout="constrained")  # no pyplot: the caller's backend is left alone
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    steps = range(length.total_steps)
    styles = ("-", "--", "-.", ":")  # groups often share a curve: keep every line visible
    for i, trace in enumerate(traces):
        ax.plot(steps, trace.lrs, label=trace.label, linewidth=1.6, linestyle=styles[i % len(styles)])
    ends = sorted({t.peak_step for t in traces if t.peak_step > 0})
    for i, end in enumerate(ends):
        ax.axvline(end, color="0.5", linestyle="--", linewidth=0.9, label="end of warm-up" if i == 0 else None)
    per = length.steps_per_epoch
    if per and 1 < len(per) <= 60:
        for boundary in _cumsum(per)[:-1]:
            ax.axvline(boundary, color="0.9", linewidth=0.6, zorder=0)
    ax.set_xlabel("optimizer step" + (" (faint lines: epochs)" if per and 1 < len(per) <= 60 else ""))
    ax.set_ylabel("learning rate")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlim(0, max(length.total_steps - 1, 1))
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buffer.getvalue())


def _cumsum(values: Sequence[int]) -> list[int]:
    out, total = [], 0
    for v in values:
        total += v
        out.append(total)
    return out


def _cmd_schedule(args: argparse.Namespace) -> int:
    _check_example_or_model(args)
    source = _config_source(args)
    overrides = parse_overrides(args.overrides)
    example = None
    if args.example:
        from .demo import get_example

        example = get_example(args.example)
        if source is None:
            source = str(example.config_path())
    if source is None:
        raise UsageError("give CONFIG (a YAML file with the optim block) or --example digits")
    cfg = load_config(source, overrides)
    length = _schedule_length(args, example)
    _check_epoch_intervals(cfg, length)

    notes: list[str] = []
    if example is not None:
        from .demo import make_example

        model, _data = make_example(example.name, cfg, model_args=json_object(args.model_args, "--model-args"))
        optimizers, schedulers = _model_optimizers(model, cfg, length)
    elif args.model:
        model = _build_user_model(args, cfg.to_dict())
        optimizers, schedulers = _model_optimizers(model, cfg, length)
    else:
        optimizers, schedulers, notes = _dummy_optimizers(cfg, length)
    traces = simulate(optimizers, schedulers, length)

    names = []
    for prefix, block in cfg.blocks():
        sched = block.scheduler
        names.append(f"{prefix}{sched.name if sched is not None else 'no scheduler (constant LR)'}")
    if any(_is_plateau(b) for _p, b in cfg.blocks()):
        notes.append(f"plateau: fed a constant metric ({PLATEAU_METRIC:g}, never improving) at every epoch end, "
                     "so the curve shows the fastest decay this config allows; a real run cuts the LR only "
                     "when the monitored metric stalls")
    title = f"{', '.join(names)}: {_describe_length(length)}"
    if _config_source(args) is not None:
        title = f"{Path(str(source)).name}: {title}"
    elif example is not None:
        title = f"--example {example.name}: {title}"

    print(f"schedule: {title}")
    width = max(len("group"), *(len(t.label) for t in traces))
    print(f"{'group':<{width}}  {'peak LR':>10}  {'warm-up ends':>14}  {'final LR':>10}")
    for t in traces:
        end = f"step {t.peak_step}" if t.peak_step > 0 else "none"
        print(f"{t.label:<{width}}  {_fmt(t.peak):>10}  {end:>14}  {_fmt(t.lrs[-1]):>10}")
    for note in notes:
        print(f"note: {note}")
    out = Path(args.out)
    plot_title = title if not any(_is_plateau(b) for _p, b in cfg.blocks()) else title + "\n(plateau fed a constant metric)"
    _plot(traces, length, plot_title, out, args.log_y)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
