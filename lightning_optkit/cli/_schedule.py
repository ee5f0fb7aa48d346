"""``optkit schedule``: build the optimizers and schedulers of an optim config, step them through the
whole run (:func:`lightning_optkit.schedules.simulate`), print each group's peak, warm-up end and
final LR, and plot the curves."""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._internal.cli_args import UsageError, json_object, positive_int
from .._internal.io import atomic_write_bytes
from ..config import ConfigError, OptimBlock, OptimConfig, TrainingLength, load_config, parse_overrides
from ._common import add_config_args, build_user_model, check_example_or_model, config_source, wrap

if TYPE_CHECKING:
    from ..schedules import LRTrace

__all__ = ["add_parser"]

SCHEDULE_EPILOG = """\
examples:
  optkit schedule --example digits                       # the demo preset, over the demo's run
  optkit schedule configs/sgd_onecycle.yaml --steps 1000 --out onecycle.png
  optkit schedule configs/finetune_layer_decay.yaml --epochs 10 --steps-per-epoch 100 \\
      --model mypkg.models.Net --model-args '{"depth": 12}'

Without a model, the plot has the main optimizer LR and one line per param_groups rule (its lr or
lr_scale); layer_decay needs the model's layers. A plateau schedule is fed a constant metric (it
never improves), so its curve shows the fastest decay the config allows.
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``schedule`` subcommand to ``sub`` (the ``optkit`` subparsers)."""

    sched = sub.add_parser(
        "schedule", help="plot the LR of every parameter group over a run",
        description=wrap("Build the optimizer and scheduler of an optim config, step the scheduler through "
                         "the whole run and plot the learning rate of every parameter group. Prints the "
                         "peak LR, the step where the warm-up ends and the final LR of each group."),
        epilog=SCHEDULE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(sched)
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
    return sched


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
    from ..schedules import lookup

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
    from ..schedules import lookup

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

    from ..optim import resolve_optimizer
    from ..schedules import build_scheduler

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

    from ..mixin import build_optimizers

    out = build_optimizers(model, cfg, length=length)
    if isinstance(out, torch.optim.Optimizer):
        optimizers, schedulers = [out], []
    else:
        optimizers, schedulers = list(out[0]), list(out[1])
    for i, optimizer in enumerate(optimizers):
        optimizer.optkit_label = f"lr-{type(optimizer).__name__}" + (f"-{i}" if len(optimizers) > 1 else "")
    return optimizers, schedulers


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
    check_example_or_model(args)
    source = config_source(args)
    overrides = parse_overrides(args.overrides)
    example = None
    if args.example:
        from ..demo import get_example

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
        from ..demo import make_example

        model, _data = make_example(example.name, cfg, model_args=json_object(args.model_args, "--model-args"))
        optimizers, schedulers = _model_optimizers(model, cfg, length)
    elif args.model:
        model = build_user_model(args, cfg.to_dict())
        optimizers, schedulers = _model_optimizers(model, cfg, length)
    else:
        optimizers, schedulers, notes = _dummy_optimizers(cfg, length)
    from ..schedules import PLATEAU_METRIC, simulate

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
    if config_source(args) is not None:
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

