"""``optkit diagnose``: run the analysis toolkit on a model and write one report folder.

``add_parser(subparsers)`` registers the subcommand (importing nothing heavy); ``run(args)`` does the
work and returns the exit status. The analyses:

* ``--capacity``: one fit with a :class:`~lightning_optkit.callbacks.TrainingDoctor`; afterwards the
  train and validation accuracy (classification) or losses give the capacity verdict, the training
  loss the convergence state, and the doctor's findings come with their remedies.
* ``--sharpness``: the same fit with a :class:`SharpnessMonitor` (top Hessian eigenvalue every epoch
  against the optimizer's stability edge) and, at the end, the random-perturbation probe.
* ``--landscape``: the loss around the trained weights along filter-normalized random directions.
* ``--labels``: out-of-sample probabilities by K-fold cross-fitting (fresh models), ranked by
  confident learning; the CSV of suspects and an image grid.

Examples::

    optkit diagnose --example digits --labels --sharpness --capacity
    optkit diagnose config.yaml --model mypkg.Net --data mypkg.Data --capacity --landscape --out report/
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._internal.cli_args import UsageError, import_class, json_object, positive_int
from .._internal.imports import instantiate_objects
from ..config import load_config, parse_overrides

__all__ = ["add_parser", "run"]

ANALYSES = ("capacity", "sharpness", "landscape", "labels")

_EPILOG = """\
examples:
  optkit diagnose --example digits --labels --sharpness --capacity
  optkit diagnose --example digits --landscape --max-epochs 5 --out digits_report
  optkit diagnose config.yaml --model mypkg.models.Net --data mypkg.data.DataModule --capacity --labels

