"""``optkit tune``: the command line of :func:`lightning_optkit.tuning.tune`.

``optkit`` adds it as a subcommand with :func:`add_parser` (which sets ``func=run``);
``python -m lightning_optkit.tuning ...`` runs it on its own (:func:`main`). :func:`run` reports
every configuration or usage mistake as one ``error: ...`` line on stderr and returns 2.

Example:
    >>> import argparse
    >>> sub = argparse.ArgumentParser(prog="optkit").add_subparsers(dest="command")
    >>> p = add_parser(sub)
    >>> args = p.parse_args(["--example", "digits", "--trials", "25"])
    >>> args.example, args.trials, args.func is run
    ('digits', 25, True)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .._internal.cli_args import UsageError, json_object, positive_float, positive_int
from ..config import ConfigError, parse_overrides, read_yaml
from ._pool._launcher import TrialProcessError
from ._presets import PRESETS
from ._samplers import PRUNERS, SAMPLERS

__all__ = ["add_parser", "build_parser", "main", "run"]

_DESCRIPTION = (
    "Tune the optim block (optimizer, LR, weight decay, schedule, loss settings) with Optuna: a search space "
    "keyed by the config's dotted paths, TPE sampling, Hyperband pruning at every validation, an SQLite study "
    "that optuna-dashboard opens. Writes the best config as YAML (and the command that trains it again), a "
    "summary table, plots, a CSV of the trials and TensorBoard hparams of every trial."
)

_EPILOG = """\
examples:
  optkit tune --example digits                                  # the built-in demo: 30 trials on CPU
  optkit tune --example digits --search configs/search_digits.yaml --trials 50 --timeout 600
  optkit tune configs/adamw_warmup_cosine.yaml --model mypkg.models.Net --data mypkg.data.DataModule \\
      --search adamw --monitor val_acc --max-epochs 20 --trials 40
  optkit tune lightningcli_config.yaml --search configs/search_optimizers.yaml --monitor val_acc
  optkit tune printed.yaml --cli mypkg.train:cli_main --search adamw    # python train.py fit --print_config > printed.yaml
  optkit tune --factory mypkg.tuning:build --config base.yaml --search search.yaml --max-epochs 10
  optkit tune --example digits --study digits --resume --trials 60   # continue a study to 60 trials
  optkit tune ... --devices 2 --strategy ddp                          # each trial on 2 processes (rank 0 owns it)
  optkit tune ... --workers 4 --devices auto                          # 4 trial processes, one GPU each
  optkit tune ... --workers 2 --storage postgresql://tuner@db/optuna --study s --resume   # on every machine

the search space (YAML, under `search:`), keyed by the config's dotted paths:
  optimizer.name: {choices: [adamw, sgd]}
  optimizer.lr: {low: 1.0e-5, high: 1.0e-1, log: true}
  optimizer.momentum: {low: 0.8, high: 0.99, when: {optimizer.name: sgd}}
  scheduler.warmup: {choices: ["0%", "5%", "10%"]}
presets (--search NAME): """ + ", ".join(sorted(PRESETS)) + """

