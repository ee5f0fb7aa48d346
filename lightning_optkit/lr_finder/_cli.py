"""``optkit lr-find``: run an LR range test from the command line.

``add_parser(subparsers)`` registers the subcommand; ``run(args)`` executes it and returns the exit
status. Configuration mistakes raise :class:`~lightning_optkit.config.ConfigError` (the ``optkit``
entry point prints them as one ``error:`` line, status 2).

Examples::

    optkit lr-find --example digits
    optkit lr-find --example digits --set scheduler.name=onecycle --num-steps 80 --out lr_find.png
    optkit lr-find configs/adamw_warmup_cosine.yaml --model mypkg.models.Net --data mypkg.data.DataModule \\
        --model-args '{"hidden": 256}' --max-epochs 20
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from .._internal.cli_args import import_class, json_object, positive_float, positive_int
from .._internal.imports import instantiate_objects
from .._internal.plots import quiet_font_fallbacks
from ..config import ConfigError, load_config, parse_overrides
from ._rules import DEFAULT_RULE, RULES

__all__ = ["add_parser", "run"]

_EPILOG = """\
examples:
  optkit lr-find --example digits
  optkit lr-find --example digits --set scheduler.name=onecycle --out onecycle_lr.png
  optkit lr-find config.yaml --model mypkg.models.Net --data mypkg.data.DataModule --max-epochs 20