Without an analysis flag every analysis runs. The report folder holds report.md (verdicts and what
to do), label_issues.csv and label_issues.png (suspect samples), sharpness.png (top eigenvalue vs
the stability edge), landscape.png and doctor.json.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``diagnose`` on an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "diagnose", help="diagnose a model: suspect labels, sharpness, landscape, capacity and convergence",
        description="Run the chosen analyses on the built-in example or your model and write one report "
                    "folder with a Markdown summary of the verdicts and remedies, the suspect samples and figures.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help="YAML file with the optim block (default with --example: the example's preset)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key by its dotted path (repeatable)")
    p.add_argument("--example", metavar="NAME", help="a built-in example: digits")
    p.add_argument("--model", metavar="pkg.mod.Class", help="your LightningModule class (it must accept optim=)")
    p.add_argument("--model-args", metavar="JSON", default=None, help="more keyword arguments of the model (JSON)")
    p.add_argument("--data", metavar="pkg.mod.DataModule", help="your LightningDataModule class (with --model)")
    p.add_argument("--data-args", metavar="JSON", default=None, help="keyword arguments of the datamodule (JSON)")
    for name, text in (("capacity", "capacity verdict, convergence state and the training doctor's findings"),
                       ("sharpness", "top Hessian eigenvalue vs the stability edge during the fit, perturbation probe"),
                       ("landscape", "loss landscape around the trained weights (PNG)"),
                       ("labels", "suspect labels by K-fold cross-fitting and confident learning (CSV, PNG)")):
        p.add_argument(f"--{name}", action="store_true", help=text)
    p.add_argument("--max-epochs", type=positive_int, default=None, metavar="N",
                   help="epochs of the fit (default: the example's, else 10)")
    p.add_argument("--folds", type=positive_int, default=5, metavar="K", help="cross-fitting folds (default 5)")
    p.add_argument("--label-epochs", type=positive_int, default=None, metavar="N",
                   help="epochs of each cross-fitting model (default: --max-epochs)")
    p.add_argument("--landscape-dims", type=int, choices=(1, 2), default=2, help="1-D line or 2-D grid (default 2)")
    p.add_argument("--landscape-steps", type=positive_int, default=11, metavar="N", help="points per axis (default 11)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--accelerator", default=None, metavar="NAME", help="cpu, gpu, auto... (default: cpu for --example)")
    p.add_argument("--out", default=None, metavar="DIR", help="report folder (default: optkit_diagnose/NAME)")
    p.set_defaults(func=run)
    return p


@dataclass
class _Setup:
    name: str
    build: Any  # () -> a fresh LightningModule
    data: Any  # the LightningDataModule (set up)
    max_epochs: int
    accelerator: str


def _setup(args: argparse.Namespace) -> _Setup:
    import lightning as L

    overrides = parse_overrides(args.overrides)
    if args.example and (args.model or args.data):
        raise UsageError("give --example, or --model with --data, not both")
    if args.example:
        from ..demo import get_example, make_example

        info = get_example(args.example)
        model_args, data_args = json_object(args.model_args, "--model-args"), json_object(args.data_args, "--data-args")
        make = lambda: make_example(info.name, args.config, overrides=overrides, model_args=model_args,  # noqa: E731
                                    data_args=data_args)
        _, data = make()
        return _Setup(info.name, lambda: make()[0], data, args.max_epochs or info.max_epochs, args.accelerator or "cpu")
    if not (args.model and args.data and args.config):
        raise UsageError("give --example digits, or CONFIG with --model pkg.mod.Class --data pkg.mod.DataModule")
    optim = load_config(args.config, overrides).to_dict()
    model_cls = import_class(args.model, "--model", L.LightningModule)
    model_args = json_object(args.model_args, "--model-args")
    instantiate_objects(model_args, "--model-args")  # bad class paths fail here, before any training
    data_cls = import_class(args.data, "--data", L.LightningDataModule)
    data = data_cls(**instantiate_objects(json_object(args.data_args, "--data-args"), "--data-args"))

    def build() -> Any:  # objects in --model-args are built anew for every model: cross-fitting needs fresh ones
        return model_cls(optim=optim, **instantiate_objects(model_args, "--model-args"))

    return _Setup(model_cls.__name__, build, data, args.max_epochs or 10, args.accelerator or "auto")


def _command(args: argparse.Namespace, chosen: list[str]) -> str:
    """The command line that reproduces this report (from the parsed arguments)."""
    parts = ["optkit", "diagnose"] + ([args.config] if args.config else [])
    for flag in ("example", "model", "model_args", "data", "data_args", "max_epochs", "label_epochs"):
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    parts += [f"--set={o}" for o in args.overrides] + [f"--{a}" for a in chosen]
    if "labels" in chosen:
        parts += ["--folds", str(args.folds)]
    return " ".join(shlex.quote(p) for p in parts)


def _progress(text: str) -> float:
    print(f"[diagnose] {text} ...", file=sys.stderr, flush=True)
    return time.perf_counter()


def _done(report: Any, step: str, start: float) -> None:
    seconds = time.perf_counter() - start
    report.timings.append((step, seconds))
    print(f"[diagnose] {step}: done in {seconds:.1f}s", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Execute ``optkit diagnose``; returns the exit status."""
    chosen = [a for a in ANALYSES if getattr(args, a)] or list(ANALYSES)
    import logging

    lightning_logger = logging.getLogger("lightning.pytorch")
    level = lightning_logger.level
    lightning_logger.setLevel(logging.WARNING)  # no per-Trainer banners; put back afterwards (in-process callers)
    try:
        return _run(args, chosen)
    finally:
        lightning_logger.setLevel(level)


def _run(args: argparse.Namespace, chosen: list[str]) -> int:
    import warnings

    import lightning as L

    from ._report import DiagnoseReport

    L.seed_everything(args.seed, workers=True, verbose=False)
    setup = _setup(args)
    setup.data.setup("fit")
    folder = Path(args.out or Path("optkit_diagnose") / setup.name)
    folder.mkdir(parents=True, exist_ok=True)
    report = DiagnoseReport(folder, setup.name, _command(args, chosen))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = None
        if {"capacity", "sharpness", "landscape"} & set(chosen):
            model = _fit(setup, chosen, report, args.seed)
        if "landscape" in chosen:
            _landscape(model, setup, report, args)
        if "labels" in chosen:
            _labels(setup, report, args)
    path = report.write()
    print(f"report: {path}")
    for topic, verdict, evidence, _ in report.verdicts:
        print(f"  {topic}: {verdict} ({evidence})")
    return 0


def _fit(setup: _Setup, chosen: list[str], report: Any, seed: int) -> Any:
    import lightning as L

    from ..callbacks import TrainingDoctor
    from ._sharpness_monitor import SharpnessMonitor

    model = setup.build()
    doctor = TrainingDoctor(check_every_n_steps=50, max_warnings=0, filename=None)
    callbacks: list[Any] = [doctor]
    monitor = SharpnessMonitor(every_n_epochs=1, num_batches=2, iters=20) if "sharpness" in chosen else None
    if monitor is not None:
        callbacks.append(monitor)
    start = _progress(f"fitting {setup.name} for {setup.max_epochs} epochs"
                      + (" with the sharpness monitor" if monitor else ""))
    trainer = L.Trainer(max_epochs=setup.max_epochs, accelerator=setup.accelerator, devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=callbacks, deterministic=True, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=setup.data)
    _done(report, f"fit ({setup.max_epochs} epochs)", start)
    from ._cli_sections import capacity_section, sharpness_section

    capacity_section(model, setup.data, doctor, report, show_capacity="capacity" in chosen)
    if monitor is not None:
        start = _progress("probing sharpness by random weight perturbations")
        sharpness_section(model, setup.data, monitor, report, seed)
        _done(report, "perturbation probe", start)
    return model


def _landscape(model: Any, setup: _Setup, report: Any, args: argparse.Namespace) -> None:
    from ._cli_sections import landscape_section

    points = args.landscape_steps ** args.landscape_dims
    start = _progress(f"loss landscape ({args.landscape_dims}-D, {points} points)")
    landscape_section(model, setup.data, report, args.landscape_dims, args.landscape_steps, args.seed)
    _done(report, "landscape", start)


def _labels(setup: _Setup, report: Any, args: argparse.Namespace) -> None:
    from ._cli_sections import labels_section

    epochs = args.label_epochs or setup.max_epochs
    start = _progress(f"cross-fitting {args.folds} fresh models ({epochs} epochs each) for out-of-sample probabilities")
    labels_section(setup.build, setup.data, report, folds=args.folds, epochs=epochs, seed=args.seed,
                   accelerator=setup.accelerator)
    _done(report, f"label issues ({args.folds}-fold cross-fitting)", start)
