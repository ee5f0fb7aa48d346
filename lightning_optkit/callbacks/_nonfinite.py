"""NonFiniteGuard: catch non-finite losses and gradients and loss spikes, and act on them."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from ..config import ConfigError
from ..schedules import follow_param_groups
from ._grad_stats import first_nonfinite, grad_stats, optimizer_params, param_names, unwrap_optimizer
from ._health_utils import (
    check_choice,
    check_int,
    check_number,
    device_sum,
    due,
    fmt,
    log_metrics,
    log_step,
    resolve_log_dir,
    world_size,
    write_json_atomic,
)

__all__ = ["GuardEvent", "NonFiniteError", "NonFiniteGuard"]

_OWNER = "NonFiniteGuard"
POLICIES = ("skip", "reduce_lr", "rollback", "stop", "raise")
# columns of one per-step record (kept on the device until a check reads them)
_LOSS, _GNORM, _MEDIAN, _SPIKE, _BAD, _GRAD_BAD = range(6)
_MAX_KEPT_EVENTS = 1000
_MAX_WARNINGS = 10


class NonFiniteError(RuntimeError):
    """Raised by ``NonFiniteGuard(policy="raise")``; ``event`` is the :class:`GuardEvent` that caused it.

    Example:
        >>> err = NonFiniteError("step 3: nonfinite loss", GuardEvent(3, 0, 3, ["nonfinite_loss"], float("nan"), 1.0))
        >>> err.event.step, isinstance(err, RuntimeError)
        (3, True)
    """

    def __init__(self, message: str, event: GuardEvent | None = None) -> None:
        super().__init__(message)
        self.event = event


@dataclass
class GuardEvent:
    """One flagged optimizer step, as written to the JSON event log.

    ``kinds`` holds any of ``nonfinite_loss``, ``nonfinite_grad``, ``loss_spike`` and
    ``nonfinite_params``; ``actions`` what the guard did (``skip`` always, then ``reduce_lr``,
    ``rollback``, ``restore``, ``stop`` or ``raise``).

    Example:
        >>> GuardEvent(7, 0, 7, ["loss_spike"], loss=9.5, grad_norm=3.0, loss_median=1.2,
        ...            actions=["skip"]).message()
        'step 7 (epoch 0, batch 7): loss spike; loss=9.5, grad_norm=3 (running median 1.2) -> skip'
    """

    step: int
    epoch: int
    batch_idx: int
    kinds: list[str]
    loss: float
    grad_norm: float
    loss_median: float | None = None
    where: str = ""
    actions: list[str] = field(default_factory=list)
    detail: str = ""

    def message(self) -> str:
        what = ", ".join(k.replace("_", " ") for k in self.kinds)
        text = (f"step {self.step} (epoch {self.epoch}, batch {self.batch_idx}): {what}; loss={fmt(self.loss)}, "
                f"grad_norm={fmt(self.grad_norm)}")
        if self.loss_median is not None and "loss_spike" in self.kinds:
            text += f" (running median {fmt(self.loss_median)})"
        if self.where:
            text += f"; {self.where}"
        if self.actions:
            text += f" -> {', '.join(self.actions)}"
        if self.detail:
            text += f". {self.detail}"
        return text


class NonFiniteGuard(Callback):
    """Detect non-finite losses, non-finite gradients and loss spikes, skip the step, and act.

    Every flagged optimizer step is skipped: the optimizer does not update the weights and its state
    (moments, step counts) is untouched, and every module buffer the step's forward passes wrote
    (BatchNorm ``running_mean``/``running_var``/``num_batches_tracked``, any registered buffer) is put
    back as it was before the step's first micro-batch, so a NaN never reaches the model. (The buffers
    are copied into preallocated tensors before each step: one ``_foreach_copy_``, no host read.)
    Then the ``policy`` acts:

    * ``"skip"``: nothing more: weights, optimizer state and buffers are those before the step.
    * ``"reduce_lr"``: as ``"skip"``, then multiply every learning rate by ``lr_factor`` (at most once per ``cooldown``
      steps). The reduction is applied to the schedulers' base LRs too, so it persists and composes
      with any schedule (ours, torch's, plateau), and it survives a checkpoint resume.
    * ``"rollback"``: restore the last in-memory snapshot of the model (parameters and buffers) and
      the optimizer state, taken every ``snapshot_every_n_steps`` steps when training was healthy;
      the batches seen since the snapshot are not replayed (the offending ones are skipped). The
      snapshot's memory cost is reported when it is first taken and in the event log.
    * ``"stop"``: set ``trainer.should_stop``: Lightning finishes the epoch the usual way, so the
      checkpoint callbacks save before training ends.
    * ``"raise"``: raise :class:`NonFiniteError`.

    When the parameters themselves are non-finite (a step cannot repair that), or after
    ``max_consecutive`` flagged steps in a row, the guard restores the last snapshot if it has one and
    has not restored during this run of events, else escalates to ``stop`` (``raise`` for that policy).
    Snapshots exist with ``policy="rollback"`` (every 100 steps by default) or when
    ``snapshot_every_n_steps`` is set; a first one is taken when training starts.

    Detection, per optimizer step (in ``on_before_optimizer_step``, on the loss of the step summed over
    its accumulation micro-batches and the gradient norm of the shared cache):

    * non-finite loss, non-finite gradient (naming the parameter/module where it appears);
    * loss spike (``detect_spikes``): after ``spike_warmup`` steps, the loss exceeds the running median
      of the last ``spike_window`` losses by ``spike_zscore`` robust standard deviations
      (``1.4826 * MAD``) *and* by ``(spike_ratio - 1) * |median|``.

    Under DDP the loss is all-reduced (one two-element ``all_reduce`` per step, on the device, without
    the barrier of ``trainer.strategy.reduce``) and gradients are already synchronized, so every rank
    flags the same steps; every action is then confirmed with ``trainer.strategy.reduce`` (and the
    snapshot with ``reduce_boolean_decision``) at the same check steps on all ranks, so one rank's NaN
    makes all ranks act, and no rank waits on a collective the others skip.

    What syncs when: detection, the skip and the per-step record are device-side tensor ops. How the
    skip is applied without reading the flag:

    * fused optimizers (``fused=True``, which :class:`~lightning_optkit.OptimMixin` picks on CUDA): the
      flag is handed to the optimizer as its ``found_inf`` tensor, as a GradScaler does: no sync, and the
      fused kernel leaves weights, moments and step counts untouched;
    * other optimizers: the flag is read and the gradients of a flagged step are set to ``None``, which
      torch optimizers skip. On the CPU that read costs nothing (there is no device to wait for); on an
      accelerator it is one sync per step, and a warning says so once. The same holds with fp16 AMP's
      GradScaler while spike detection is on (without it, the scaler's own skip is used).

    The host reads the per-step records (one ``.tolist()``) every ``check_every_n_steps`` steps
    (default: every step on the CPU or where the flag is read anyway, else the trainer's
    ``log_every_n_steps``), at snapshot steps and at the end of each epoch; policy actions happen then.

    With fp16 AMP, non-finite gradients with a finite loss are the GradScaler's business (it skips the
    step and lowers its scale); they are not events and are not counted twice.

    Every event goes to a rank-zero warning (the first ten), the loggers (``nonfinite/events``,
    ``nonfinite/skipped_steps``, ``nonfinite/lr_scale``) and ``event_log`` in the trainer's log dir
    (JSON, rewritten atomically).

    Args:
        policy: ``"skip"``, ``"reduce_lr"``, ``"rollback"``, ``"stop"`` or ``"raise"``.
        detect_spikes: also flag loss spikes.
        spike_window: number of recent losses the median and MAD are taken over.
        spike_warmup: steps before spike detection starts.
        spike_zscore: robust z-score above which a loss is a spike.
        spike_ratio: a spike must also be at least this multiple of the median (for positive losses).
        lr_factor: LR multiplier of ``reduce_lr``.
        cooldown: optimizer steps after a reduction during which events do not reduce again.
        snapshot_every_n_steps: snapshot cadence; ``None``: 100 for ``rollback``, no snapshots otherwise.
        max_consecutive: flagged steps in a row before escalating.
        check_every_n_steps: how often the host reads the records; ``None`` as described above.
        event_log: file name of the JSON event log in the log dir; ``None`` to write none.

    Example:
        >>> import lightning as L
        >>> guard = NonFiniteGuard(policy="reduce_lr", lr_factor=0.5, cooldown=50)
        >>> trainer = L.Trainer(callbacks=[guard], logger=False, enable_progress_bar=False)
        >>> guard.state_key
        "NonFiniteGuard{'policy': 'reduce_lr'}"
    """

    Error = NonFiniteError

    def __init__(
        self,
        policy: str = "skip",
        *,
        detect_spikes: bool = True,
        spike_window: int = 100,
        spike_warmup: int = 50,
        spike_zscore: float = 6.0,
        spike_ratio: float = 2.0,
        lr_factor: float = 0.5,
        cooldown: int = 100,
        snapshot_every_n_steps: int | None = None,
        max_consecutive: int = 10,
        check_every_n_steps: int | None = None,
        event_log: str | None = "nonfinite_events.json",
    ) -> None:
        super().__init__()
        self.policy = check_choice(_OWNER, "policy", policy, POLICIES)
        self.detect_spikes = bool(detect_spikes)
        self.spike_window = int(check_int(_OWNER, "spike_window", spike_window, minimum=8))  # type: ignore[arg-type]
        self.spike_warmup = int(check_int(_OWNER, "spike_warmup", spike_warmup, minimum=1))  # type: ignore[arg-type]
        if self.spike_warmup < 8:
            raise ConfigError(f"{_OWNER}.spike_warmup", spike_warmup, "at least 8 steps (a median needs history)")
        self.spike_zscore = float(check_number(_OWNER, "spike_zscore", spike_zscore, lo=0.0))  # type: ignore[arg-type]
        self.spike_ratio = float(check_number(_OWNER, "spike_ratio", spike_ratio, lo=1.0, lo_open=False))  # type: ignore[arg-type]
        self.lr_factor = float(check_number(_OWNER, "lr_factor", lr_factor, lo=0.0, hi=1.0, hi_open=True,
                                            hint="0.5 halves every learning rate"))  # type: ignore[arg-type]
        self.cooldown = int(check_int(_OWNER, "cooldown", cooldown, minimum=0))  # type: ignore[arg-type]
        self.snapshot_every_n_steps = check_int(_OWNER, "snapshot_every_n_steps", snapshot_every_n_steps,
                                                allow_none=True)
        if self.snapshot_every_n_steps is None and self.policy == "rollback":
            self.snapshot_every_n_steps = 100
        self.max_consecutive = int(check_int(_OWNER, "max_consecutive", max_consecutive))  # type: ignore[arg-type]
        self.check_every_n_steps = check_int(_OWNER, "check_every_n_steps", check_every_n_steps, allow_none=True)
        if event_log is not None and (not isinstance(event_log, str) or not event_log or os.sep in event_log):
            raise ConfigError(f"{_OWNER}.event_log", event_log, "a file name (no folder) or None",
                              hint="the file is written into the trainer's log dir")
        self.event_log = event_log

        # persistent state (state_dict)
        self.events: list[GuardEvent] = []
        self.n_events = 0
        self.skipped_steps = 0
        self.consecutive = 0
        self.lr_scale = 1.0
        self.last_reduction_step: int | None = None
        self.rollbacks = 0
        self.restores = 0
        self.stopped = False
        self.snapshot_step: int | None = None
        self.snapshot_bytes = 0
        self._window: Tensor | None = None
        self._window_pos = 0
        self._steps_seen = 0
        self._restored_in_run = False

        # per-run working state
        self._check_every = 1
        self._skip_mode = "host"
        self._device: torch.device | None = None
        self._ring: Tensor | None = None
        self._ring_meta: list[tuple[int, int, int]] = []
        self._ring_names: list[tuple[list[str], Tensor | None]] = []  # per row: names and per-parameter norms
        self._pending_rows: Tensor | None = None
        self._loss_acc: Tensor | None = None
        self._stepped = False
        self._last_bad_host: bool | None = None
        self._log_dir: str | None = None
        self._snapshot: dict[str, Any] | None = None
        self._post_hooks: list[Any] = []
        self._warned = 0
        self._sync_warned = False
        self._buffers: _BufferGuard | None = None

    # -- identity and state ----------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(policy=self.policy)

    def state_dict(self) -> dict[str, Any]:
        pending = None
        if self._ring is not None and self._ring_meta:
            pending = self._ring[: len(self._ring_meta)].detach().cpu().clone()
        return {
            "events": [asdict(e) for e in self.events[-_MAX_KEPT_EVENTS:]],
            "n_events": self.n_events,
            "skipped_steps": self.skipped_steps,
            "consecutive": self.consecutive,
            "lr_scale": self.lr_scale,
            "last_reduction_step": self.last_reduction_step,
            "rollbacks": self.rollbacks,
            "restores": self.restores,
            "stopped": self.stopped,
            "snapshot_step": self.snapshot_step,
            "window": None if self._window is None else self._window.detach().cpu().clone(),
            "window_pos": self._window_pos,
            "steps_seen": self._steps_seen,
            "restored_in_run": self._restored_in_run,
            "pending_rows": pending,
            "pending_meta": [list(m) for m in self._ring_meta],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.events = [GuardEvent(**e) for e in state_dict.get("events", [])]
        self.n_events = int(state_dict.get("n_events", len(self.events)))
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))
        self.lr_scale = float(state_dict.get("lr_scale", 1.0))
        self.last_reduction_step = state_dict.get("last_reduction_step")
        self.rollbacks = int(state_dict.get("rollbacks", 0))
        self.restores = int(state_dict.get("restores", 0))
        self.stopped = bool(state_dict.get("stopped", False))
        self.snapshot_step = state_dict.get("snapshot_step")
        window = state_dict.get("window")
        self._window = None if window is None else window.clone()
        self._window_pos = int(state_dict.get("window_pos", 0))
        self._steps_seen = int(state_dict.get("steps_seen", 0))
        self._restored_in_run = bool(state_dict.get("restored_in_run", False))
        rows = state_dict.get("pending_rows")
        self._pending_rows = None if rows is None else rows.clone()
        self._ring_meta = [tuple(m) for m in state_dict.get("pending_meta", [])]  # type: ignore[misc]

    # -- lifecycle -------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        self._log_dir = resolve_log_dir(trainer) if self.event_log else None  # every rank: it broadcasts

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        params = [p for opt in trainer.optimizers for p in optimizer_params(opt)]
        self._device = params[0].device if params else torch.device("cpu")
        self._skip_mode = self._choose_skip_mode(trainer)
        if self.check_every_n_steps is not None:
            self._check_every = self.check_every_n_steps
        elif self._skip_mode == "host" or self._device.type == "cpu":
            self._check_every = 1
        else:
            self._check_every = max(int(trainer.log_every_n_steps or 1), 1)
        if self.snapshot_every_n_steps is not None:
            self._check_every = min(self._check_every, self.snapshot_every_n_steps)
        size = self._check_every + 1
        self._ring = torch.zeros(size, 6, device=self._device)
        if self._pending_rows is not None:  # records a checkpoint saved before they were checked
            n = min(len(self._pending_rows), size)
            self._ring[:n] = self._pending_rows[:n].to(self._device)
            self._ring_meta = self._ring_meta[:n]
            self._pending_rows = None
        else:
            self._ring_meta = []
        self._ring_names = []
        if self._window is None:
            self._window = torch.full((self.spike_window,), math.nan, device=self._device)
        else:
            self._window = self._window.to(self._device)
        if self._skip_mode == "found_inf":
            for opt in trainer.optimizers:
                torch_opt = unwrap_optimizer(opt)
                self._post_hooks.append(torch_opt.register_step_post_hook(_clear_found_inf))

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._buffers is None:
            self._buffers = _BufferGuard(pl_module)
        self._buffers.save()  # once per optimizer step: before the first micro-batch's forward

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.snapshot_every_n_steps is not None and self._params_finite(trainer)[0]:
            self._take_snapshot(trainer, int(trainer.global_step))

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        for handle in self._post_hooks:
            handle.remove()
        self._post_hooks.clear()
        self._snapshot = None
        self._buffers = None

    def _choose_skip_mode(self, trainer: Any) -> str:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is None and all(getattr(unwrap_optimizer(o), "_step_supports_amp_scaling", False)
                                  for o in trainer.optimizers):
            return "found_inf"
        if scaler is not None and not self.detect_spikes:
            return "scaler"  # the scaler skips non-finite gradients; a non-finite loss gives non-finite grads
        if self._device is not None and self._device.type != "cpu":
            names = ", ".join(type(unwrap_optimizer(o)).__name__ for o in trainer.optimizers)
            rank_zero_warn(
                f"{_OWNER}: skipping a flagged step with {names} on {self._device.type} reads one flag per step "
                "(a host-device sync). HINT: use a fused optimizer (fused=True; OptimMixin does this on CUDA) for "
                "a sync-free skip" + (", or detect_spikes=False under fp16 AMP" if scaler is not None else "") + ".")
        return "host"

    # -- per step --------------------------------------------------------------------------------
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Tensor) -> None:
        value = loss.detach().float().reshape(())
        self._loss_acc = value if self._loss_acc is None else self._loss_acc + value

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        opt = unwrap_optimizer(optimizer)
        stats = grad_stats(trainer, opt)
        device = self._device or stats.device
        loss = self._loss_acc if self._loss_acc is not None else torch.zeros((), device=device)
        self._loss_acc = None
        loss = loss.to(device)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and getattr(scaler, "_scale", None) is not None:
            loss = loss / scaler._scale.to(device)  # on_before_backward saw the scaled loss
        gnorm = stats.total(2.0).to(device)
        grad_bad = ~torch.isfinite(gnorm)
        if scaler is not None:
            grad_bad = torch.zeros_like(grad_bad)  # the GradScaler skips these steps and rescales
        if world_size(trainer) > 1:  # one small all-reduce on the device: every rank sees the same values
            both = device_sum(trainer, torch.stack([loss, grad_bad.float()]))
            loss = both[0] / world_size(trainer)
            grad_bad = both[1] > 0
        loss_bad = ~torch.isfinite(loss)
        assert self._window is not None and self._ring is not None
        if self.detect_spikes and self._steps_seen >= self.spike_warmup:
            med = torch.nanmedian(self._window)
            mad = torch.nanmedian((self._window - med).abs())
            limit = torch.maximum(mad * (self.spike_zscore * 1.4826), med.abs() * (self.spike_ratio - 1.0))
            spike = (loss - med) > limit  # False for NaN; an inf loss is flagged as non-finite on the host
        else:
            med = torch.full((), math.nan, device=device)
            spike = torch.zeros((), dtype=torch.bool, device=device)
        bad = loss_bad | grad_bad | spike
        # one row per step; the loss flag is read back on the host as "the loss is not finite"
        row = torch.stack([loss.float(), gnorm.float(), med.float(), spike.float(), bad.float(), grad_bad.float()])
        n = len(self._ring_meta)
        if n >= len(self._ring):  # a check was missed (should not happen): read now rather than overwrite
            self._check(trainer, force=True)
            n = 0
        self._ring[n] = row
        self._ring_meta.append((int(trainer.global_step), int(trainer.current_epoch),
                                int(trainer.fit_loop.epoch_loop.batch_idx)))
        self._ring_names.append((stats.names, stats.norms(2.0) if len(stats) else None))  # references, no copy
        self._window[self._window_pos % self.spike_window] = torch.where(loss_bad, math.nan, loss)
        self._window_pos += 1
        self._steps_seen += 1
        self._stepped = True
        self._apply_skip(trainer, opt, bad)

    def _apply_skip(self, trainer: Any, opt: torch.optim.Optimizer, bad: Tensor) -> None:
        if self._skip_mode == "found_inf":
            opt.grad_scale = None  # type: ignore[attr-defined]
            opt.found_inf = bad.float()  # type: ignore[attr-defined]
            if self._buffers is not None:
                self._buffers.restore_where(bad)
            return
        if self._skip_mode == "scaler":
            if self._buffers is not None:
                self._buffers.restore_where(bad)
            return
        self._last_bad_host = bool(bad)  # CPU: a plain read; accelerator: the documented sync
        if self._last_bad_host:
            for p in optimizer_params(opt):
                p.grad = None
            if self._buffers is not None:
                self._buffers.restore()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._stepped:
            return
        self._stepped = False
        if self._buffers is not None:
            self._buffers.stepped()  # the next batch starts a new optimizer step
        step = int(trainer.global_step) - 1  # the step just taken
        snapshot_due = due(step, self.snapshot_every_n_steps)
        ring_full = self._ring is not None and len(self._ring_meta) >= len(self._ring) - 1
        if due(step, self._check_every) or snapshot_due or ring_full:
            self._check(trainer, batch=batch)
        if snapshot_due and not self.stopped and self.consecutive == 0:
            finite, _ = self._params_finite(trainer)
            if world_size(trainer) > 1:
                finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
            if finite:
                self._take_snapshot(trainer, step)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._check(trainer, force=True)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._check(trainer, force=True)
        self._write_log(trainer)

    # -- checks and actions ------------------------------------------------------------------------
    def _check(self, trainer: Any, batch: Any = None, force: bool = False) -> None:
        """Read the records since the last check (one host read), turn flagged steps into events, act."""
        if self._ring is None:
            return
        meta, self._ring_meta = self._ring_meta, []
        names_per_row, self._ring_names = self._ring_names, []
        names_per_row += [([], None)] * (len(meta) - len(names_per_row))  # rows restored from a checkpoint
        rows = self._ring[: len(meta)].tolist() if meta else []
        new: list[GuardEvent] = []
        for (step, epoch, batch_idx), row, (names, norms) in zip(meta, rows, names_per_row):
            if row[_BAD] < 0.5:
                self.consecutive = 0
                self._restored_in_run = False
                continue
            self.consecutive += 1
            loss_bad = not math.isfinite(row[_LOSS])
            kinds = [k for k, flag in (("nonfinite_loss", loss_bad), ("nonfinite_grad", row[_GRAD_BAD] > 0.5),
                                       ("loss_spike", row[_SPIKE] > 0.5 and not loss_bad)) if flag]
            event = GuardEvent(step=step, epoch=epoch, batch_idx=batch_idx, kinds=kinds, loss=row[_LOSS],
                               grad_norm=row[_GNORM],
                               loss_median=None if math.isnan(row[_MEDIAN]) else row[_MEDIAN],
                               actions=["skip"])
            event.where = _where(loss_bad, row[_GRAD_BAD] > 0.5, names, norms)
            new.append(event)
        # decide, identically on every rank
        has_events = bool(new)
        params_ok, bad_param = (True, "")
        if has_events:
            params_ok, bad_param = self._params_finite(trainer)
        escalate = self.consecutive >= self.max_consecutive
        want = {"restore": False, "rollback": False, "reduce": False, "stop": False, "raise": False}
        if has_events:
            last_step = new[-1].step
            unrecoverable = not params_ok or escalate
            if self.policy == "raise":
                want["raise"] = True
                want["restore"] = not params_ok and self._snapshot is not None
            elif self.policy == "rollback":
                want["rollback"] = self._snapshot is not None
                want["stop"] = escalate or (not params_ok and self._snapshot is None)
            elif unrecoverable:
                if self._snapshot is not None and not self._restored_in_run:
                    want["restore"] = True
                else:
                    want["stop"] = True
            if self.policy == "reduce_lr" and not want["stop"] and (
                    self.last_reduction_step is None or last_step - self.last_reduction_step >= self.cooldown):
                want["reduce"] = True
            if self.policy == "stop":
                want["stop"] = True
        if world_size(trainer) > 1:  # the same check steps on every rank: agree on every action
            flags = torch.tensor([has_events, *want.values()], dtype=torch.float32,
                                 device=trainer.strategy.root_device)
            flags = trainer.strategy.reduce(flags, reduce_op="sum") > 0
            has_events = bool(flags[0])
            want = dict(zip(want, flags[1:].tolist()))
        if not has_events:
            return
        event = new[-1] if new else GuardEvent(step=int(trainer.global_step) - 1, epoch=int(trainer.current_epoch),
                                               batch_idx=-1, kinds=["remote"], loss=math.nan, grad_norm=math.nan)
        if not new:
            new = [event]
        if not params_ok:
            event.kinds.append("nonfinite_params")
            event.where = bad_param
        if (batch is not None and event.step == int(trainer.global_step) - 1 and "nonfinite_loss" in event.kinds
                and not _batch_finite(batch)):
            event.where = (event.where + "; " if event.where else "") + "non-finite values in the input batch"
        self.skipped_steps += len(new) if self._skip_mode != "scaler" else 0
        if want["restore"] or want["rollback"]:
            self._restore(trainer)
            event.actions.append("rollback" if want["rollback"] else "restore")
            event.detail = (f"restored the snapshot of step {self.snapshot_step}; the batches after it are not "
                            f"replayed")
            if want["rollback"]:
                self.rollbacks += 1
            else:
                self.restores += 1
                self._restored_in_run = True
        if want["reduce"]:
            self._scale_lrs(trainer, self.lr_factor)
            self.lr_scale *= self.lr_factor
            self.last_reduction_step = event.step
            event.actions.append("reduce_lr")
            event.detail = (event.detail + " " if event.detail else "") + (
                f"learning rates x{self.lr_factor:g} (now x{self.lr_scale:g} of the schedule)")
        if want["raise"]:
            event.actions.append("raise")
        elif want["stop"]:
            trainer.should_stop = True
            self.stopped = True
            event.actions.append("stop")
            if escalate:
                event.detail = (event.detail + " " if event.detail else "") + (
                    f"{self.consecutive} flagged steps in a row: stopping")
            elif not params_ok:
                event.detail = (event.detail + " " if event.detail else "") + (
                    "the parameters are non-finite and there is no snapshot to restore")
        self.n_events += len(new)
        self.events.extend(new)
        del self.events[:-_MAX_KEPT_EVENTS]
        for e in new:
            self._warn(e)
        log_metrics(trainer, {"nonfinite/events": float(self.n_events), "nonfinite/skipped_steps":
                              float(self.skipped_steps), "nonfinite/lr_scale": self.lr_scale}, log_step(trainer))
        self._write_log(trainer)
        if want["raise"]:
            raise NonFiniteError(
                f"{_OWNER}: {event.message()}. HINT: lower the learning rate, add gradient clipping (AutoClip), "
                "check the data for NaN/inf, or use policy='skip'/'rollback' to recover instead of raising.", event)

    def _warn(self, event: GuardEvent) -> None:
        self._warned += 1
        if self._warned <= _MAX_WARNINGS:
            rank_zero_warn(f"{_OWNER}: {event.message()}", category=RuntimeWarning)
            if self._warned == _MAX_WARNINGS:
                rank_zero_warn(f"{_OWNER}: further events are not printed; see {self.event_log or 'guard.events'}.")

    def _params_finite(self, trainer: Any) -> tuple[bool, str]:
        """Whether every parameter is finite (one host read), and the first offender's module."""
        module = trainer.lightning_module
        params = list(module.parameters())
        first = first_nonfinite(params)
        if first is None:
            return True, ""
        name = param_names(trainer, [params[first]])[0]
        return False, f"non-finite weights in {_module_of(name)} ({name})"

    # -- snapshots ---------------------------------------------------------------------------------
    def _take_snapshot(self, trainer: Any, step: int) -> None:
        module = trainer.lightning_module
        model = {k: v for k, v in module.state_dict(keep_vars=True).items() if isinstance(v, Tensor)}
        opt_states: list[dict[int, dict[str, Any]]] = []
        for opt in trainer.optimizers:
            torch_opt = unwrap_optimizer(opt)
            opt_states.append({id(p): dict(s) for p, s in torch_opt.state.items()})
        snap = self._snapshot
        same = snap is not None and snap["model"].keys() == model.keys() and [
            {k: {n: type(v) for n, v in s.items()} for k, s in o.items()} for o in opt_states] == snap["layout"]
        if not same:
            snap = {
                "model": {k: v.detach().clone() for k, v in model.items()},
                "opt": [{k: {n: (v.detach().clone() if isinstance(v, Tensor) else v) for n, v in s.items()}
                         for k, s in o.items()} for o in opt_states],
                "layout": [{k: {n: type(v) for n, v in s.items()} for k, s in o.items()} for o in opt_states],
            }
            nbytes = sum(t.numel() * t.element_size() for t in _snapshot_tensors(snap))
            if nbytes != self.snapshot_bytes:
                rank_zero_info(f"{_OWNER}: the in-memory snapshot of the model and optimizer state takes "
                               f"{_size(nbytes)} on {self._device}")
            self.snapshot_bytes = nbytes
            self._snapshot = snap
        else:
            assert snap is not None
            src = [v.detach() for v in model.values()]
            dst = list(snap["model"].values())
            for o_src, o_dst in zip(opt_states, snap["opt"]):
                for k, s in o_src.items():
                    for n, v in s.items():
                        if isinstance(v, Tensor):
                            src.append(v.detach())
                            dst.append(o_dst[k][n])
                        else:
                            o_dst[k][n] = v
            torch._foreach_copy_(dst, src)
        self.snapshot_step = step

    def _restore(self, trainer: Any) -> None:
        snap = self._snapshot
        if snap is None:
            return
        module = trainer.lightning_module
        live = {k: v for k, v in module.state_dict(keep_vars=True).items() if isinstance(v, Tensor)}
        dst, src = [], []
        for k, v in snap["model"].items():
            if k in live:
                dst.append(live[k].detach())
                src.append(v)
        for opt, saved in zip(trainer.optimizers, snap["opt"]):
            torch_opt = unwrap_optimizer(opt)
            by_id = {id(p): p for p in optimizer_params(torch_opt)}
            for p in list(torch_opt.state.keys()):
                if id(p) not in saved:
                    del torch_opt.state[p]  # state created after the snapshot
            for pid, s in saved.items():
                p = by_id.get(pid)
                if p is None:
                    continue
                state = torch_opt.state[p]
                for n, v in s.items():
                    if isinstance(v, Tensor) and isinstance(state.get(n), Tensor) and state[n].shape == v.shape:
                        dst.append(state[n].detach())
                        src.append(v)
                    else:
                        state[n] = v.clone() if isinstance(v, Tensor) else v
        with torch.no_grad():
            torch._foreach_copy_(dst, src)
        if self._window is not None:  # losses seen after the snapshot describe weights that are gone
            self._window.fill_(math.nan)
            self._steps_seen = 0

    # -- LR reduction ------------------------------------------------------------------------------
    def _scale_lrs(self, trainer: Any, factor: float) -> None:
        """Scale every LR and the schedulers' bases, so the reduction persists through any schedule."""
        follow_param_groups(c.scheduler for c in getattr(trainer, "lr_scheduler_configs", []))
        for opt in trainer.optimizers:
            for group in unwrap_optimizer(opt).param_groups:
                for key in ("lr", "initial_lr", "max_lr", "min_lr"):
                    if isinstance(group.get(key), (int, float)):
                        group[key] = group[key] * factor
                    elif isinstance(group.get(key), Tensor):
                        group[key].mul_(factor)
        seen: set[int] = set()
        for config in getattr(trainer, "lr_scheduler_configs", []):
            _scale_scheduler(config.scheduler, factor, seen)

    # -- event log -----------------------------------------------------------------------------------
    def _write_log(self, trainer: Any) -> None:
        if not self.event_log or self._log_dir is None or not trainer.is_global_zero:
            return
        if not self.events and not os.path.exists(os.path.join(self._log_dir, self.event_log)):
            return
        write_json_atomic(os.path.join(self._log_dir, self.event_log), {
            "callback": _OWNER,
            "policy": self.policy,
            "events": [asdict(e) for e in self.events],
            "n_events": self.n_events,
            "skipped_steps": self.skipped_steps,
            "lr_scale": self.lr_scale,
            "rollbacks": self.rollbacks,
            "restores": self.restores,
            "stopped": self.stopped,
            "snapshot": {"step": self.snapshot_step, "bytes": self.snapshot_bytes},
        })

    def __repr__(self) -> str:
        return (f"NonFiniteGuard(policy={self.policy!r}, detect_spikes={self.detect_spikes}, "
                f"max_consecutive={self.max_consecutive}, snapshot_every_n_steps={self.snapshot_every_n_steps})")


# -- helpers -----------------------------------------------------------------------------------------
def _clear_found_inf(optimizer: Any, args: Any, kwargs: Any) -> None:
    for attr in ("found_inf", "grad_scale"):
        if hasattr(optimizer, attr):
            delattr(optimizer, attr)


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def _module_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def _where(loss_bad: bool, grad_bad: bool, names: list[str], norms: Tensor | None) -> str:
    """Which module the non-finite gradient comes from (reads that step's per-parameter norms: events only)."""
    if not grad_bad or norms is None or not names:
        return ""
    bad = [i for i, v in enumerate(norms.tolist()) if not math.isfinite(v)]
    if not bad:
        return ""
    if not loss_bad:
        # finite loss: backward runs output -> input, so the non-finite value was born at the last one
        return f"non-finite gradient appears in {_module_of(names[bad[-1]])} ({names[bad[-1]]}) during backward"
    return f"non-finite gradients from {_module_of(names[bad[0]])} ({names[bad[0]]}) on"


def _batch_finite(batch: Any) -> bool:
    if isinstance(batch, Tensor):
        return not batch.is_floating_point() or bool(torch.isfinite(batch).all())
    if isinstance(batch, Mapping):
        return all(_batch_finite(v) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        return all(_batch_finite(v) for v in batch)
    return True


def _snapshot_tensors(snap: dict[str, Any]) -> list[Tensor]:
    out = list(snap["model"].values())
    for o in snap["opt"]:
        for s in o.values():
            out.extend(v for v in s.values() if isinstance(v, Tensor))
    return out


def _scale_scheduler(sched: Any, factor: float, seen: set[int]) -> None:
    if sched is None or id(sched) in seen:
        return
    seen.add(id(sched))
    for attr in ("base_lrs", "max_lrs", "plateau_lrs"):
        values = getattr(sched, attr, None)
        if isinstance(values, list):
            setattr(sched, attr, [v * factor for v in values])
    for child in getattr(sched, "_schedulers", []) or []:
        _scale_scheduler(child, factor, seen)
    inner = getattr(sched, "plateau", None)
    if inner is not None:
        _scale_scheduler(inner, factor, seen)
    optimizer = getattr(sched, "optimizer", None)
    if optimizer is not None and hasattr(sched, "_last_lr"):
        sched._last_lr = [float(g["lr"]) for g in optimizer.param_groups]


_MAX_BUFFER_BYTES = 256 * 2**20


class _BufferGuard:
    """The module buffers (BatchNorm running statistics, ``num_batches_tracked``, any registered buffer)
    as they were before the forward passes of the current optimizer step, to put back if it is skipped.

    One flat copy per dtype and device, preallocated: saving is one ``_foreach_copy_`` per step; a
    restore that must not read the flag (fused optimizers, AMP) is a ``torch.where`` on the device.
    Buffers larger than 256 MiB in all are not guarded (a rank-zero message says so).
    """

    def __init__(self, module: torch.nn.Module) -> None:
        buffers = [b for b in module.buffers() if isinstance(b, Tensor) and b.numel() > 0]
        nbytes = sum(b.numel() * b.element_size() for b in buffers)
        if nbytes > _MAX_BUFFER_BYTES:
            rank_zero_info(f"{_OWNER}: the module buffers take {_size(nbytes)}; a skipped step does not restore them")
            buffers = []
        groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for b in buffers:
            if b.is_contiguous():
                groups.setdefault((b.dtype, b.device), []).append(b)
        self.other = [b for b in buffers if not b.is_contiguous()]  # no flat view: one copy each
        self.other_saved = [torch.empty_like(b) for b in self.other]
        self.groups = [(bufs, torch.empty(sum(b.numel() for b in bufs), dtype=key[0], device=key[1]))
                       for key, bufs in groups.items()]
        # views made once: the buffers are updated in place, so their flat views stay valid
        self.flat_live = [[b.view(-1) for b in bufs] for bufs, _flat in self.groups]
        self.saved_views = [[v.view_as(b) for v, b in zip(torch.split(flat, [b.numel() for b in bufs]), bufs)]
                            for bufs, flat in self.groups]
        self.sizes = [[b.numel() for b in bufs] for bufs, _flat in self.groups]
        self.saved = False

    def save(self) -> None:
        if self.saved:
            return
        with torch.no_grad():
            for (bufs, _flat), saved in zip(self.groups, self.saved_views):
                torch._foreach_copy_(saved, bufs)
            if self.other:
                torch._foreach_copy_(self.other_saved, self.other)
        self.saved = True

    def stepped(self) -> None:
        self.saved = False

    def restore(self) -> None:
        if not self.saved:
            return
        with torch.no_grad():
            for (bufs, _flat), saved in zip(self.groups, self.saved_views):
                torch._foreach_copy_(bufs, saved)
            if self.other:
                torch._foreach_copy_(self.other, self.other_saved)

    def restore_where(self, bad: Tensor) -> None:
        """Restore where ``bad`` (a device flag) is set, without reading it on the host."""
        if not self.saved:
            return
        with torch.no_grad():
            for (_bufs, flat), flat_live, sizes in zip(self.groups, self.flat_live, self.sizes):
                live = torch.cat(flat_live)
                torch.where(bad.to(flat.device), flat, live, out=live)
                torch._foreach_copy_(flat_live, list(torch.split(live, sizes)))
            for b, saved in zip(self.other, self.other_saved):
                b.copy_(torch.where(bad.to(b.device), saved, b))
