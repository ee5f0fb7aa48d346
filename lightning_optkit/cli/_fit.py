"""``optkit fit``: train the built-in example, your own LightningModule, a LightningCLI config or a
``best_config.yaml`` of ``optkit tune``, logging to TensorBoard."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._internal.cli_args import UsageError, import_class, json_object, positive_int
from .._internal.imports import instantiate_objects
from ..config import ConfigError, load_config, parse_overrides
from ._common import add_config_args, build_user_model, check_example_or_model, config_source, construct, wrap

__all__ = ["add_parser"]

FIT_EPILOG = """\
examples:
  optkit fit --example digits
  optkit fit --example digits --set optimizer.lr=1e-3 --set scheduler.name=onecycle --max-epochs 5
  optkit fit configs/adamw_warmup_cosine.yaml --model mypkg.models.Net --data mypkg.data.DataModule \\
      --model-args '{"hidden": 256}' --data-args '{"batch_size": 64}' --max-epochs 20

Your model must take the optim block as a keyword argument `optim` (a dict) and use
lightning_optkit.OptimMixin (or call build_optimizers in its own configure_optimizers).
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``fit`` subcommand to ``sub`` (the ``optkit`` subparsers)."""
    fit = sub.add_parser(
        "fit", help="train the built-in example or your own model with an optim config",
        description=wrap("Train with an optim config: the built-in example (--example digits) or your own "
                         "LightningModule and LightningDataModule. Deterministic for a given --seed; logs "
                         "to TensorBoard, with the LR of every parameter group at every step."),
        epilog=FIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(fit)
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
    return fit


def _cmd_fit(args: argparse.Namespace) -> int:
    check_example_or_model(args)
    source = config_source(args)
    overrides = parse_overrides(args.overrides)
    if _lightningcli_file(source, args):
        return _fit_lightningcli(args, str(source), overrides)
    if not args.example and not args.model:
        from ..tuning import read_run

        if source is not None and read_run(source) is not None:  # a best_config.yaml of optkit tune: a whole run
            return cmd_fit_run(source, args, overrides)  # flags left unset keep the run's own values
        raise UsageError("give --example digits, or CONFIG with --model pkg.mod.Class --data pkg.mod.DataModule")
    args.seed = 0 if args.seed is None else args.seed
    args.devices = "1" if args.devices is None else args.devices

    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import TensorBoardLogger

    L.seed_everything(args.seed, workers=True, verbose=False)
    if args.example and args.data:
        raise UsageError("--data goes with --model; --example brings its own data (tune it with --data-args)")
    if args.example:
        from ..demo import get_example, make_example

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
        model = build_user_model(args, optim)
        data_cls = import_class(args.data, "--data", L.LightningDataModule)
        data = construct(data_cls, "--data-args",
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
    from ..config import read_yaml
    from ..lightningcli import is_lightningcli_config

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

    from ..lightningcli import LightningCLIConfig

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


def _devices(text: Any) -> Any:
    """``--devices`` as Lightning takes it: ``2`` -> 2, ``0,1`` -> [0, 1], ``auto`` stays a string.

    Example:
        >>> _devices("2"), _devices("0,1"), _devices("auto")
        (2, [0, 1], 'auto')
    """
    value = str(text).strip()
    if value.lstrip("-").isdigit():
        return int(value)
    if "," in value and all(p.strip().isdigit() for p in value.split(",") if p.strip()):
        return [int(p) for p in value.split(",") if p.strip()]
    return value


def cmd_fit_run(config: str, args: Any, overrides: Mapping[str, Any]) -> int:
    """``optkit fit BEST_CONFIG.yaml``: train the run, print the validation metrics (the ``fit`` command's path).

    ``--seed``, ``--max-epochs``, ``--accelerator``, ``--devices`` and ``--log-every-n-steps`` (``None``:
    not given) replace the run's own values. The ``fit`` command fills in ``--seed 0`` and ``--devices 1``
    when they are not given (for its other paths): those values count as not given here, so the run
    keeps its own seed and devices.
    """
    given = {key: getattr(args, key, None) for key in ("seed", "devices", "max_epochs", "accelerator",
                                                       "log_every_n_steps")}
    given = {k: v for k, v in given.items() if v is not None}  # flags the user typed
    trainer_overrides = {k: v for k, v in given.items() if k != "seed"}
    if "devices" in trainer_overrides:
        trainer_overrides["devices"] = _devices(trainer_overrides["devices"])
    from ..tuning import fit_run

    trainer = fit_run(config, overrides=overrides, log_dir=args.log_dir, trainer_overrides=trainer_overrides,
                      quiet=bool(getattr(args, "quiet", False)), seed=given.get("seed"))
    if trainer.interrupted:
        return 130
    if trainer.global_rank != 0:
        return 0
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
    for key in sorted(metrics, key=lambda k: (k != "val_acc", k)):
        print(f"{key}: {metrics[key]:.4f}")
    print(f"logs: {trainer.logger.log_dir}")
    return 0