The sweep runs on the training data in a real Lightning Trainer and restores the model afterwards.
It prints every rule's suggestion and the LR to configure as optimizer.lr (for a schedule with a
peak, the peak whose mean LR equals the suggestion), writes the plot as PNG and to TensorBoard.
"""






def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``lr-find`` on an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "lr-find", help="run an LR range test and print the suggested learning rate",
        description="Sweep the learning rate over a short run on the training data (the model is restored "
                    "afterwards), print every rule's suggestion and the LR to configure, and plot the curve.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help="YAML file with the optim block (default with --example: the example's preset)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key by its dotted path (repeatable), e.g. --set scheduler.name=onecycle")
    p.add_argument("--example", metavar="NAME", help="a built-in example: digits")
    p.add_argument("--cli", metavar="pkg.mod:cli_main",
                   help="with a LightningCLI CONFIG (as --print_config writes it): your project's LightningCLI, its "
                        "cli_main function or LightningCLI subclass; its parser builds the model, data and callbacks")
    p.add_argument("--model", metavar="pkg.mod.Class", help="your LightningModule class (it must accept optim=)")
    p.add_argument("--model-args", metavar="JSON", default=None, help="more keyword arguments of the model (JSON)")
    p.add_argument("--data", metavar="pkg.mod.DataModule", help="your LightningDataModule class (with --model)")
    p.add_argument("--data-args", metavar="JSON", default=None, help="keyword arguments of the datamodule (JSON)")
    p.add_argument("--min-lr", type=positive_float, default=1e-7, metavar="LR", help="first LR (default 1e-7)")
    p.add_argument("--max-lr", type=positive_float, default=10.0, metavar="LR", help="last LR (default 10)")
    p.add_argument("--num-steps", type=positive_int, default=100, metavar="N", help="optimizer steps (default 100)")
    p.add_argument("--mode", choices=("exponential", "linear"), default="exponential", help="LR spacing")
    p.add_argument("--rule", choices=sorted(RULES), default=DEFAULT_RULE,
                   help=f"suggestion rule (default: {DEFAULT_RULE})")
    p.add_argument("--val-batches", default="auto", metavar="N",
                   help="held-out batches whose loss is measured after each step and read by the rules; "
                        "'auto' (default): 2 when there is validation data, else 0")
    p.add_argument("--max-epochs", type=positive_int, default=None, metavar="N",
                   help="epochs of the real run, which sets the schedule's length (default: the example's, else 10)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--accelerator", default=None, metavar="NAME", help="cpu, gpu, auto... (default: cpu for --example)")
    p.add_argument("--out", default="lr_find.png", metavar="PNG", help="where to write the plot (default lr_find.png)")
    p.add_argument("--log-dir", default="optkit_runs", metavar="DIR",
                   help="TensorBoard folder for the figure (default optkit_runs/); '' to skip")
    p.set_defaults(func=run)
    return p






def _build_lightningcli(args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[Any, Any, str, int, dict[str, Any]]:
    """The model, data, callbacks and Trainer arguments of a LightningCLI config, built by its parser."""
    from ..lightningcli import LightningCLIConfig

    for flag, value in (("--example", args.example), ("--model-args", args.model_args), ("--data-args", args.data_args)):
        if value:
            raise ConfigError(flag, value, f"nothing with the LightningCLI config {args.config} (its model:/data: "
                              "sections give the arguments)")
    if args.cli and (args.model or args.data):
        raise ConfigError("--cli", args.cli, "nothing with --model/--data: the CLI knows its classes")
    cfg = LightningCLIConfig(args.config, cli=args.cli, model=args.model, data=args.data)
    run = cfg.instantiate(load_config(cfg.base_optim(), overrides).to_dict())
    if run.ckpt_path:
        raise ConfigError("ckpt_path", run.ckpt_path, "null for an LR range test (it starts from the model's weights)")
    kwargs = {k: v for k, v in run.trainer_kwargs.items() if k in ("accelerator", "devices", "precision",
                                                                    "accumulate_grad_batches", "gradient_clip_val",
                                                                    "gradient_clip_algorithm", "deterministic")}
    from lightning.pytorch.callbacks import BaseFinetuning

    # the range test runs none of the user's callbacks; a fine-tuning callback's freezing at fit start is
    # what the trained parameters are, so it is applied here, as the real run would start
    for cb in run.callbacks:
        if isinstance(cb, BaseFinetuning):
            cb.freeze_before_training(run.model)
    others = [type(cb).__name__ for cb in run.callbacks if not isinstance(cb, BaseFinetuning)]
    if others:
        print(f"note: the range test runs no callbacks: {', '.join(others)} of {args.config} left out "
              "(fine-tuning callbacks froze their parameters first)")
    max_epochs = args.max_epochs or run.trainer_kwargs.get("max_epochs") or 10
    return run.model, run.data, cfg.name, max_epochs, kwargs


def _is_lightningcli(args: argparse.Namespace) -> bool:
    from ..config import read_yaml
    from ..lightningcli import is_lightningcli_config

    found = bool(args.config) and Path(args.config).is_file() and is_lightningcli_config(read_yaml(args.config))
    if args.cli and not found:
        raise ConfigError("--cli", args.cli, "a LightningCLI CONFIG beside it (what your script's --print_config writes)")
    return found


def _build(args: argparse.Namespace) -> tuple[Any, Any, str, int, dict[str, Any]]:
    """``(model, datamodule, name, max_epochs, more Trainer arguments)`` from the arguments."""
    import lightning as L

    overrides = parse_overrides(args.overrides)
    if _is_lightningcli(args):
        return _build_lightningcli(args, overrides)
    if args.example and args.model:
        raise ConfigError("--model", args.model, "nothing with --example (give one of them)")
    if args.example:
        from ..demo import get_example, make_example

        info = get_example(args.example)
        model, data = make_example(info.name, args.config, overrides=overrides,
                                   model_args=json_object(args.model_args, "--model-args"),
                                   data_args=json_object(args.data_args, "--data-args"))
        return model, data, info.name, args.max_epochs or info.max_epochs, {}
    if not args.model:
        raise ConfigError("--model", None, "--example digits, or CONFIG with --model pkg.mod.Class --data pkg.mod.DataModule")
    if args.config is None:
        raise ConfigError("CONFIG", None, "a YAML file with the optim block (with --model)")
    if not args.data:
        raise ConfigError("--data", None, "a LightningDataModule class pkg.mod.DataModule (with --model)")
    optim = load_config(args.config, overrides).to_dict()
    model_cls = import_class(args.model, "--model", L.LightningModule)
    model_args = json_object(args.model_args, "--model-args")
    if "optim" in model_args:
        raise ConfigError("--model-args.optim", model_args["optim"], "nothing: the optim block comes from CONFIG")
    try:
        model = model_cls(optim=optim, **instantiate_objects(model_args, "--model-args"))
    except TypeError as exc:
        raise ConfigError("--model-args", model_args, f"arguments {model_cls.__qualname__} accepts ({exc})") from None
    data_cls = import_class(args.data, "--data", L.LightningDataModule)
    try:
        data = data_cls(**instantiate_objects(json_object(args.data_args, "--data-args"), "--data-args"))
    except TypeError as exc:
        raise ConfigError("--data-args", args.data_args, f"arguments {data_cls.__qualname__} accepts ({exc})") from None
    return model, data, model_cls.__name__, args.max_epochs or 10, {}


def _save_png(fig: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=120)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(out.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dir_fd)


def _draw(result: Any, name: str, args: argparse.Namespace) -> None:
    """Write the plot (PNG) and, with ``--log-dir``, the figure and the summary to TensorBoard."""
    fig = result.plot()
    fig.suptitle(f"{name}: {result.schedule} schedule", fontsize=9)
    out = Path(args.out)
    _save_png(fig, out)
    print(f"plot: {out}")
    if args.log_dir:
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(save_dir=args.log_dir, name=f"lr_find-{name}", default_hp_metric=False)
        logger.experiment.add_figure("lr_find", fig, global_step=0, close=False)
        logger.experiment.add_text("lr_find/summary", "    " + result.summary().replace("\n", "\n    "), 0)
        logger.finalize("success")
        print(f"tensorboard: {logger.log_dir}")


def _val_batches(text: str) -> int | str:
    """``--val-batches``: ``"auto"`` or a whole number >= 0."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError("--val-batches", text, 'a whole number >= 0 or "auto"')
    return value


