"""NonFiniteGuard: catch non-finite losses and gradients and loss spikes, and act on them.

This module wires the guard into Lightning's hooks; each concept lives in its own module:

* :mod:`._nonfinite_detect`: the per-step flags, computed on the device, and where a value went bad;
* :mod:`._nonfinite_events`: :class:`GuardEvent`, :class:`NonFiniteError`, reading the step records;
* :mod:`._nonfinite_policy`: :func:`decide`, the policy as a pure function of counters;
* :mod:`._nonfinite_skip`: how a flagged step is skipped (fused ``found_inf``, GradScaler, host read);
* :mod:`._nonfinite_snapshot`: in-memory snapshots (rollback) and the module-buffer guard;
* :mod:`._nonfinite_lr`: the LR reduction that persists through any schedule.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from .._internal.checks import check_choice, check_int, check_number
from .._internal.io import atomic_write_json
from .._internal.optimizers import optimizer_params, unwrap_optimizer
from .._internal.ranks import world_size
from .._internal.trainer import due, log_metrics, log_step, resolve_log_dir
from ..config import ConfigError
from ._grad_stats import StepLoss, grad_stats
from ._nonfinite_detect import loss_and_grad_flag, params_finite, spike_flag, step_row
from ._nonfinite_events import GuardEvent, NonFiniteError, events_from_rows, lead_event
from ._nonfinite_lr import scale_lrs
from ._nonfinite_policy import ACTIONS, POLICIES, decide
from ._nonfinite_skip import apply_skip, check_interval, choose_skip_mode, install_found_inf_hooks
from ._nonfinite_snapshot import BufferGuard, restore_snapshot, take_snapshot

__all__ = ["GuardEvent", "NonFiniteError", "NonFiniteGuard"]

_OWNER = "NonFiniteGuard"
_MAX_KEPT_EVENTS = 1000
_MAX_WARNINGS = 10
_BufferGuard = BufferGuard  # the name the buffer benchmark imports


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
        self._step_loss = StepLoss()
        self._stepped = False
        self._last_bad_host: bool | None = None
        self._log_dir: str | None = None
        self._snapshot: dict[str, Any] | None = None
        self._post_hooks: list[Any] = []
        self._warned = 0
        self._buffers: BufferGuard | None = None

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
        self._skip_mode = choose_skip_mode(trainer, self._device, self.detect_spikes)
        self._check_every = check_interval(self.check_every_n_steps, self._skip_mode, self._device,
                                           trainer.log_every_n_steps, self.snapshot_every_n_steps)
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
            self._post_hooks.extend(install_found_inf_hooks(trainer))

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._buffers is None:
            self._buffers = BufferGuard(pl_module)
        self._buffers.save()  # once per optimizer step: before the first micro-batch's forward

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.snapshot_every_n_steps is not None and params_finite(trainer)[0]:
            self._take_snapshot(trainer, int(trainer.global_step))

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        for handle in self._post_hooks:
            handle.remove()
        self._post_hooks.clear()
        self._snapshot = None
        self._buffers = None

    # -- per step --------------------------------------------------------------------------------
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Tensor) -> None:
        self._step_loss.add(loss)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        opt = unwrap_optimizer(optimizer)
        stats = grad_stats(trainer, opt)
        device = self._device or stats.device
        loss_acc = self._step_loss.take()
        gnorm = stats.total(2.0).to(device)
        loss, grad_bad = loss_and_grad_flag(trainer, loss_acc, gnorm, device)
        loss_bad = ~torch.isfinite(loss)
        assert self._window is not None and self._ring is not None
        med, spike = spike_flag(self._window, loss, active=self.detect_spikes and self._steps_seen >= self.spike_warmup,
                                zscore=self.spike_zscore, ratio=self.spike_ratio)
        bad = loss_bad | grad_bad | spike
        row = step_row(loss, gnorm, med, spike, bad, grad_bad)
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
        flagged = apply_skip(self._skip_mode, opt, bad, self._buffers)
        if flagged is not None:
            self._last_bad_host = flagged

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
            finite, _ = params_finite(trainer)
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
        rows = self._ring[: len(meta)].tolist() if meta else []
        new, self.consecutive, self._restored_in_run = events_from_rows(
            meta, rows, names_per_row, self.consecutive, self._restored_in_run)
        # decide, identically on every rank
        params_ok, bad_param = params_finite(trainer) if new else (True, "")
        escalate = self.consecutive >= self.max_consecutive
        want = decide(self.policy, has_events=bool(new), params_ok=params_ok, escalate=escalate,
                      has_snapshot=self._snapshot is not None, restored_in_run=self._restored_in_run,
                      last_step=new[-1].step if new else -1, last_reduction_step=self.last_reduction_step,
                      cooldown=self.cooldown)
        has_events, want = self._agree(trainer, bool(new), want)
        if not has_events:
            return
        event, new = lead_event(new, step=int(trainer.global_step) - 1, epoch=int(trainer.current_epoch),
                                params_ok=params_ok, bad_param=bad_param, batch=batch)
        self.skipped_steps += len(new) if self._skip_mode != "scaler" else 0
        self._act(trainer, event, want, escalate=escalate, params_ok=params_ok)
        self._record(trainer, new)
        if want["raise"]:
            raise NonFiniteError(
                f"{_OWNER}: {event.message()}. HINT: lower the learning rate, add gradient clipping (AutoClip), "
                "check the data for NaN/inf, or use policy='skip'/'rollback' to recover instead of raising.", event)

    def _agree(self, trainer: Any, has_events: bool, want: dict[str, bool]) -> tuple[bool, dict[str, bool]]:
        """Make every rank take an action any rank wants (the same check steps run on every rank)."""
        if world_size(trainer) <= 1:
            return has_events, want
        flags = torch.tensor([has_events, *(want[a] for a in ACTIONS)], dtype=torch.float32,
                             device=trainer.strategy.root_device)
        flags = trainer.strategy.reduce(flags, reduce_op="sum") > 0
        return bool(flags[0]), dict(zip(ACTIONS, flags[1:].tolist()))

    def _act(self, trainer: Any, event: GuardEvent, want: dict[str, bool], *, escalate: bool, params_ok: bool) -> None:
        """Carry out the agreed actions and describe them on ``event``."""
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
            scale_lrs(trainer, self.lr_factor)  # the schedulers' bases too
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

    def _record(self, trainer: Any, new: list[GuardEvent]) -> None:
        """Keep the events, warn, log the counters and rewrite the event log."""
        self.n_events += len(new)
        self.events.extend(new)
        del self.events[:-_MAX_KEPT_EVENTS]
        for e in new:
            self._warn(e)
        log_metrics(trainer, {"nonfinite/events": float(self.n_events), "nonfinite/skipped_steps":
                              float(self.skipped_steps), "nonfinite/lr_scale": self.lr_scale}, log_step(trainer))
        self._write_log(trainer)

    def _warn(self, event: GuardEvent) -> None:
        self._warned += 1
        if self._warned <= _MAX_WARNINGS:
            rank_zero_warn(f"{_OWNER}: {event.message()}", category=RuntimeWarning)
            if self._warned == _MAX_WARNINGS:
                rank_zero_warn(f"{_OWNER}: further events are not printed; see {self.event_log or 'guard.events'}.")

    # -- snapshots ---------------------------------------------------------------------------------
    def _take_snapshot(self, trainer: Any, step: int) -> None:
        self._snapshot, self.snapshot_bytes = take_snapshot(trainer, self._snapshot, self.snapshot_bytes,
                                                            self._device)
        self.snapshot_step = step

    def _restore(self, trainer: Any) -> None:
        if self._snapshot is None:
            return
        restore_snapshot(trainer, self._snapshot)
        if self._window is not None:  # losses seen after the snapshot describe weights that are gone
            self._window.fill_(math.nan)
            self._steps_seen = 0

    # -- event log -----------------------------------------------------------------------------------
    def _write_log(self, trainer: Any) -> None:
        if not self.event_log or self._log_dir is None or not trainer.is_global_zero:
            return
        if not self.events and not os.path.exists(os.path.join(self._log_dir, self.event_log)):
            return
        atomic_write_json(os.path.join(self._log_dir, self.event_log), strict=True, obj={
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

