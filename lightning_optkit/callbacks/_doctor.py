"""TrainingDoctor: the troubleshooting table, turned into automatic diagnoses of a running fit."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ..config import ConfigError, did_you_mean
from ._grad_stats import Grouping, grad_stats, optimizer_params, unwrap_optimizer
from ._health_utils import check_int, fmt, resolve_log_dir, write_json_atomic
from ._verdicts import (
    Capacity,
    Convergence,
    capacity_verdict,
    convergence_state,
    sharpness_monitors,
    sharpness_summary,
)

__all__ = ["CODES", "DEFAULT_THRESHOLDS", "LOSS_CAPACITY_THRESHOLDS", "Diagnosis", "TrainingDoctor"]

_OWNER = "TrainingDoctor"

#: Every diagnosis code: (severity, title). Codes are stable; new ones are only ever added.
CODES: dict[str, tuple[str, str]] = {
    "NONFINITE_LOSS": ("error", "the loss became NaN or infinite"),
    "LOSS_NOT_DECREASING": ("warning", "the loss does not decrease after the warm-up"),
    "LOSS_DIVERGING": ("error", "the loss is rising (diverging)"),
    "LOSS_OSCILLATING": ("warning", "the loss oscillates without making progress"),
    "OVERFITTING": ("warning", "the validation loss rises while the training loss falls"),
    "EXPLODING_GRADIENTS": ("error", "gradients explode"),
    "VANISHING_GRADIENTS": ("warning", "gradients vanish in some layer groups"),
    "ZERO_GRADIENTS": ("warning", "some trainable parameters never receive a gradient"),
    "LR_NEVER_DECAYS": ("warning", "the learning rate never decays by the end of training"),
    "WARMUP_TOO_LONG": ("warning", "the warm-up takes most of training"),
    "SCHEDULE_INTERVAL_MISMATCH": ("warning", "a schedule is stepped in the wrong unit (step vs epoch)"),
    "PLATEAU_NEVER_FIRES": ("warning", "the plateau scheduler never reduces the learning rate"),
    "UNDERFITTING": ("warning", "training and validation are both poor and no longer improving"),
    "ABOVE_STABILITY_EDGE": ("warning", "the sharpness is above the optimizer's stability edge"),
}

#: Thresholds of the rules; override any of them with ``TrainingDoctor(thresholds={...})``.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "min_steps": 30,             # post-warm-up steps before loss-trend rules speak
    "not_decreasing": 0.05,      # relative decrease below which the loss "does not decrease"
    "diverging_ratio": 2.0,      # end / best running median for "diverging"
    "oscillation": 0.3,          # 10-90% spread of the smoothed loss, over the initial loss, for "oscillating"
    "overfit_rise": 0.10,        # relative rise of the validation loss above its minimum
    "overfit_train_fall": 0.05,  # relative fall of the training loss over the same span
    "explode_depth": 50.0,       # input-side / output-side gradient norm for "exploding"
    "explode_growth": 1e3,       # late / early total gradient norm for "exploding"
    "vanish_depth": 1e-4,        # input-side / output-side gradient norm for "vanishing"
    "zero_grad_steps": 20,       # optimizer steps without a gradient before "zero gradients"
    "lr_decay": 0.9,             # final / peak LR above which "never decays"
    "warmup_fraction": 0.5,      # warm-up / training above which "too long"
    "capacity_high": 0.9,        # train score above which a low validation score means "overfitting"
    "capacity_low": 0.7,         # score below which train / validation count as "poor"
    "capacity_fit_gap": 0.05,    # |train - validation| score gap below which the model "fits"
    "convergence_window": 0.2,   # fraction of the recorded steps compared with the same span before
    "converging_fast": 0.1,      # relative improvement over the window for "converging fast"
    "converged": 0.01,           # relative improvement below which the loss has "converged"
}
#: Optional thresholds of the loss-score capacity verdict (``1 - loss / initial loss``), unset by default:
#: a converged regression at its noise floor keeps much of its initial loss, so the accuracy
#: thresholds mean nothing there. Unset, that verdict is information only (no UNDERFITTING code);
#: set any of them to act on it (the others then default to their ``capacity_*`` counterparts).
LOSS_CAPACITY_THRESHOLDS: tuple[str, ...] = ("capacity_loss_high", "capacity_loss_low", "capacity_loss_fit_gap")

REMEDIES: dict[str, str] = {
    "NONFINITE_LOSS": "lower the learning rate; add gradient clipping (AutoClip, or Trainer(gradient_clip_val=1.0)); "
                      "check the data for NaN/inf and bad labels; with fp16 AMP try bf16; NonFiniteGuard skips or "
                      "rolls back such steps",
    "LOSS_NOT_DECREASING": "raise the learning rate (run find_lr / LRFinder); check that the parameters you train have "
                           "requires_grad=True and reach the optimizer; check labels and inputs (shuffled or "
                           "mismatched labels, unnormalized inputs, a detached graph)",
    "LOSS_DIVERGING": "lower the learning rate (or lengthen the warm-up); add gradient clipping (AutoClip); use a "
                      "larger batch",
    "LOSS_OSCILLATING": "lower the learning rate; use a larger batch (or gradient accumulation); add momentum "
                        "damping / Adam's beta2 closer to 1",
    "OVERFITTING": "regularize (weight decay, dropout, data augmentation), stop early (EarlyStopping on the "
                   "validation loss, keep the best checkpoint), get more data or use a smaller model",
    "EXPLODING_GRADIENTS": "add normalization layers or residual connections, use a smaller initialization, clip "
                           "gradients (AutoClip), lower the learning rate",
    "VANISHING_GRADIENTS": "use ReLU/GELU instead of sigmoid/tanh, add residual connections and normalization, use "
                           "He/Xavier initialization, or make the network shallower",
    "ZERO_GRADIENTS": "parameters not used in forward (remove them, or freeze them with requires_grad=False), a "
                      "detached graph (.detach(), torch.no_grad() in forward), or dead ReLUs (lower LR, LeakyReLU/GELU)",
    "LR_NEVER_DECAYS": "make the schedule's length match training (T_max / total_steps = the run's optimizer steps), "
                       "or let an optim: scheduler block resolve it from the trainer",
    "WARMUP_TOO_LONG": "shorten the warm-up to 1-10% of training (warmup: 5%)",
    "SCHEDULE_INTERVAL_MISMATCH": "step the scheduler in the unit its length is in: interval='step' for lengths in "
                                  "optimizer steps, interval='epoch' for lengths in epochs",
    "PLATEAU_NEVER_FIRES": "lower patience (or threshold) so it can fire within the run, check mode ('min' for a "
                           "loss) and that the monitored metric is logged, or use a fixed schedule",
    "UNDERFITTING": "add capacity (wider/deeper model, fewer constraints: less weight decay, dropout or "
                    "augmentation), train longer or at a higher learning rate, and check the features carry the signal",
    "ABOVE_STABILITY_EDGE": "lower the learning rate below the edge (for SGD 2 / lambda_max; see the evidence), or "
                            "lengthen the warm-up so sharpness adapts; add gradient clipping if the loss spikes",
}

_HORIZON_ATTRS = (("OneCycleLR", "total_steps"), ("CosineAnnealingLR", "T_max"), ("LinearLR", "total_iters"),
                  ("PolynomialLR", "total_iters"), ("ConstantLR", "total_iters"))


@dataclass
class Diagnosis:
    """One finding: a stable ``code``, its ``severity``, the step range, the evidence and a remedy.

    Example:
        >>> d = Diagnosis("ZERO_GRADIENTS", "warning", "some trainable parameters never receive a gradient",
        ...               0, 99, {"count": 2}, "2 of 8 parameters had no gradient", "remove unused layers")
        >>> d.line()
        '[ZERO_GRADIENTS] some trainable parameters never receive a gradient (steps 0-99): 2 of 8 parameters had no gradient. Remedy: remove unused layers.'
    """

    code: str
    severity: str
    title: str
    first_step: int
    last_step: int
    evidence: dict[str, Any]
    message: str
    remedy: str

    def line(self) -> str:
        return f"[{self.code}] {self.title} (steps {self.first_step}-{self.last_step}): {self.message}. " \
               f"Remedy: {self.remedy}."


@dataclass
class _Series:
    """Per-optimizer-step history, decimated (every other point dropped) when it outgrows ``limit``."""

    limit: int = 20_000
    stride: int = 1
    count: int = 0
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    gnorm: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    groups: list[list[float]] = field(default_factory=list)

    def add(self, step: int, loss: float, gnorm: float, lr: float, groups: list[float]) -> None:
        self.count += 1
        if (self.count - 1) % self.stride:
            return
        self.steps.append(step)
        self.loss.append(loss)
        self.gnorm.append(gnorm)
        self.lr.append(lr)
        self.groups.append(groups)
        if len(self.steps) > self.limit:
            for name in ("steps", "loss", "gnorm", "lr", "groups"):
                setattr(self, name, getattr(self, name)[::2])
            self.stride *= 2


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
        self.thresholds = dict(DEFAULT_THRESHOLDS)
        known = [*DEFAULT_THRESHOLDS, *LOSS_CAPACITY_THRESHOLDS]
        for key, value in (thresholds or {}).items():
            if key not in known:
                raise ConfigError(f"{_OWNER}.thresholds.{key}", value, "one of " + ", ".join(known),
                                  suggestions=did_you_mean(key, known))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{_OWNER}.thresholds.{key}", value, "a positive number")
            self.thresholds[key] = float(value)
        bad = [c for c in ignore if c not in CODES]
        if isinstance(ignore, str) or bad:
            raise ConfigError(f"{_OWNER}.ignore", bad[0] if bad else ignore, "a list of codes among " + ", ".join(CODES),
                              suggestions=did_you_mean(bad[0], CODES) if bad else ())
        self.ignore = set(ignore)
        self.max_warnings = int(check_int(_OWNER, "max_warnings", max_warnings, minimum=0))  # type: ignore[arg-type]
        if filename is not None and (not isinstance(filename, str) or not filename or os.sep in filename):
            raise ConfigError(f"{_OWNER}.filename", filename, "a file name (no folder) or None")
        self.filename = filename
        self.capacity_keys = _check_capacity_keys(capacity_keys)

        # persistent state
        self.series = _Series()
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
        self.schedules: list[dict[str, Any]] = []
        self.score_metrics: dict[str, float] = {}  # last train/val accuracy values seen (capacity verdict)
        self.capacity: Capacity | None = None
        self.convergence: Convergence | None = None

        # working state
        self._active = True
        self._ring: Tensor | None = None
        self._ring_meta: list[tuple[int, Any, bool]] = []  # (step, lr, has a loss) per row
        self._ring_cols = 0
        self._loss_acc: Tensor | None = None
        self._nonzero: Tensor | None = None
        self._nonzero_names: list[str] = []
        self._layout_key: int | None = None
        self._log_dir: str | None = None
        self._last_val_count = 0
        self._sharpness: list[Any] = []

    # -- identity and state ----------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(filename=self.filename)

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
        self.series = _Series(**state_dict.get("series", {}))
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
        self._active = bool(trainer.is_global_zero)
        if not self._active:
            return
        planned = getattr(trainer, "estimated_stepping_batches", None)
        self.planned_steps = int(planned) if isinstance(planned, (int, float)) and math.isfinite(planned) else None
        epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        if self.planned_steps and trainer.num_training_batches not in (0, float("inf")):
            per_epoch = max(1, math.ceil(trainer.num_training_batches / max(1, trainer.accumulate_grad_batches)))
            by_steps = math.ceil(self.planned_steps / per_epoch)
            epochs = by_steps if epochs is None else min(epochs, by_steps)
        self.planned_epochs = epochs
        in_first = {id(p) for p in optimizer_params(trainer.optimizers[0])} if trainer.optimizers else set()
        for name, p in pl_module.named_parameters():
            if p.requires_grad and id(p) in in_first:
                self.ever_grad.setdefault(name, False)
        self.schedules = [_describe_schedule(cfg) for cfg in trainer.lr_scheduler_configs]
        self._sharpness = sharpness_monitors(trainer.callbacks)
        self._check_schedules_at_start()
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
            value = loss.detach().float().reshape(())
            self._loss_acc = value if self._loss_acc is None else self._loss_acc + value

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if not self._active:
            return
        opt = unwrap_optimizer(optimizer)
        if trainer.optimizers and opt is not unwrap_optimizer(trainer.optimizers[0]):
            return  # the first optimizer carries the run's story; others would double-count steps
        stats = grad_stats(trainer, opt)
        if not len(stats):
            self._loss_acc = None
            return
        layout = id(stats._layout)
        if layout != self._layout_key:  # the set of parameters with gradients changed: fold and restart
            self._flush()
            self._layout_key = layout
            names, _ = stats.group_index(self.grouping)
            if names != self.group_names:
                self.group_names = names
            self._nonzero = torch.zeros(len(stats), dtype=torch.bool, device=stats.device)
            self._nonzero_names = list(stats.names)
            self._ring_cols = 2 + len(self.group_names)
            self._ring = torch.zeros(self.check_every_n_steps + 1, self._ring_cols, device=stats.device)
        assert self._ring is not None and self._nonzero is not None
        has_loss = self._loss_acc is not None  # no backward (training_step returned None): no loss to record
        loss = self._loss_acc if has_loss else torch.zeros((), device=stats.device)
        self._loss_acc = None
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and getattr(scaler, "_scale", None) is not None:
            loss = loss / scaler._scale.to(loss.device)
        norms = stats.norms(2.0)
        self._nonzero |= norms != 0  # NaN != 0 counts as "had a gradient"
        _, groups = stats.group_norms(self.grouping, 2.0)
        n = len(self._ring_meta)
        self._ring[n, 0] = loss.to(stats.device)
        self._ring[n, 1] = stats.total(2.0)
        self._ring[n, 2:] = groups
        lr = max((g["lr"] for g in opt.param_groups), key=float, default=math.nan) if not any(
            isinstance(g["lr"], Tensor) for g in opt.param_groups) else opt.param_groups[0]["lr"]
        self._ring_meta.append((int(trainer.global_step), lr, has_loss))  # a tensor LR is read at the check
        self.optimizer_steps += 1
        if len(self._ring_meta) >= self.check_every_n_steps:
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
            mon = sched.get("monitor")
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
        if self._ring is not None and self._ring_meta:
            rows = self._ring[: len(self._ring_meta)].tolist()
            for (step, lr, has_loss), row in zip(self._ring_meta, rows):
                if has_loss:
                    self.series.add(step, row[0], row[1], float(lr), row[2:])
            self._ring_meta = []
        if self._nonzero is not None and self._nonzero_names:
            for name, seen in zip(self._nonzero_names, self._nonzero.tolist()):
                if seen:
                    self.ever_grad[name] = True

    # -- rules -------------------------------------------------------------------------------------
    def _add(self, code: str, first: int, last: int, evidence: dict[str, Any], message: str) -> None:
        if code in self.ignore:
            return
        severity, title = CODES[code]
        old = self.found.get(code)
        if old is not None:
            first = min(first, old.first_step)
        self.found[code] = Diagnosis(code, severity, title, int(first), int(last), evidence, message, REMEDIES[code])

    def diagnose(self) -> list[Diagnosis]:
        """Run every rule on what was recorded so far (as at the end of a fit) and return the findings."""
        self._flush()
        self._run_rules(end=True)
        return self.diagnoses

    def _run_rules(self, end: bool) -> None:
        s = self.series
        if not s.steps:
            return
        warm = self._warmup_end()
        nonfinite = self._rule_nonfinite()
        if not nonfinite:  # gradients on the way to a NaN say nothing the NaN does not
            self._rule_gradients(warm)
            self._rule_loss_trends(warm, end)
        self._rule_zero_grads()
        self._rule_overfitting()
        self._rule_sharpness()
        if end:
            self._rule_schedules_at_end()
            self._rule_capacity()

    def _warmup_end(self) -> int:
        """Index into the series where the LR first reaches its peak, when it started well below it."""
        lr = [v for v in self.series.lr if math.isfinite(v)]
        if len(lr) < 2:
            return 0
        peak = max(lr)
        if peak <= 0 or lr[0] >= 0.5 * peak:
            return 0
        return next(i for i, v in enumerate(lr) if v >= 0.98 * peak)

    def _rule_nonfinite(self) -> bool:
        """A non-finite loss, or a non-finite gradient with a finite loss here (under DDP: another rank's
        loss; or a backward op such as sqrt at 0)."""
        s = self.series
        bad = [i for i, (v, g) in enumerate(zip(s.loss, s.gnorm)) if not (math.isfinite(v) and math.isfinite(g))]
        if not bad:
            return False
        i = bad[0]
        before = [v for v in s.loss[:i] if math.isfinite(v)]
        loss_bad = sum(not math.isfinite(s.loss[j]) for j in bad)
        ev = {"first_step": s.steps[i], "nonfinite_steps": len(bad) * s.stride, "nonfinite_loss_steps": loss_bad * s.stride,
              "lr_at_first": s.lr[i], "last_finite_loss": before[-1] if before else None,
              "grad_norm_before": s.gnorm[i - 1] if i > 0 else None}
        what = "the loss is non-finite" if not math.isfinite(s.loss[i]) else (
            "the gradient is non-finite although this rank's loss is finite (another rank's batch, or an op "
            "whose backward is not finite)")
        msg = f"{what} at step {s.steps[i]} (and {len(bad) * s.stride - 1} more steps) with lr={fmt(s.lr[i])}"
        if before:
            msg += f"; the last finite loss was {fmt(before[-1])}"
            first_loss = before[0]
            if before[-1] > 10 * abs(first_loss) + 1e-12:
                msg += f" (up from {fmt(first_loss)}: it diverged first)"
        self._add("NONFINITE_LOSS", s.steps[i], s.steps[bad[-1]], ev, msg)
        return True

    def _rule_loss_trends(self, warm: int, end: bool) -> None:
        """Diverging (a sustained rise well above the best), oscillating (large swings of the smoothed
        loss without a trend) and, at the end, not decreasing (no progress after the warm-up).

        The per-step loss is smoothed by running medians over 5% of the post-warm-up steps (at least
        5), which removes the batch-to-batch noise that small batches have even when all is well.
        """
        s, th = self.series, self.thresholds
        skip = max(warm, len(s.loss) // 20)
        idx = [i for i in range(skip, len(s.loss)) if math.isfinite(s.loss[i])]
        if len(idx) < th["min_steps"] / s.stride:
            return
        vals = [s.loss[i] for i in idx]
        n = len(vals)
        w = max(5, n // 20)
        hop = max(1, w // 2)
        starts = list(range(0, n - w + 1, hop))
        smooth = [statistics.median(vals[j:j + w]) for j in starts]
        head = [v for v in s.loss[:5] if math.isfinite(v)]
        initial = statistics.median(head) if head else smooth[0]
        start, final = smooth[0], smooth[-1]
        k_best = min(range(len(smooth)), key=smooth.__getitem__)
        best = smooth[k_best]
        trend = _spearman(vals[n // 2:])
        half = sorted(smooth[len(smooth) // 2:])
        amp = (half[int(0.9 * (len(half) - 1))] - half[int(0.1 * (len(half) - 1))]) / max(abs(initial), 1e-12)
        first, last = s.steps[idx[0]], s.steps[idx[-1]]
        best_step = s.steps[idx[starts[k_best]]]
        lr_now = s.lr[idx[-1]]
        if final - best > (th["diverging_ratio"] - 1.0) * abs(best) and trend > 0.5 and final > start:
            self._add("LOSS_DIVERGING", best_step, last,
                      {"best_median": best, "best_step": best_step, "final_median": final, "start_median": start,
                       "trend": trend, "lr": lr_now},
                      f"the loss fell to a median of {fmt(best)} around step {best_step} and has been rising since, "
                      f"to {fmt(final)} (x{final / max(abs(best), 1e-12):.3g}) at lr={fmt(lr_now)}")
            return
        if amp > th["oscillation"] and -0.5 < trend <= 0.5:
            self._add("LOSS_OSCILLATING", s.steps[idx[n // 2]], last,
                      {"swing_over_initial": amp, "initial": initial, "final_median": final, "trend": trend,
                       "lr": lr_now},
                      f"over the second half the smoothed loss swings by {amp:.2f}x the initial loss "
                      f"({fmt(initial)}) without a downward trend (ends at {fmt(final)}), at lr={fmt(lr_now)}")
            return
        if not end or {"VANISHING_GRADIENTS", "EXPLODING_GRADIENTS"} & set(self.found):
            return  # the gradient finding already explains a stalled loss
        ref = max(start, initial)
        drop = (ref - final) / max(abs(ref), 1e-12)
        if drop < th["not_decreasing"]:
            frozen = [n for n, seen in self.ever_grad.items() if not seen]
            ev = {"initial_median": initial, "start_median": start, "final_median": final, "relative_drop": drop,
                  "lr": lr_now, "warmup_steps": s.steps[warm] if warm else 0}
            msg = (f"after the warm-up the loss went from {fmt(start)} to {fmt(final)} "
                   f"({drop * 100:.1f}% lower; {fmt(initial)} at the start) at lr={fmt(lr_now)}")
            if frozen:
                msg += f"; {len(frozen)} trainable parameters never got a gradient"
                ev["no_gradient"] = frozen[:10]
            self._add("LOSS_NOT_DECREASING", first, last, ev, msg)

    def _rule_gradients(self, warm: int) -> None:
        s, th = self.series, self.thresholds
        names = self.group_names
        stop = next((i for i, v in enumerate(s.loss) if not math.isfinite(v)), len(s.loss))  # before any NaN
        rows = [(i, g) for i, g in enumerate(s.groups[:stop]) if i >= warm and len(g) == len(names)]
        if len(rows) < max(5, th["min_steps"] / 3 / s.stride):
            return
        first, last = s.steps[rows[0][0]], s.steps[rows[-1][0]]
        # growth over time of the total norm
        norms = [s.gnorm[i] for i, _ in rows if math.isfinite(s.gnorm[i]) and s.gnorm[i] > 0]
        if len(norms) >= 10:
            q = max(3, len(norms) // 5)
            early, late = statistics.median(norms[:q]), statistics.median(norms[-q:])
            if late > th["explode_growth"] * early:
                self._add("EXPLODING_GRADIENTS", first, last, {"early_median": early, "late_median": late},
                          f"the total gradient norm grew from a median of {fmt(early)} to {fmt(late)} "
                          f"(x{late / early:.3g})")
                return
        # depth profile: median norm per group, input side vs output side
        med = []
        for j, name in enumerate(names):
            vals = [g[j] for _, g in rows if math.isfinite(g[j]) and g[j] > 0]
            if vals:
                med.append((name, statistics.median(vals)))
        if len(med) < 3:
            return
        third = max(1, len(med) // 3)
        inp = statistics.median(v for _, v in med[:third])
        out = statistics.median(v for _, v in med[-third:])
        ratio = inp / max(out, 1e-30)
        profile = {n: v for n, v in med}
        if ratio > th["explode_depth"]:
            top = max(med, key=lambda t: t[1])
            self._add("EXPLODING_GRADIENTS", first, last, {"input_side": inp, "output_side": out, "ratio": ratio,
                                                           "group_medians": profile},
                      f"input-side layer groups get x{ratio:.3g} larger gradients than the output side "
                      f"({fmt(inp)} vs {fmt(out)}; largest: {top[0]} at {fmt(top[1])})")
        elif ratio < th["vanish_depth"]:
            low = min(med, key=lambda t: t[1])
            self._add("VANISHING_GRADIENTS", first, last, {"input_side": inp, "output_side": out, "ratio": ratio,
                                                           "group_medians": profile},
                      f"input-side layer groups get x{ratio:.3g} the gradient of the output side "
                      f"({fmt(inp)} vs {fmt(out)}; smallest: {low[0]} at {fmt(low[1])})")

    def _rule_zero_grads(self) -> None:
        if self.optimizer_steps < self.thresholds["zero_grad_steps"]:
            return
        never = [n for n, seen in self.ever_grad.items() if not seen]
        if never:
            shown = ", ".join(never[:5]) + (f" and {len(never) - 5} more" if len(never) > 5 else "")
            self._add("ZERO_GRADIENTS", 0, self.series.steps[-1] if self.series.steps else 0,
                      {"parameters": never, "count": len(never), "trainable": len(self.ever_grad),
                       "steps": self.optimizer_steps},
                      f"{len(never)} of {len(self.ever_grad)} trainable parameters had no non-zero gradient in "
                      f"{self.optimizer_steps} steps: {shown}")

    def _rule_overfitting(self) -> None:
        th = self.thresholds
        if len(self.val) < 3:
            return
        values = [v for _, _, v, _ in self.val]
        i_min = min(range(len(values)), key=values.__getitem__)
        if i_min == len(values) - 1 and "OVERFITTING" in self.found:
            # a new validation minimum: whatever rise was seen before did not last, so no finding stays
            del self.found["OVERFITTING"]
            return
        if i_min >= len(values) - 2:
            self._overfitting_passed()
            return
        v_min, v_now = values[i_min], values[-1]
        rising = all(v > v_min for v in values[-2:]) and v_now > v_min + th["overfit_rise"] * abs(v_min) + 1e-12
        t_min, t_now = self.val[i_min][3], self.val[-1][3]
        falling = math.isfinite(t_min) and math.isfinite(t_now) and t_now < t_min - th["overfit_train_fall"] * abs(t_min)
        if rising and falling:
            self._add("OVERFITTING", self.val[i_min][0], self.val[-1][0],
                      {"val_key": self.val_key, "val_min": v_min, "val_min_epoch": self.val[i_min][1],
                       "val_now": v_now, "train_at_min": t_min, "train_now": t_now},
                      f"{self.val_key} was lowest at {fmt(v_min)} (epoch {self.val[i_min][1]}) and is now {fmt(v_now)}, "
                      f"while the training loss fell from {fmt(t_min)} to {fmt(t_now)}")
        else:
            self._overfitting_passed()

    def _overfitting_passed(self) -> None:
        """A rise diagnosed earlier that the later validations no longer show (but no new minimum either):
        keep it, saying so, with the last value."""
        old = self.found.get("OVERFITTING")
        if old is None or ("val_peak" in old.evidence and old.evidence.get("val_now") == self.val[-1][2]):
            return
        ev = dict(old.evidence)
        ev.setdefault("val_peak", ev["val_now"])
        ev.setdefault("val_peak_step", old.last_step)
        step, epoch, v_now, _t = self.val[-1]
        ev["val_now"] = v_now
        self.found["OVERFITTING"] = replace(
            old, evidence=ev, message=(
                f"{self.val_key} rose from its lowest {fmt(ev['val_min'])} (epoch {ev['val_min_epoch']}) to "
                f"{fmt(ev['val_peak'])} at step {ev['val_peak_step']} while the training loss fell; it is now "
                f"{fmt(v_now)} (epoch {epoch}), so the rise did not last"))

    # -- verdicts ----------------------------------------------------------------------------------
    def _read_scores(self, metrics: Mapping[str, Any]) -> None:
        """Remember the latest train/validation accuracy (or ``capacity_keys``) values, when both are logged."""
        if self.capacity_keys == "loss":
            return
        keys = list(metrics)
        if isinstance(self.capacity_keys, tuple):
            train_key, val_key = self.capacity_keys
        else:
            train_key, val_key = _score_key(keys, "train"), _score_key(keys, "val")
        if train_key in metrics and val_key in metrics:
            self.score_metrics = {"train_key": train_key, "val_key": val_key,
                                  "train": float(metrics[train_key]), "val": float(metrics[val_key])}

    def _capacity(self) -> Capacity | None:
        th = self.thresholds
        limits = {"high": th["capacity_high"], "low": th["capacity_low"], "fit_gap": th["capacity_fit_gap"]}
        sm = self.score_metrics
        if sm:
            metric = "accuracy" if self.capacity_keys == "auto" else "score"
            return capacity_verdict(sm["train"], sm["val"], metric=metric, train_key=sm["train_key"],
                                    val_key=sm["val_key"], **limits)
        head = [v for v in self.series.loss[:5] if math.isfinite(v)]
        if not self.val or not head or not math.isfinite(self.val[-1][3]):
            return None
        initial = max(abs(statistics.median(head)), 1e-12)
        _, _, val, train = self.val[-1]
        acts = any(k in th for k in LOSS_CAPACITY_THRESHOLDS)
        limits = {k: th.get(f"capacity_loss_{k}", v) for k, v in limits.items()}
        cap = capacity_verdict(1 - train / initial, 1 - val / initial, metric="loss", train_key="train loss",
                               val_key=self.val_key, **limits)
        if not acts:
            cap.informational = True
            cap.message += (" (information only: loss scores have no universal scale; set thresholds "
                            "capacity_loss_low / capacity_loss_high / capacity_loss_fit_gap to act on them)")
        return cap

    def _rule_capacity(self) -> None:
        """Capacity verdict and convergence state (end of fit); UNDERFITTING when both poor and flat."""
        th = self.thresholds
        self.convergence = convergence_state(self.series.loss, window=th["convergence_window"],
                                             fast=th["converging_fast"], converged=th["converged"],
                                             stalled=th["not_decreasing"])
        self.capacity = cap = self._capacity()
        conv = self.convergence
        if cap is None or conv is None or cap.verdict != "underfitting" or cap.informational:
            return
        if conv.state in ("converging fast", "stalled") or "LOSS_NOT_DECREASING" in self.found:
            return  # still improving fast: train longer first; no progress at all: LOSS_NOT_DECREASING says why
        s = self.series
        ev = {"metric": cap.metric, "train": cap.train, "val": cap.val, "convergence": conv.state,
              "recent_improvement": conv.recent_improvement}
        self._add("UNDERFITTING", s.steps[-conv.window_steps] if conv.window_steps <= len(s.steps) else 0,
                  s.steps[-1], ev, f"{cap.message}, and the training loss is {conv.state} "
                  f"({conv.recent_improvement * 100:+.1f}% over the last {conv.window_steps} recorded steps)")

    def _rule_sharpness(self) -> None:
        for monitor in self._sharpness:
            ev = sharpness_summary(monitor)
            if ev is None:
                continue
            compared = ev["lambda_max_preconditioned"] if ev["lambda_max_preconditioned"] is not None else ev["lambda_max"]
            ratio = f"{ev['worst_ratio']:.3g}" if ev["worst_ratio"] is not None else "?"
            self._add("ABOVE_STABILITY_EDGE", ev["first_step"] or 0, ev["last_step"] or 0, ev,
                      f"{ev['checks_above']} of {ev['checks']} sharpness checks were above the {ev['edge_kind']} edge "
                      f"(first at step {ev['first_step']}; worst: sharpness {fmt(compared)} vs edge {fmt(ev['edge'])}, "
                      f"ratio {ratio})")

    def _verdict_lines(self) -> list[str]:
        lines = []
        if self.capacity is not None:
            lines.append(f"capacity: {self.capacity.verdict} ({self.capacity.message})")
        if self.convergence is not None:
            lines.append(f"convergence: {self.convergence.state} ({self.convergence.message})")
        return lines

    # -- schedule rules ----------------------------------------------------------------------------
    def _check_schedules_at_start(self) -> None:
        steps, epochs = self.planned_steps, self.planned_epochs
        for sc in self.schedules:
            h, kind = sc.get("horizon"), sc["kind"]
            if h and steps and epochs:
                if sc["interval"] == "epoch" and h >= 3 * epochs and h >= 0.5 * steps:
                    self._add("SCHEDULE_INTERVAL_MISMATCH", 0, steps,
                              {"scheduler": kind, "horizon": h, "interval": "epoch", "planned_epochs": epochs,
                               "planned_steps": steps},
                              f"{kind}'s length is {h}, about the {steps} optimizer steps of this run, but it is "
                              f"stepped once per epoch (interval='epoch'): it will cover {epochs} of its {h} steps")
                    sc["mismatch"] = True
                elif sc["interval"] == "step" and h <= 1.5 * epochs and steps >= 4 * h:
                    self._add("SCHEDULE_INTERVAL_MISMATCH", 0, steps,
                              {"scheduler": kind, "horizon": h, "interval": "step", "planned_epochs": epochs,
                               "planned_steps": steps},
                              f"{kind}'s length is {h}, about the {epochs} epochs of this run, but it is stepped "
                              f"every optimizer step (interval='step'): it ends after {h} of {steps} steps")
                    sc["mismatch"] = True
            fn = sc.get("fn")
            if (fn is not None and steps and sc["interval"] == "step" and not sc.get("mismatch")
                    and fn["warmup"] > self.thresholds["warmup_fraction"] * steps):
                self._add("WARMUP_TOO_LONG", 0, fn["warmup"],
                          {"warmup_steps": fn["warmup"], "planned_steps": steps, "fraction": fn["warmup"] / steps},
                          f"the {fn['kind']} warm-up is {fn['warmup']} of {steps} steps "
                          f"({100 * fn['warmup'] / steps:.0f}%)")
            if sc.get("plateau") and sc["interval"] == "epoch" and epochs:
                checks = epochs // max(1, sc.get("frequency", 1))
                if sc["patience"] >= checks - 1:
                    self._add("PLATEAU_NEVER_FIRES", 0, steps or 0,
                              {"patience": sc["patience"], "checks": checks, "monitor": sc.get("monitor")},
                              f"ReduceLROnPlateau(patience={sc['patience']}) needs {sc['patience'] + 1} checks "
                              f"without improvement but this run has {checks}")
            if sc.get("plateau") and sc.get("mode") == "max" and "loss" in str(sc.get("monitor", "")).lower():
                self._add("PLATEAU_NEVER_FIRES", 0, steps or 0,
                          {"mode": "max", "monitor": sc.get("monitor")},
                          f"ReduceLROnPlateau(mode='max') monitors {sc.get('monitor')!r}, a loss: it reduces when "
                          "the loss stops rising")

    def _rule_schedules_at_end(self) -> None:
        s, th = self.series, self.thresholds
        lr = [v for v in s.lr if math.isfinite(v)]
        if len(lr) < 10 or not self.schedules:
            return
        if any(sc.get("mismatch") for sc in self.schedules):
            return
        peak = max(lr)
        stepped = [sc for sc in self.schedules if not sc.get("plateau") and not sc.get("constant")]
        if stepped and peak > 0 and lr[-1] >= th["lr_decay"] * peak:
            kinds = ", ".join(sc["kind"] for sc in stepped)
            horizon = next((sc["horizon"] for sc in stepped if sc.get("horizon")), None)
            ev = {"scheduler": kinds, "peak_lr": peak, "final_lr": lr[-1], "steps": s.steps[-1] + 1}
            msg = f"{kinds} is set, but the LR ended at {fmt(lr[-1])}, {100 * lr[-1] / peak:.0f}% of its peak {fmt(peak)}"
            if horizon:
                ev["horizon"] = horizon
                msg += f" (its length is {horizon}; the run took {s.steps[-1] + 1} optimizer steps)"
            self._add("LR_NEVER_DECAYS", 0, s.steps[-1], ev, msg)
        total = self.planned_steps or (s.steps[-1] + 1)
        warm = self._warmup_end()
        if warm and s.steps[warm] > th["warmup_fraction"] * total and "WARMUP_TOO_LONG" not in self.found:
            self._add("WARMUP_TOO_LONG", 0, s.steps[warm],
                      {"warmup_steps": s.steps[warm], "planned_steps": total, "fraction": s.steps[warm] / total},
                      f"the LR rose until step {s.steps[warm]} of {total} ({100 * s.steps[warm] / total:.0f}%)")
        for sc in self.schedules:
            if not sc.get("plateau") or "PLATEAU_NEVER_FIRES" in self.found:
                continue
            sched = sc["scheduler"]
            fired = any(float(g["lr"]) < v * 0.999 for g, v in zip(sched.optimizer.param_groups, sc["start_lrs"]))
            if fired:
                continue
            checks = int(getattr(sched, "last_epoch", 0))
            values = self.monitored.get(sc.get("monitor") or "", [])
            stale = _longest_stale(values, sc.get("mode", "min"))
            if sc["patience"] >= checks - 1 or stale > sc["patience"]:
                self._add("PLATEAU_NEVER_FIRES", 0, s.steps[-1],
                          {"patience": sc["patience"], "checks": checks, "monitor": sc.get("monitor"),
                           "longest_without_improvement": stale},
                          f"ReduceLROnPlateau(patience={sc['patience']}) never reduced the LR in {checks} checks"
                          + (f" although {sc.get('monitor')} did not improve for {stale} checks in a row"
                             if stale > sc["patience"] else ""))

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

    def table(self) -> str:
        """The findings as a plain-text table (what the end-of-fit summary prints)."""
        rows = [("code", "severity", "steps", "evidence (-> remedy)", "remedy")]
        for d in self.diagnoses:
            rows.append((d.code, d.severity, f"{d.first_step}-{d.last_step}", d.message, d.remedy))
        if len(rows) == 1:
            return "\n".join(["TrainingDoctor: no problems found.", *self._verdict_lines()])
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"TrainingDoctor: {len(rows) - 1} finding(s)"]
        for r in rows:
            lines.append("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
            if r is not rows[0]:
                lines.append(" " * (sum(widths) + 6) + "-> " + r[4])
        return "\n".join(lines + self._verdict_lines())

    def markdown(self) -> str:
        """The findings as a Markdown table (what goes to TensorBoard)."""
        verdicts = [f"- **{line.split(':', 1)[0]}**:{line.split(':', 1)[1]}" for line in self._verdict_lines()]
        if not self.found:
            return "\n\n".join(["TrainingDoctor: no problems found.", *(["\n".join(verdicts)] if verdicts else [])])
        lines = ["| code | severity | steps | evidence | remedy |", "|---|---|---|---|---|"]
        for d in self.diagnoses:
            lines.append(f"| {d.code} | {d.severity} | {d.first_step}-{d.last_step} | {d.message} | {d.remedy} |")
        return "\n".join(lines) + ("\n\n" + "\n".join(verdicts) if verdicts else "")

    def _summary(self, trainer: Any) -> None:
        rank_zero_info(self.table())
        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                lg.experiment.add_text("doctor/summary", self.markdown(), global_step=int(trainer.global_step))
        self._write(trainer)

    def _write(self, trainer: Any) -> None:
        if not self.filename or self._log_dir is None:
            return
        write_json_atomic(os.path.join(self._log_dir, self.filename), {
            "callback": _OWNER,
            "optimizer_steps": self.optimizer_steps,
            "planned_steps": self.planned_steps,
            "diagnoses": [asdict(d) for d in self.diagnoses],
            "codes": self.codes,
            "capacity": asdict(self.capacity) if self.capacity is not None else None,
            "convergence": asdict(self.convergence) if self.convergence is not None else None,
        })

    def __repr__(self) -> str:
        return f"TrainingDoctor(check_every_n_steps={self.check_every_n_steps}, ignore={sorted(self.ignore)})"


# -- helpers ---------------------------------------------------------------------------------------------
def _check_capacity_keys(value: Any) -> str | tuple[str, str]:
    if value in ("auto", "loss"):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(k, str) and k for k in value):
        return (value[0], value[1])
    raise ConfigError(f"{_OWNER}.capacity_keys", value, "'auto', 'loss' or a pair (train_key, val_key)")


def _score_key(keys: Sequence[str], split: str) -> str | None:
    """The logged accuracy key of ``split`` (``train``/``val``), preferring the epoch value over ``*_step``."""
    found = [k for k in keys if split in k.lower() and "acc" in k.lower()]
    found.sort(key=lambda k: (k.endswith("_step"), len(k)))
    return found[0] if found else None


def _spearman(values: list[float]) -> float:
    """Rank correlation of ``values`` with time: +1 steadily rising, -1 steadily falling."""
    n = len(values)
    if n < 3:
        return 0.0
    ranks = [0] * n
    for r, i in enumerate(sorted(range(n), key=values.__getitem__)):
        ranks[i] = r
    mean = (n - 1) / 2
    num = sum((t - mean) * (r - mean) for t, r in enumerate(ranks))
    den = sum((t - mean) ** 2 for t in range(n))
    return num / den


def _longest_stale(values: list[float], mode: str) -> int:
    """Longest run of checks without a new best value."""
    best, run, longest = None, 0, 0
    for v in values:
        if best is None or (v < best if mode == "min" else v > best):
            best, run = v, 0
        else:
            run += 1
            longest = max(longest, run)
    return longest


def _describe_schedule(config: Any) -> dict[str, Any]:
    sched = config.scheduler
    kind = type(sched).__name__
    out: dict[str, Any] = {"kind": kind, "interval": config.interval, "frequency": config.frequency,
                           "monitor": config.monitor, "scheduler": sched}
    try:
        from ..schedules import PlateauWarmupStepper, ScheduledLR
    except ImportError:  # pragma: no cover
        ScheduledLR = PlateauWarmupStepper = ()  # type: ignore[assignment,misc]
    if isinstance(sched, ReduceLROnPlateau):
        out.update(plateau=True, patience=int(sched.patience), mode=sched.mode,
                   start_lrs=[float(g["lr"]) for g in sched.optimizer.param_groups])
        plateau_lrs = getattr(sched, "plateau_lrs", None)
        if plateau_lrs:
            out["start_lrs"] = [float(v) for v in plateau_lrs]
        return out
    if isinstance(sched, PlateauWarmupStepper):
        out["constant"] = True  # only the warm-up of a plateau scheduler
        return out
    if isinstance(sched, ScheduledLR):
        fn = sched.lr_lambdas[0]
        out["kind"] = f"{getattr(fn, 'kind', 'schedule')} (ScheduledLR)"
        out["horizon"] = int(getattr(fn, "total", 0)) or None
        out["fn"] = {"kind": getattr(fn, "kind", ""), "warmup": int(getattr(fn, "warmup", 0)),
                     "total": int(getattr(fn, "total", 0))}
        out["constant"] = getattr(fn, "kind", "") == "constant" and not getattr(fn, "warmup", 0)
        return out
    for name, attr in _HORIZON_ATTRS:
        if kind == name and isinstance(getattr(sched, attr, None), (int, float)):
            out["horizon"] = int(getattr(sched, attr))
    return out
