"""What a study leaves behind: the best config YAML, a summary table, plots, a CSV, a progress line."""

from __future__ import annotations

import csv
import inspect
import io
import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from .._internal.io import atomic_write_bytes
from .._internal.plots import quiet_font_fallbacks
from ._reeval import ReevalReport, reeval_report
from ._refit import run_block
from ._runner import TrialPlan
from ._space import split_overrides
from ._trials import best_trial, trial_config

__all__ = ["ProgressReporter", "chosen_trial", "format_summary", "write_best_config", "write_outputs", "write_plots",
           "write_trials_csv"]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.4g}" if (abs(v) >= 1e-3 or v == 0) else f"{v:.2e}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _fmt_duration(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _value_text(trial: FrozenTrial, plan: TrialPlan) -> str:
    values = trial.values or []
    return ", ".join(f"{m} = {_fmt(v)} ({d})" for m, v, d in zip(plan.monitors, values, plan.directions))


def chosen_trial(study: optuna.Study, reeval: ReevalReport | None = None) -> FrozenTrial | None:
    """The best config's trial: the one re-evaluation chose by its mean, else the search-time best."""
    chosen = reeval.chosen if reeval is not None else None
    if chosen is not None:
        return next(t for t in study.get_trials(deepcopy=False) if t.number == chosen.number)
    return best_trial(study)


def write_best_config(study: optuna.Study, plan: TrialPlan, out_dir: Path, reeval: ReevalReport | None = None
                      ) -> tuple[Path | None, list[str], list[Path]]:
    """Write ``best_config.yaml`` (the best trial's complete optim block) and the source's extras.

    With a complete ``reeval`` report the best trial is the one chosen by the mean over its runs, and a
    ``reeval:`` block gives that mean ± sd, every run's value and seed, the search-time value and the
    cost of re-evaluation. Returns ``(path, reproduce lines, extra files)``; ``path`` is ``None`` when
    no trial completed.
    """
    best = chosen_trial(study, reeval)
    if best is None:
        return None, [], []
    optim = trial_config(best, plan)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "best_config.yaml"
    targets = split_overrides(plan.space.overrides_from_params(best.params, plan.base))[1]
    reproduce = _reproduce_lines(plan, path, targets)
    run = best.user_attrs.get("optkit.run", {})
    head = [
        f"# Best trial of study {study.study_name!r}: trial {best.number}, {_value_text(best, plan)}"
        + (f" after {run['steps']} optimizer steps" if run.get("steps") is not None else ""),
        "# optim: the complete optim block it trained with; run: its source, arguments and seed (" + str(plan.seed)
        + ").",
    ]
    best_line = reeval.best_line() if reeval is not None else None
    if best_line is not None:
        head.insert(1, f"# Chosen by re-evaluation of the top {len(reeval.standings)} configs "  # type: ignore[union-attr]
                    f"(reeval: below): {best_line}")
    head += [f"# Reproduce: {line}" if i == 0 else f"#   {line}" for i, line in enumerate(reproduce)]
    body = {"optim": optim, "run": run_block(plan, targets)}
    if best_line is not None:
        body["reeval"] = reeval.block()  # type: ignore[union-attr]
    text = "\n".join(head) + "\n" + yaml.safe_dump(body, sort_keys=False)
    atomic_write_bytes(path, text.encode())
    if any(targets.values()) and "targets" in inspect.signature(plan.source.write_extras).parameters:
        extras = plan.source.write_extras(out_dir, optim, plan.trainer_kwargs, plan.seed, targets=targets)
    else:
        extras = plan.source.write_extras(out_dir, optim, plan.trainer_kwargs, plan.seed)
    return path, reproduce, extras


def _reproduce_lines(plan: TrialPlan, path: Path, targets: dict[str, dict[str, Any]]) -> list[str]:
    """``optkit fit BEST`` first when the source can be rebuilt from the file; the source's own lines when they
    carry everything (no model./data./trainer. key was searched)."""
    from ..config import ConfigError
    from ._sources import source_from_description

    lines = plan.source.reproduce(path, plan.trainer_kwargs, plan.seed)
    try:
        source_from_description(plan.source.describe())
    except ConfigError:
        return lines
    if any(targets.values()):
        return [f"optkit fit {path}"]
    return [*lines, f"or the whole run (source, arguments and seed in the file): optkit fit {path}"]


def write_trials_csv(study: optuna.Study, plan: TrialPlan, path: Path) -> Path:
    """One row per trial: number, state, value(s), optimizer steps, seconds, then every parameter."""
    trials = study.get_trials(deepcopy=False)
    params = list(dict.fromkeys([*plan.space.searched, *(k for t in trials for k in t.params)]))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["number", "state", *plan.monitors, "steps", "seconds", *params])
    for t in trials:
        run = t.user_attrs.get("optkit.run", {})
        values = list(t.values) if t.values else [""] * len(plan.monitors)
        if t.state == TrialState.PRUNED and t.intermediate_values:
            values = [t.intermediate_values[max(t.intermediate_values)]]
        writer.writerow([t.number, t.state.name, *values, run.get("steps", ""), run.get("seconds", ""),
                         *(t.params.get(p, "") for p in params)])
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path