def run(args: argparse.Namespace) -> int:
    """Execute ``optkit lr-find``; returns the exit status (0 when a suggestion was found, 1 otherwise)."""
    import lightning as L

    from ._api import find_lr

    val_batches = _val_batches(args.val_batches)
    L.seed_everything(args.seed, workers=True, verbose=False)
    model, data, name, max_epochs, extra = _build(args)
    accelerator = args.accelerator or extra.pop("accelerator", None) or ("cpu" if args.example else "auto")
    result = find_lr(
        model, datamodule=data, min_lr=args.min_lr, max_lr=args.max_lr, num_steps=args.num_steps, mode=args.mode,
        rule=args.rule, val_batches=val_batches,
        trainer_kwargs={"deterministic": True, **extra, "accelerator": accelerator, "max_epochs": max_epochs},
    )
    print(result.summary())
    if result.recommended_lr is not None:
        print(f"suggested: {result.reference} = {result.recommended_lr:.4g}   "
              f"(use it with: --set {result.reference}={result.recommended_lr:.3g})")
    if result.interval is not None:
        print(f"interval: {result.interval[0]:.3g} .. {result.interval[1]:.3g} (constant LR), confidence "
              f"{result.confidence:.2f}" + ("" if result.margin_lr is None else f", stay at or below {result.margin_lr:.3g}"))
        peak = result.recommended_interval
        if peak is not None and peak != result.interval:
            print(f"interval for {result.reference} ({result.schedule} peak): {peak[0]:.3g} .. {peak[1]:.3g}")
    elif result.advice:
        print(f"no suggestion ({result.status}): {result.advice}")
    with quiet_font_fallbacks():
        _draw(result, name, args)
    return 0 if result.recommended_lr is not None else 1