outputs go to OUT/STUDY/ (default optkit_tune/<name>/): best_config.yaml, trials.csv, plots/*.png,
tensorboard/ (tensorboard --logdir ...); the study itself to OUT/optuna.db (optuna-dashboard sqlite:///...).
"""


def _add_arguments(p: argparse.ArgumentParser) -> None:
    """Every argument of ``optkit tune``, in the groups ``--help`` shows."""
    for add_group in (_add_source_arguments, _add_search_arguments, _add_study_arguments, _add_pool_arguments,
                      _add_trial_arguments, _add_output_arguments):
        add_group(p)


def _add_source_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("model and data (one of)")
    src.add_argument("config", nargs="?", metavar="CONFIG",
                     help="the base optim block (YAML); or a LightningCLI config as --print_config writes it "
                          "(the base is the model's optim argument), alone, with --cli, or with --model/--data for a "
                          "fixed-class LightningCLI(Model, Data)")
    src.add_argument("--config", dest="config_opt", metavar="PATH", help="the same as the positional CONFIG")
    src.add_argument("--example", metavar="NAME", help="a built-in example: digits")
    src.add_argument("--factory", metavar="pkg.mod:build",
                     help="a function build(optim: dict) -> (LightningModule, LightningDataModule)")
    src.add_argument("--cli", metavar="pkg.mod:cli_main",
                     help="with a LightningCLI CONFIG: your project's LightningCLI (its cli_main function or its "
                          "LightningCLI subclass); its parser builds every trial, with every section it adds")
    src.add_argument("--model", metavar="pkg.mod.Class", help="your LightningModule class (it must accept optim=)")
    src.add_argument("--data", metavar="pkg.mod.DataModule", help="your LightningDataModule class (with --model)")
    src.add_argument("--model-args", metavar="JSON", help="more keyword arguments for the model, as a JSON object")
    src.add_argument("--data-args", metavar="JSON", help="keyword arguments for the datamodule, as a JSON object")


def _add_search_arguments(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("the search")
    s.add_argument("--search", metavar="FILE|PRESET",
                   help="search space: a YAML file with `search:` or a preset (" + ", ".join(sorted(PRESETS))
                        + "); default with --example: its preset")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the base config, e.g. --set optimizer.lr=1e-3 (repeatable)")
    s.add_argument("--monitor", metavar="METRIC",
                   help="the validation metric to optimize (default: val_loss; the example's own, e.g. val_acc); "
                        "comma-separated for a multi-objective study")
    s.add_argument("--direction", metavar="DIR",
                   help="minimize or maximize (default: from the metric's name); comma-separated with several metrics")
    s.add_argument("--trials", type=positive_int, metavar="N",
                   help="finished trials the study should have, counted over every process and machine that shares "
                        "it (default: 20; --example digits: 30); a resumed study runs only the missing ones")
    s.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                   help="this process stops starting trials after this long")
    s.add_argument("--study-timeout", type=positive_float, metavar="SECONDS",
                   help="the study stops starting trials this long after it was created, on every machine")
    s.add_argument("--sampler", default="tpe", metavar="NAME", help="one of " + ", ".join(SAMPLERS) + " (default: tpe)")
    s.add_argument("--pruner", default="hyperband", metavar="NAME",
                   help="one of " + ", ".join(PRUNERS) + " (default: hyperband)")
    s.add_argument("--no-base", action="store_true", help="do not run the base config as the first trial")
    s.add_argument("--reeval", type=_count, default=3, metavar="K",
                   help="after the search, train the top K configs again with new seeds and choose the best by the "
                        "mean over all its runs; best_config.yaml and the summary report mean ± sd (default 3; 0: off)")
    s.add_argument("--reeval-seeds", type=_count, default=2, metavar="R",
                   help="new seeds per re-evaluated config, derived from --seed (default 2; 0: off)")
    s.add_argument("--recipe", choices=("staged",), default=None,
                   help="staged: an LR range test per candidate optimizer narrows its optimizer.lr (suggestion /4 .. "
                        "x4), then TPE + Hyperband tune everything in one study, each optimizer in its own LR range")


def _add_study_arguments(p: argparse.ArgumentParser) -> None:
    st = p.add_argument_group("the study")
    st.add_argument("--storage", metavar="URL",
                    help="sqlite:///file.db, postgresql://user@host/db, a .db or .log file, or memory "
                         "(default: OUT/optuna.db)")
    st.add_argument("--study", metavar="NAME", help="study name (default: the model's name, -2, -3... when taken)")
    st.add_argument("--resume", action="store_true", help="continue the study (--study NAME, or the newest one)")
    st.add_argument("--out", default="optkit_tune", metavar="DIR", help="output folder (default: optkit_tune/)")


def _add_pool_arguments(p: argparse.ArgumentParser) -> None:
    sc = p.add_argument_group("scale out (one process per trial; docs/tuning_scale.md)")
    sc.add_argument("--workers", type=positive_int, metavar="K",
                    help="run each trial in a fresh process, K at once, each pinned to its devices (a GPU slot via "
                         "CUDA_VISIBLE_DEVICES, or a share of the CPU threads); default storage: a journal file")
    sc.add_argument("--devices-per-trial", type=positive_int, default=None, metavar="D",
                    help="devices per trial with --workers (DDP inside the trial when > 1: GPUs, or CPU processes "
                         "with --devices cpu; default 1)")
    sc.add_argument("--max-retries", type=int, default=2, metavar="N",
                    help="retry a trial whose process died, with the same parameters, up to N times (default 2)")
    sc.add_argument("--heartbeat", type=positive_int, default=30, metavar="SECONDS",
                    help="heartbeat of running trials on a PostgreSQL/MySQL storage (default 30; a trial silent for "
                         "twice as long is failed and retried)")


def _add_trial_arguments(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("each trial")
    t.add_argument("--max-epochs", type=positive_int, metavar="N",
                   help="epochs per trial (default: the example's, e.g. 10; required for your own model "
                        "unless --max-steps or --trainer max_time=...)")
    t.add_argument("--max-steps", type=positive_int, metavar="N", help="optimizer steps per trial")
    t.add_argument("--val-check-interval", type=_number, metavar="X",
                   help="validate every X of an epoch (float) or every X batches (int): more pruning points")
    t.add_argument("--accelerator", metavar="NAME", help="cpu, gpu, auto... (default: cpu for --example)")
    t.add_argument("--devices", metavar="N",
                   help="devices per trial (several: DDP, rank 0 owns the trial); with --workers: the devices the "
                        "workers share: auto (all GPUs), a list such as 0,1,2,3, or cpu")
    t.add_argument("--strategy", metavar="NAME", help="e.g. ddp")
    t.add_argument("--trainer", dest="trainer_args", action="append", default=[], metavar="KEY=VALUE",
                   help="any other L.Trainer argument, e.g. --trainer gradient_clip_val=1.0 (repeatable; YAML values)")
    t.add_argument("--seed", type=int, metavar="S", help="seed of every trial and of the sampler (default: 0)")
    t.add_argument("--threads", type=positive_int, metavar="N",
                   help="torch threads during the study (default: unchanged; --example: 1, fastest for tiny models)")


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    o = p.add_argument_group("output")
    o.add_argument("--no-plots", action="store_true", help="no PNG plots")
    o.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logs per trial")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress line per trial")
    o.add_argument("-v", "--verbose", action="store_true", help="keep Lightning's and Optuna's per-trial messages")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``tune`` subcommand to ``optkit``'s subparsers; returns it (``func=run`` is set)."""
    p = subparsers.add_parser(
        "tune", help="tune the optim block with Optuna (search space, pruning, best config YAML)",
        description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser (``python -m lightning_optkit.tuning``) with the same arguments."""
    p = argparse.ArgumentParser(prog="optkit tune", description=_DESCRIPTION, epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run (the stand-alone entry point)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    return run(args)


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _count(text: str) -> int:
    """An integer >= 0 (``--reeval 0`` turns re-evaluation off)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _split(text: str | None) -> str | list[str] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return parts[0] if len(parts) == 1 else parts


def _lightningcli_source(args: argparse.Namespace, config: str | None) -> Any:
    """A LightningCLISource when CONFIG is a LightningCLI config (with --cli, --model/--data or class_path)."""
    from ._sources import LightningCLISource, is_lightningcli_yaml

    if config is None or not is_lightningcli_yaml(read_yaml(config)):
        if args.cli:
            raise UsageError("--cli needs CONFIG: the LightningCLI config your script prints with --print_config")
        return None
    for flag, value in (("--example", args.example), ("--factory", args.factory)):
        if value:
            raise UsageError(f"{flag} goes with an optim block, not with the LightningCLI config {config}")
    for flag, value in (("--model-args", args.model_args), ("--data-args", args.data_args)):
        if value:
            raise UsageError(f"{flag}: put the arguments in the model:/data: sections of {config}")
    if args.cli and (args.model or args.data):
        raise UsageError("give --cli or --model/--data, not both: the CLI knows its classes")
    return LightningCLISource(config, cli=args.cli, model=args.model, data=args.data)


def tune_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`~lightning_optkit.tuning.tune` arguments for parsed ``optkit tune`` arguments."""
    kwargs = _source_kwargs(args)
    kwargs.update(_trainer_and_pool_kwargs(args))
    if args.recipe is not None:
        kwargs["recipe"] = args.recipe
    kwargs.update(
        search=args.search,
        overrides=parse_overrides(args.overrides) or None,
        monitor=_split(args.monitor),
        direction=_split(args.direction),
        n_trials=args.trials,
        timeout=args.timeout,
        study_timeout=args.study_timeout,
        sampler=args.sampler,
        pruner=args.pruner,
        storage=args.storage,
        study_name=args.study,
        resume=args.resume,
        enqueue_base=not args.no_base,
        seed=args.seed,
        out_dir=args.out,
        tensorboard=not args.no_tensorboard,
        plots=not args.no_plots,
        progress=not args.quiet,
        threads=args.threads,
        verbose=args.verbose,
        reeval=args.reeval,
        reeval_seeds=args.reeval_seeds,
    )
    return kwargs


def _source_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``model`` (or ``example`` and its arguments) and ``config``: where model and data come from."""
    from ._sources import ClassSource

    if args.config and args.config_opt and args.config != args.config_opt:
        raise UsageError(f"two configs given ({args.config} and --config {args.config_opt}); give one")
    config = args.config or args.config_opt
    cli_source = _lightningcli_source(args, config)
    if cli_source is not None:
        args.model = args.data = None
        config = None
    chosen = [f for f, v in (("--example", args.example), ("--factory", args.factory), ("--model", args.model)) if v]
    if len(chosen) > 1:
        raise UsageError(f"give one of --example, --factory and --model, not {' and '.join(chosen)}")
    if args.data and not args.model:
        raise UsageError("--data goes with --model")
    kwargs: dict[str, Any] = {}
    model_args = json_object(args.model_args, "--model-args")
    data_args = json_object(args.data_args, "--data-args")
    if cli_source is not None:
        kwargs["model"] = cli_source
    elif args.example:
        kwargs.update(example=args.example, model_args=model_args, data_args=data_args)
    elif args.factory:
        if model_args or data_args:
            raise UsageError("--model-args/--data-args go with --model or --example; a factory builds both itself")
        kwargs["model"] = args.factory
    elif args.model:
        if not args.data:
            raise UsageError("--model needs --data pkg.mod.DataModule")
        kwargs["model"] = ClassSource(args.model, args.data, model_args=model_args, data_args=data_args)
    elif config is not None:
        raise UsageError(f"{config} is an optim block: say what to train with --example digits, "
                         "--model/--data or --factory (or give a LightningCLI config)")
    else:
        raise UsageError("give --example digits, a LightningCLI config, --model/--data with CONFIG, or --factory")
    if config is not None:
        kwargs["config"] = config
    return kwargs


def _trainer_and_pool_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``trainer_kwargs`` of each trial, and the process pool's arguments (``--workers``...)."""
    trainer: dict[str, Any] = parse_overrides(args.trainer_args)
    for key, value in (("max_epochs", args.max_epochs), ("max_steps", args.max_steps),
                       ("val_check_interval", args.val_check_interval), ("accelerator", args.accelerator),
                       ("strategy", args.strategy)):
        if value is not None:
            trainer[key] = value
    kwargs: dict[str, Any] = {}
    scaled = args.workers is not None or args.devices_per_trial is not None
    if args.devices is not None and not scaled:
        trainer["devices"] = int(args.devices) if args.devices.isdigit() else args.devices
    if scaled:
        kwargs.update(workers=args.workers, devices=args.devices, devices_per_trial=args.devices_per_trial or 1,
                      heartbeat_interval=args.heartbeat)
    if args.max_retries < 0:
        raise UsageError(f"--max-retries: expected a number >= 0, got {args.max_retries}")
    kwargs["max_retries"] = args.max_retries
    kwargs["trainer_kwargs"] = trainer
    return kwargs


def run(args: argparse.Namespace) -> int:
    """Run ``optkit tune``; 0 on success, 2 for a configuration or usage mistake, 130 when interrupted."""
    from ._tune import tune

    try:
        tune(**tune_kwargs(args))
    except (ConfigError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrialProcessError as err:  # a trial raised in its worker process (--workers)
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("optkit tune: interrupted; finished trials are kept (resume with --resume)", file=sys.stderr)
        return 130
    return 0
