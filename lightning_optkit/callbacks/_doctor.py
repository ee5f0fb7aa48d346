"""TrainingDoctor: the troubleshooting table, turned into automatic diagnoses of a running fit.

This module holds the callback only: it wires the Trainer's hooks to the parts that live apart --
the codes and :class:`Diagnosis` (``_doctor_codes``), the device recorder and host history
(``_doctor_recorder``), the rules as pure functions (``_doctor_rules``), the schedule facts
(``_doctor_schedule``), the verdicts (``_verdicts``) and the report rendering (``_doctor_report``).
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from .._internal.checks import check_int
from .._internal.io import atomic_write_json
from .._internal.optimizers import optimizer_params, unwrap_optimizer
from .._internal.trainer import resolve_log_dir
from .._internal.training import optimizer_steps
from ..config import ConfigError, did_you_mean
from . import _doctor_report as report
from . import _doctor_rules as rules
from ._doctor_codes import CODES, DEFAULT_THRESHOLDS, LOSS_CAPACITY_THRESHOLDS, Diagnosis, Finding
from ._doctor_recorder import Series, StepRecorder, read_lr
from ._doctor_schedule import ScheduleFacts, describe_schedule, schedule_facts
from ._grad_stats import Grouping, grad_stats
from ._verdicts import Capacity, Convergence, convergence_state, sharpness_monitors

__all__ = ["CODES", "DEFAULT_THRESHOLDS", "LOSS_CAPACITY_THRESHOLDS", "Diagnosis", "TrainingDoctor"]

_OWNER = "TrainingDoctor"


class TrainingDoctor(Callback):
    """Watch a fit and diagnose what is wrong with it, the way a troubleshooting table would.

    Each diagnosis has a stable code (:data:`CODES`), a severity, the step range, the evidence in
    numbers and a concrete remedy:

    ========================== =================================================================
    code                       finding
    ========================== =================================================================
    NONFINITE_LOSS             the loss (or the gradient) became NaN/inf (LR too high, no clipping,
                               bad data)
    LOSS_NOT_DECREASING        no progress after the warm-up (LR too low, frozen/dead parameters,
                               label or data bug)
    LOSS_DIVERGING             the loss rises well above its best (LR too high, batch too small)
    LOSS_OSCILLATING           large step-to-step swings without progress (LR too high, small batch)
    OVERFITTING                validation loss rises while training loss falls
    EXPLODING_GRADIENTS        input-side layer groups get far larger gradients than the output side,
                               or the gradient norm grows by orders of magnitude
    VANISHING_GRADIENTS        input-side layer groups get vanishing gradients
    ZERO_GRADIENTS             trainable parameters whose gradient stays zero or missing
    LR_NEVER_DECAYS            a scheduler is set but the LR is still near its peak at the end
    WARMUP_TOO_LONG            the warm-up takes more than half of training
    SCHEDULE_INTERVAL_MISMATCH a per-step schedule stepped per epoch, or the reverse
    PLATEAU_NEVER_FIRES        a ReduceLROnPlateau that cannot or does not fire within the run
    UNDERFITTING               train and validation scores both poor (capacity verdict) and the
                               loss no longer improving fast (convergence state)
    ABOVE_STABILITY_EDGE       a ``SharpnessMonitor`` in the same trainer saw the top Hessian
                               eigenvalue above the optimizer's stability edge
    ========================== =================================================================

    Besides the codes, the report (console table, JSON, TensorBoard text) carries two verdicts at the
    end of the fit: a **capacity** verdict from the last train and validation scores -- accuracy when
    both are logged (keys containing ``train``/``val`` and ``acc``, or ``capacity_keys``), else loss
    scores ``1 - loss / initial training loss``: train > ``capacity_high`` and validation <
    ``capacity_low`` -> overfitting, both < ``capacity_low`` -> underfitting, ``|gap| <
    capacity_fit_gap`` -> good fit, else inconclusive. A verdict on loss scores is information only
    (no UNDERFITTING code: a regression at its noise floor keeps much of its initial loss) unless
    ``capacity_loss_high`` / ``capacity_loss_low`` / ``capacity_loss_fit_gap`` thresholds are given,
    which it then uses. And a **convergence** state of the training
    loss (converging fast / slowly, converged, stalled, worsening) from the relative improvement of
    its median over the last ``convergence_window`` of the steps.

    Output: a rank-zero warning when a code is first found (once per code, at most
    ``max_warnings`` in a run), a summary table on the console at the end of the fit,
    ``doctor.json`` in the trainer's log dir (written atomically, also when the fit crashes) and the
    same table as text in TensorBoard (``doctor/summary``). The findings are in
    :attr:`diagnoses` (and :attr:`codes`) for programmatic use.

    What it costs: per optimizer step, a few device ops on the shared gradient cache (group norms,
    a "has this parameter ever had a non-zero gradient" flag) and the loss of the step, written into a
    device buffer; the host reads that buffer every ``check_every_n_steps`` steps (one ``.tolist()``)
    and at the end. Learning rates are read from the optimizer on the host (no device access). It
    collects on global rank zero only, acts on nothing and so needs no communication under DDP.

    Args:
        check_every_n_steps: how often recorded values are read and the rules run during training.
        groups: layer grouping for the gradient rules (see :class:`GradNormMonitor`).
        val_metric: the validation loss key in ``trainer.callback_metrics``; ``"auto"`` takes the first
            key containing both ``val`` and ``loss``.
        thresholds: overrides of :data:`DEFAULT_THRESHOLDS`, and the optional
            :data:`LOSS_CAPACITY_THRESHOLDS`.
        ignore: codes not to report.
        max_warnings: warnings printed during training (the summary always lists everything).
        filename: name of the JSON report in the log dir; ``None`` to write none.
        capacity_keys: ``"auto"`` (accuracy keys when logged, else losses), ``"loss"``, or a pair
            ``(train_key, val_key)`` of higher-is-better metrics in [0, 1] for the capacity verdict.

    Example:
        >>> import lightning as L
        >>> doctor = TrainingDoctor(ignore=["WARMUP_TOO_LONG"], thresholds={"overfit_rise": 0.2})
        >>> trainer = L.Trainer(callbacks=[doctor], logger=False, enable_progress_bar=False)
        >>> doctor.codes
        []
    """


    def __init__(
        self,
        check_every_n_steps: int = 100,
        groups: str | int | Mapping[str, str | Sequence[str]] = "auto",
        val_metric: str = "auto",
        thresholds: Mapping[str, float] | None = None,
        ignore: Sequence[str] = (),
        max_warnings: int = 5,
        filename: str | None = "doctor.json",
        capacity_keys: str | Sequence[str] = "auto",
    ) -> None:
        super().__init__()
        self.check_every_n_steps = int(check_int(_OWNER, "check_every_n_steps", check_every_n_steps))  # type: ignore[arg-type]
        self.grouping = Grouping(groups, f"{_OWNER}.groups")
        if not isinstance(val_metric, str) or not val_metric:
            raise ConfigError(f"{_OWNER}.val_metric", val_metric, "'auto' or a key of trainer.callback_metrics")
        self.val_metric = val_metric
        self.thresholds = _check_thresholds(thresholds or {})
        self.ignore = _check_ignore(ignore)
        self.max_warnings = int(check_int(_OWNER, "max_warnings", max_warnings, minimum=0))  # type: ignore[arg-type]
        if filename is not None and (not isinstance(filename, str) or not filename or os.sep in filename):
            raise ConfigError(f"{_OWNER}.filename", filename, "a file name (no folder) or None")
        self.filename = filename
        self.capacity_keys = _check_capacity_keys(capacity_keys)

        # persistent state
        self.series = Series()
        self.group_names: list[str] = []
        self.val: list[tuple[int, int, float, float]] = []  # (step, epoch, val loss, train loss median)
        self.val_key: str | None = None
        self.monitored: dict[str, list[float]] = {}  # plateau monitors: key -> values per check
        self.found: dict[str, Diagnosis] = {}
        self.warned: list[str] = []
        self.ever_grad: dict[str, bool] = {}  # trainable parameter name -> ever had a non-zero gradient
        self.optimizer_steps = 0
        self.planned_steps: int | None = None
        self.planned_epochs: int | None = None
        self._schedules: list[ScheduleFacts] = []
        self.score_metrics: dict[str, float] = {}  # last train/val accuracy values seen (capacity verdict)
        self.capacity: Capacity | None = None
        self.convergence: Convergence | None = None

        # working state
        self._active = True
        self._recorder = StepRecorder()
        self._log_dir: str | None = None
        self._last_val_count = 0
        self._sharpness: list[Any] = []

    # -- identity and state ----------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(filename=self.filename)

    @property
    def schedules(self) -> list[ScheduleFacts]:
        """The run's LR schedulers as the schedule rules see them (read at the start of the fit).

        Assigning a list of mappings with :class:`ScheduleFacts`'s field names converts them.
        """
        return self._schedules

    @schedules.setter
    def schedules(self, value: Iterable[ScheduleFacts | Mapping[str, Any]]) -> None:
        self._schedules = [schedule_facts(v) for v in value]

    @property
    def diagnoses(self) -> list[Diagnosis]:
        """Findings so far, most severe first."""
        order = {"error": 0, "warning": 1, "info": 2}
        return sorted(self.found.values(), key=lambda d: (order.get(d.severity, 3), d.first_step, d.code))

    @property
    def codes(self) -> list[str]:
        return [d.code for d in self.diagnoses]

    def state_dict(self) -> dict[str, Any]:
        self._flush()
        return {
            "series": asdict(self.series),
            "group_names": list(self.group_names),
            "val": [list(v) for v in self.val],
            "val_key": self.val_key,
            "monitored": {k: list(v) for k, v in self.monitored.items()},
            "found": {k: asdict(d) for k, d in self.found.items()},
            "warned": list(self.warned),
            "ever_grad": dict(self.ever_grad),
            "optimizer_steps": self.optimizer_steps,
            "score_metrics": dict(self.score_metrics),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.series = Series(**state_dict.get("series", {}))
        self.group_names = list(state_dict.get("group_names", []))
        self.val = [tuple(v) for v in state_dict.get("val", [])]  # type: ignore[misc]
        self.val_key = state_dict.get("val_key")
        self.monitored = {k: list(v) for k, v in state_dict.get("monitored", {}).items()}
        self.found = {k: Diagnosis(**d) for k, d in state_dict.get("found", {}).items()}
        self.warned = list(state_dict.get("warned", []))
        self.ever_grad = dict(state_dict.get("ever_grad", {}))
        self.optimizer_steps = int(state_dict.get("optimizer_steps", 0))
        self.score_metrics = dict(state_dict.get("score_metrics", {}))

    # -- lifecycle -------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit" and self.filename:
            self._log_dir = resolve_log_dir(trainer)  # every rank: it broadcasts

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        planned = _planned_length(trainer)  # every rank: it may set up the training data, a collective under DDP
        self._active = bool(trainer.is_global_zero)
        if not self._active:
            return
        self.planned_steps, self.planned_epochs = planned
        in_first = {id(p) for p in optimizer_params(trainer.optimizers[0])} if trainer.optimizers else set()
        for name, p in pl_module.named_parameters():
            if p.requires_grad and id(p) in in_first:
                self.ever_grad.setdefault(name, False)
        self._sharpness = sharpness_monitors(trainer.callbacks)
        found, self.schedules = rules.schedules_at_start(
            [describe_schedule(cfg) for cfg in trainer.lr_scheduler_configs], self.planned_steps,
            self.planned_epochs, self.thresholds)
        self._add_all(found)
        self._emit_new(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self._active:
            self._flush()
            self._write(trainer)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._active:
            return
        self._flush()
        self._read_scores(trainer.callback_metrics)
        self._run_rules(end=True)
        self._emit_new(trainer)
        self._summary(trainer)

    # -- collection ------------------------------------------------------------------------------
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Tensor) -> None:
        if self._active:
            self._recorder.add_loss(loss)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if not self._active:
            return
        opt = unwrap_optimizer(optimizer)
        if trainer.optimizers and opt is not unwrap_optimizer(trainer.optimizers[0]):
            return  # the first optimizer carries the run's story; others would double-count steps
        stats = grad_stats(trainer, opt)
        rec = self._recorder
        if not len(stats):
            rec.drop_loss()
            return
        if rec.layout_changed(stats):  # the set of parameters with gradients changed: fold and restart
            self._flush()
            names, _ = stats.group_index(self.grouping)
            if names != self.group_names:
                self.group_names = names
            rec.restart(stats, len(self.group_names), self.check_every_n_steps)
        rec.record(int(trainer.global_step), read_lr(opt), stats, self.grouping, trainer)
        self.optimizer_steps += 1
        if rec.pending >= self.check_every_n_steps:
            self._flush()
            self._run_rules(end=False)
            self._emit_new(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._active or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        key = self.val_key or self._find_val_key(metrics)
        self._flush()
        self._read_scores(metrics)
        if key is not None and key in metrics:
            self.val_key = key
            value = float(metrics[key])
            since = self.val[-1][0] if self.val else -1
            recent = [v for s, v in zip(self.series.steps, self.series.loss) if s > since and math.isfinite(v)]
            train = statistics.median(recent) if recent else math.nan
            self.val.append((int(trainer.global_step), int(trainer.current_epoch), value, train))
        for sched in self.schedules:
            mon = sched.monitor
            if mon and mon in metrics:
                self.monitored.setdefault(mon, []).append(float(metrics[mon]))
        if len(self.val) > self._last_val_count:
            self._last_val_count = len(self.val)
            self._run_rules(end=False)
            self._emit_new(trainer)

    def _find_val_key(self, metrics: Mapping[str, Any]) -> str | None:
        if self.val_metric != "auto":
            return self.val_metric
        for key in metrics:
            low = key.lower()
            if "val" in low and "loss" in low:
                return key
        return None

    def _flush(self) -> None:
        """Read the device records into the host history (the one sync of a check)."""
        self._recorder.flush(self.series, self.ever_grad)

    def _read_scores(self, metrics: Mapping[str, Any]) -> None:
        """Remember the latest train/validation accuracy (or ``capacity_keys``) values, when both are logged."""
        if self.capacity_keys == "loss":
            return
        keys = list(metrics)
        if isinstance(self.capacity_keys, tuple):
            train_key, val_key = self.capacity_keys
        else:
            train_key, val_key = rules.score_key(keys, "train"), rules.score_key(keys, "val")
        if train_key in metrics and val_key in metrics:
            self.score_metrics = {"train_key": train_key, "val_key": val_key,
                                  "train": float(metrics[train_key]), "val": float(metrics[val_key])}

    # -- rules -------------------------------------------------------------------------------------
    def _add(self, finding: Finding | None) -> None:
        """Keep ``finding`` (unless its code is ignored); a code found again keeps its first step."""
        if finding is None or finding.code in self.ignore:
            return
        old = self.found.get(finding.code)
        self.found[finding.code] = finding.diagnosis(None if old is None else min(finding.first, old.first_step))

    def _add_all(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            self._add(finding)

    def diagnose(self) -> list[Diagnosis]:
        """Run every rule on what was recorded so far (as at the end of a fit) and return the findings."""
        self._flush()
        self._run_rules(end=True)
        return self.diagnoses

    def _run_rules(self, end: bool) -> None:
        """Run the rules of :mod:`._doctor_rules` in order; a rule that defers to another finding runs after it."""
        s, th = self.series, self.thresholds
        if not s.steps:
            return
        warm = rules.warmup_end(s.lr)
        nonfinite = rules.nonfinite(s)
        self._add(nonfinite)
        if nonfinite is None:  # gradients on the way to a NaN say nothing the NaN does not
            self._add(rules.gradients(s, th, warm, self.group_names))
            explained = bool({"VANISHING_GRADIENTS", "EXPLODING_GRADIENTS"} & set(self.found))
            self._add(rules.loss_trends(s, th, warm, end, explained, self.ever_grad))
        self._add(rules.zero_gradients(self.ever_grad, self.optimizer_steps, s.steps, th))
        self._apply_overfitting()
        self._add_all(rules.sharpness(self._sharpness))
        if end:
            self._add_all(rules.schedules_at_end(s, th, self.schedules, self.planned_steps, self.monitored,
                                                 set(self.found)))
            self.convergence = convergence_state(s.loss, window=th["convergence_window"], fast=th["converging_fast"],
                                                 converged=th["converged"], stalled=th["not_decreasing"])
            self.capacity = rules.capacity(self.score_metrics, self.capacity_keys, s.loss, self.val, self.val_key, th)
            self._add(rules.underfitting(self.capacity, self.convergence, s.steps,
                                         "LOSS_NOT_DECREASING" in self.found))

    def _apply_overfitting(self) -> None:
        action, value = rules.overfitting(self.val, self.val_key, self.thresholds, self.found.get("OVERFITTING"))
        if action == "drop":
            del self.found["OVERFITTING"]
        elif action == "add":
            self._add(value)  # type: ignore[arg-type]
        elif action == "replace":
            self.found["OVERFITTING"] = value  # type: ignore[assignment]

    # -- output ------------------------------------------------------------------------------------
    def _emit_new(self, trainer: Any) -> None:
        for d in self.diagnoses:
            if d.code in self.warned:
                continue
            self.warned.append(d.code)
            if len(self.warned) <= self.max_warnings:
                rank_zero_warn(f"{_OWNER}: {d.line()}", category=RuntimeWarning)
            tb = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
            for lg in tb:
                lg.experiment.add_text(f"doctor/{d.code}", d.line(), global_step=int(trainer.global_step))

    def _verdict_lines(self) -> list[str]:
        return report.verdict_lines(self.capacity, self.convergence)

    def table(self) -> str:
        """The findings as a plain-text table (what the end-of-fit summary prints)."""
        return report.table(self.diagnoses, self._verdict_lines())

    def markdown(self) -> str:
        """The findings as a Markdown table (what goes to TensorBoard)."""
        return report.markdown(self.diagnoses, self._verdict_lines())

    def _summary(self, trainer: Any) -> None:
        rank_zero_info(self.table())
        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                lg.experiment.add_text("doctor/summary", self.markdown(), global_step=int(trainer.global_step))
        self._write(trainer)

    def _write(self, trainer: Any) -> None:
        if not self.filename or self._log_dir is None:
            return
        atomic_write_json(os.path.join(self._log_dir, self.filename), strict=True, obj=report.report_json(
            self.diagnoses, self.optimizer_steps, self.planned_steps, self.capacity, self.convergence))

    def __repr__(self) -> str:
        return f"TrainingDoctor(check_every_n_steps={self.check_every_n_steps}, ignore={sorted(self.ignore)})"


# -- argument checks -------------------------------------------------------------------------------------
def _planned_length(trainer: Any) -> tuple[int | None, int | None]:
    """``(optimizer steps, epochs)`` the run is planned for, from the count the mixin and the finder use
    (each epoch with its own gradient accumulation); ``None`` where the length is unknown.

    Counting may set up the training loaders (as the mixin's ``configure_optimizers`` does), whose
    length check is a collective under DDP: call it on every rank.
    """
    epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
    try:
        total, per_epoch = optimizer_steps(trainer)
    except ConfigError:  # no length (max_time only, an endless loader without max_steps)
        return None, epochs
    return total, (len(per_epoch) if per_epoch else epochs)


def _check_thresholds(thresholds: Mapping[str, Any]) -> dict[str, float]:
    """:data:`DEFAULT_THRESHOLDS` with ``thresholds`` (known keys, positive numbers) applied."""
    out = dict(DEFAULT_THRESHOLDS)
    known = [*DEFAULT_THRESHOLDS, *LOSS_CAPACITY_THRESHOLDS]
    for key, value in thresholds.items():
        if key not in known:
            raise ConfigError(f"{_OWNER}.thresholds.{key}", value, "one of " + ", ".join(known),
                              suggestions=did_you_mean(key, known))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{_OWNER}.thresholds.{key}", value, "a positive number")
        out[key] = float(value)
    return out


def _check_ignore(ignore: Sequence[str]) -> set[str]:
    bad = [c for c in ignore if c not in CODES]
    if isinstance(ignore, str) or bad:
        raise ConfigError(f"{_OWNER}.ignore", bad[0] if bad else ignore, "a list of codes among " + ", ".join(CODES),
                          suggestions=did_you_mean(bad[0], CODES) if bad else ())
    return set(ignore)


def _check_capacity_keys(value: Any) -> str | tuple[str, str]:
    if value in ("auto", "loss"):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(k, str) and k for k in value):
        return (value[0], value[1])
    raise ConfigError(f"{_OWNER}.capacity_keys", value, "'auto', 'loss' or a pair (train_key, val_key)")