def format_summary(study: optuna.Study, plan: TrialPlan, *, top: int = 10, elapsed: float | None = None,
                   storage: str = "", ran: int | None = None, n_trials: int | None = None) -> str:
    """The console summary: counts, the budget (``ran``: the trials this process finished), the best trials.

    Example of the budget line, when several processes share the study::

        budget: the study holds 8 finished trials (n_trials=8); this run finished 3 of them
    """
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    lines = [f"study {study.study_name!r}" + (f" ({storage})" if storage else "") + f": {len(trials)} trials -- "
             f"{counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed"
             + (f" -- {elapsed:.1f} s" if elapsed is not None else "")]
    finished = [t for t in trials if t.state in _FINISHED]
    if ran is not None:
        others = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        lines.append(f"budget: the study holds {len(finished)} finished trials"
                     + (f" (n_trials={n_trials})" if n_trials is not None else "")
                     + f"; this run finished {ran} of them"
                     + (f"; {len(others)} still running or queued elsewhere" if others else ""))
    if not finished:
        return "\n".join(lines)
    first = plan.monitors[0]
    maximize = plan.directions[0] == "maximize"

    def score(t: FrozenTrial) -> tuple[int, float]:
        if t.state == TrialState.COMPLETE and t.values:
            v = t.values[0]
        elif t.intermediate_values:
            v = t.intermediate_values[max(t.intermediate_values)]
        else:
            v = float("nan")
        rank = 0 if t.state == TrialState.COMPLETE else 1
        if isinstance(v, float) and math.isnan(v):
            return (2, 0.0)
        return (rank, -v if maximize else v)

    shown = sorted(finished, key=score)[:top]
    params = [p for p in plan.space.searched if any(p in t.params for t in shown)]
    header = ["trial", "state", *plan.monitors, "steps", *params]
    rows = []
    for t in shown:
        run = t.user_attrs.get("optkit.run", {})
        if t.values:
            vals = [_fmt(v) for v in t.values]
        elif t.intermediate_values:
            vals = [_fmt(t.intermediate_values[max(t.intermediate_values)])] + [""] * (len(plan.monitors) - 1)
        else:
            vals = [""] * len(plan.monitors)
        steps = run.get("steps", max(t.intermediate_values) if t.intermediate_values else "")
        rows.append([str(t.number), t.state.name, *vals, str(steps),
                     *(_fmt(plan.space.params[p].decode(t.params[p])) if p in t.params else "-" for p in params)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines.append("")
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    if len(finished) > len(shown):
        lines.append(f"(best {len(shown)} of {len(finished)} finished trials by {first}; pruned trials show their last "
                     "reported value)")
    return "\n".join(lines)


def write_plots(study: optuna.Study, plan: TrialPlan, out_dir: Path) -> tuple[list[Path], list[str]]:
    """PNG plots through ``optuna.visualization.matplotlib``; returns ``(written, notes on skipped)``."""
    from optuna.visualization import matplotlib as ovm

    out_dir.mkdir(parents=True, exist_ok=True)
    multi = len(study.directions) > 1
    target = (lambda t: t.values[0]) if multi else None
    kw: dict[str, Any] = {"target": target, "target_name": plan.monitors[0]} if multi else {"target_name": plan.monitors[0]}
    plots: list[tuple[str, Any, dict[str, Any]]] = [
        ("optimization_history", ovm.plot_optimization_history, kw),
        ("param_importances", ovm.plot_param_importances, kw),
        ("parallel_coordinate", ovm.plot_parallel_coordinate, kw),
    ]
    if multi:
        plots.append(("pareto_front", ovm.plot_pareto_front, {"target_names": list(plan.monitors)}))
    else:
        plots.append(("intermediate_values", ovm.plot_intermediate_values, {}))
    import matplotlib.pyplot as plt

    with quiet_font_fallbacks():  # Optuna's plots ask for math fonts a minimal install lacks
        return _render(plots, study, out_dir, plt)


def _render(plots: list[tuple[str, Any, dict[str, Any]]], study: optuna.Study, out_dir: Path, plt: Any
            ) -> tuple[list[Path], list[str]]:
    written: list[Path] = []
    notes: list[str] = []
    for name, fn, kwargs in plots:
        path = out_dir / f"{name}.png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study, **kwargs)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 5.5)
            fig.tight_layout()
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=110)
            plt.close(fig)
            atomic_write_bytes(path, buffer.getvalue())
            written.append(path)
        except Exception as exc:  # too few trials for importances, no intermediate values...
            notes.append(f"{name}: skipped ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
            plt.close("all")
    return written, notes


class ProgressReporter:
    """An Optuna callback that shows trials done, pruned, the best value and the time left.

    On a terminal it is a tqdm bar; elsewhere (logs, CI) one line per finished trial.

    Example:
        >>> reporter = ProgressReporter(("val_acc",), ("maximize",), total=20, enabled=False)
        >>> reporter.close()
    """

    def __init__(self, monitors: Sequence[str], directions: Sequence[str], *, total: int | None,
                 timeout: float | None = None, enabled: bool | None = None, stream: IO[str] | None = None) -> None:
        self.monitors = tuple(monitors)
        self.directions = tuple(directions)
        self.total = total
        self.timeout = timeout
        self.stream = stream or sys.stderr
        self.enabled = True if enabled is None else enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.done = 0
        self.pruned = 0
        self.failed = 0
        self._bar: Any = None
        if self.enabled and self.tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="optkit tune", unit="trial", file=self.stream, dynamic_ncols=True)

    def time_left(self) -> float | None:
        elapsed = time.perf_counter() - self.start
        left: float | None = None
        if self.total is not None and self.done:
            left = elapsed / self.done * max(self.total - self.done, 0)
        if self.timeout is not None:
            cap = max(self.timeout - elapsed, 0.0)
            left = cap if left is None else min(left, cap)
        return left

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.done += 1
        self.pruned += trial.state == TrialState.PRUNED
        self.failed += trial.state == TrialState.FAIL
        if not self.enabled:
            return
        best = best_trial(study)
        best_text = f"best {self.monitors[0]}={_fmt(best.values[0])} (trial {best.number})" if best is not None else "best -"
        left = self.time_left()
        if self._bar is not None:
            self._bar.set_postfix_str(f"{best_text}, pruned {self.pruned}"
                                      + (f", ≤{_fmt_duration(left)} left" if self.timeout is not None and left is not None else ""),
                                      refresh=False)
            self._bar.update(1)
            return
        run = trial.user_attrs.get("optkit.run", {})
        if trial.values:
            value = ", ".join(f"{m}={_fmt(v)}" for m, v in zip(self.monitors, trial.values))
        elif trial.intermediate_values:
            value = f"{self.monitors[0]}={_fmt(trial.intermediate_values[max(trial.intermediate_values)])}"
        else:
            value = ""
        where = f" at step {run['steps']}" if run.get("steps") is not None else ""
        took = f" ({run['seconds']:.1f} s)" if run.get("seconds") is not None else ""
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        eta = f" | ~{_fmt_duration(left)} left" if left is not None else ""
        print(f"[optkit tune] trial {trial.number} {trial.state.name} {value}{where}{took} | {count} done, "
              f"{self.pruned} pruned | {best_text}{eta}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def write_outputs(study: optuna.Study, plan: TrialPlan, display: str, elapsed: float, *, plots: bool, summary: bool,
                  failed: bool, ran: int | None = None, n_trials: int | None = None,
                  reeval: tuple[int, int] = (0, 0)) -> None:
    """Write the outputs (also after an error or Ctrl-C, for what finished) and print the summary."""
    out = plan.out_dir
    report = reeval_report(study, plan.monitors[0], plan.seed, *reeval) if len(plan.monitors) == 1 else None
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    if not finished:
        if summary and not failed:
            print(format_summary(study, plan, elapsed=elapsed, storage=display, ran=ran, n_trials=n_trials))
        return
    best_path, reproduce, extras = write_best_config(study, plan, out, reeval=report)
    csv_path = write_trials_csv(study, plan, out / "trials.csv")
    written, notes = write_plots(study, plan, out / "plots") if plots else ([], [])
    if not summary:
        return
    lines = ["", format_summary(study, plan, elapsed=elapsed, storage=display, ran=ran, n_trials=n_trials), ""]
    if report is not None:
        lines.extend([*report.lines(), ""])
    best = chosen_trial(study, report)
    if best is not None and best_path is not None:
        values = ", ".join(f"{m} = {v:.4f}" for m, v in zip(plan.monitors, best.values or []))
        best_line = report.best_line() if report is not None else None
        lines.append(f"best trial {best.number}: " + (f"{best_line}" if best_line else values))
        lines.append(f"best config ({best_path}):")
        lines.extend("  " + ln for ln in yaml.safe_dump(trial_config(best, plan), sort_keys=False).rstrip().splitlines())
        for i, line in enumerate(reproduce):
            lines.append(("reproduce: " if i == 0 else "           ") + line)
        lines.extend(f"also: {p}" for p in extras)
    else:
        lines.append("no trial completed: no best config")
    lines.append(f"trials: {csv_path}")
    if written:
        lines.append(f"plots: {', '.join(str(p) for p in written)}")
    lines.extend(f"plots: {n}" for n in notes)
    if plan.tensorboard:
        lines.append(f"tensorboard: tensorboard --logdir {out / 'tensorboard'}")
    if display.startswith(("sqlite", "postgresql", "mysql")):
        lines.append(f"dashboard: optuna-dashboard {display}")
    print("\n".join(lines), flush=True)
