"""EarlyStopping: patience after a grace period, smoothing, best-weight restore, DDP-consistent decisions."""

from __future__ import annotations

import math
import statistics
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from .._internal.checks import in_interval
from .._internal.ranks import mean_over_ranks
from ..config import ConfigError, did_you_mean

__all__ = ["EarlyStopping"]

REASONS = ("patience", "stopping_threshold", "divergence_threshold", "non_finite")


def _number(name: str, value: Any, *, allow_none: bool = True, minimum: float | None = None,
            integer: bool = False, hint: str = "") -> Any:
    if value is None and allow_none:
        return None
    if not (in_interval(value, minimum, lo_open=False) and (not integer or isinstance(value, int))):
        what = "an integer" if integer else "a finite number"
        if minimum is not None:
            what += f" >= {minimum:g}"
        if allow_none:
            what = "None or " + what
        raise ConfigError(f"EarlyStopping.{name}", value, what,
                          hint=hint or f"e.g. EarlyStopping('val_loss', {name}={minimum if minimum is not None else 0.0:g})")
    return value


def _parse_delta(value: Any) -> tuple[float, bool]:
    """``min_delta`` as (amount, relative): a number is absolute, ``"1%"`` is 1% of the best value."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            pct = float(value.strip()[:-1])
        except ValueError:
            pct = -1.0
        if pct >= 0 and math.isfinite(pct):
            return pct / 100.0, True
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value), False
    raise ConfigError("EarlyStopping.min_delta", value,
                      "a non-negative number (absolute) or a percentage string such as '1%' (relative to the best)",
                      hint="min_delta=0.001 or min_delta='0.5%'")


def _check_arguments(*, monitor: Any, mode: Any, patience: Any, min_delta: Any, start_epoch: Any, start_step: Any,
                     smoothing: Any, ema_alpha: Any, median_window: Any, restore_best_weights: Any,
                     stopping_threshold: Any, divergence_threshold: Any, check_finite: Any,
                     check_on_train_epoch_end: Any, strict: Any, verbose: Any) -> tuple[float, bool]:
    """Check every argument of ``EarlyStopping`` (in the order of its signature); return the parsed ``min_delta``.

    Raises:
        ConfigError: naming the argument, its value, what is valid and an example.

    Example:
        >>> _check_arguments(monitor="val_loss", mode="min", patience=3, min_delta="1%", start_epoch=0, start_step=0,
        ...                  smoothing=None, ema_alpha=0.3, median_window=5, restore_best_weights=False,
        ...                  stopping_threshold=None, divergence_threshold=None, check_finite=True,
        ...                  check_on_train_epoch_end=None, strict=True, verbose=False)
        (0.01, True)
    """
    if not isinstance(monitor, str) or not monitor:
        raise ConfigError("EarlyStopping.monitor", monitor, "the name of a logged metric",
                          hint="EarlyStopping('val_loss') with self.log('val_loss', ...) in validation_step")
    if mode not in ("min", "max"):
        raise ConfigError("EarlyStopping.mode", mode, "'min' or 'max'", suggestions=did_you_mean(mode, ["min", "max"]),
                          hint="mode='min' for a loss, mode='max' for an accuracy")
    _number("patience", patience, allow_none=False, minimum=0, integer=True, hint="patience=3 stops after "
            "three checks without improvement")
    _number("start_epoch", start_epoch, allow_none=False, minimum=0, integer=True,
            hint="start_epoch=5 lets patience count from the sixth epoch (a warm-up of five)")
    _number("start_step", start_step, allow_none=False, minimum=0, integer=True,
            hint="start_step=1000 lets patience count once 1000 optimizer steps are done")
    delta = _parse_delta(min_delta)
    if smoothing not in (None, "ema", "median"):
        raise ConfigError("EarlyStopping.smoothing", smoothing, "None, 'ema' or 'median'",
                          suggestions=did_you_mean(smoothing, ["ema", "median"]),
                          hint="smoothing='ema' with ema_alpha=0.3 damps noisy validation metrics")
    _number("ema_alpha", ema_alpha, allow_none=False, minimum=0, hint="ema_alpha=0.3")
    if not 0 < ema_alpha <= 1:
        raise ConfigError("EarlyStopping.ema_alpha", ema_alpha, "a weight in (0, 1]",
                          hint="smaller is smoother; 0.3 is a common choice")
    _number("median_window", median_window, allow_none=False, minimum=1, integer=True, hint="median_window=5")
    if not (isinstance(restore_best_weights, bool) or restore_best_weights == "checkpoint"):
        raise ConfigError("EarlyStopping.restore_best_weights", restore_best_weights,
                          "True (a CPU copy), False or 'checkpoint' (reload the Checkpoint callback's best file)",
                          suggestions=did_you_mean(restore_best_weights, ["checkpoint"]),
                          hint="restore_best_weights=True keeps the best weights in CPU memory")
    _number("stopping_threshold", stopping_threshold, hint="stopping_threshold=0.01 stops once the value is below it"
            " (mode='min')")
    _number("divergence_threshold", divergence_threshold, hint="divergence_threshold=10.0 stops once the value is "
            "above it (mode='min')")
    for name, flag in (("check_finite", check_finite), ("strict", strict), ("verbose", verbose)):
        if not isinstance(flag, bool):
            raise ConfigError(f"EarlyStopping.{name}", flag, "True or False", hint=f"pass a bool, e.g. {name}=True")
    if check_on_train_epoch_end is not None and not isinstance(check_on_train_epoch_end, bool):
        raise ConfigError("EarlyStopping.check_on_train_epoch_end", check_on_train_epoch_end, "None, True or False",
                          hint="leave it None to check after each validation when validation runs")
    return delta


class EarlyStopping(Callback):
    """Stop training when a monitored metric stops improving, without Lightning's rough edges.

    At each check (after every validation run, or at the end of every training epoch when
    ``check_on_train_epoch_end``) the monitored value is averaged over all ranks, optionally
    smoothed, and compared with the best so far. A check that improves on the best by more than
    ``min_delta`` resets the wait count; otherwise the wait count grows, and when it reaches
    ``patience`` training stops. Patience is counted in checks: with ``val_check_interval=0.25``
    there are four checks per epoch, so ``patience=8`` means two epochs.

    What differs from Lightning's ``EarlyStopping``:

    * **Grace period**: checks before ``start_epoch`` / ``start_step`` still track the best value
      but never count against patience, nor trip the divergence threshold (a warm-up's loss is
      high by design).
    * **Relative deltas**: ``min_delta="1%"`` asks for a 1% improvement over the best.
    * **Smoothing** of noisy metrics: ``smoothing="ema"`` (weight ``ema_alpha`` on the newest
      value) or ``"median"`` (median of the last ``median_window`` values). Every rule then sees
      the smoothed value, except the non-finite check, which sees the raw one.
    * **min_epochs without the conflict**: Lightning keeps training when asked to stop before
      ``Trainer(min_epochs=...)`` and then stops at ``min_epochs`` even if the model has improved
      in between. Here the decision is re-taken at every check: training stops at the first check
      at which Lightning can stop *and* the condition still holds (so at ``min_epochs`` only if
      there has still been no improvement). ``min_steps`` is treated the same way.
    * **Best weights**: ``restore_best_weights=True`` keeps a CPU copy of the weights of the best
      check and loads it into the module when ``fit`` ends (stopped early or not); the copy is part
      of the callback's state, so a resumed run can restore it too (the checkpoint grows by one copy
      of the weights). ``restore_best_weights="checkpoint"`` instead reloads the best file of the
      :class:`~lightning_optkit.callbacks.Checkpoint` that monitors the same metric (no memory cost).
    * **DDP**: a value logged without ``sync_dist`` differs between ranks; it is averaged over ranks
      before any rule sees it, so counters, best value and decision are identical on every rank, and
      rank 0's decision is broadcast as a final guard. A metric missing on some rank is an error
      on every rank (no rank waits for another).
    * **The reason** (``patience``, ``stopping_threshold``, ``divergence_threshold``,
      ``non_finite``) is printed, sent to the trainer's loggers as ``early_stopping/*`` metrics, and
      kept in :attr:`stop_reason` and :attr:`stop_message`.

    Every counter is in :meth:`state_dict`, so a run resumed with ``ckpt_path=`` continues
    counting exactly where it stopped.

    Note: when checking at the end of the training epoch, metrics that the LightningModule logs in
    its own ``on_train_epoch_end`` are seen only at the next check (Lightning runs callbacks'
    hooks first); log them in ``training_step`` with ``on_epoch=True`` instead.

    Args:
        monitor: the logged metric to watch.
        mode: ``"min"`` or ``"max"``.
        patience: checks without improvement before stopping.
        min_delta: improvement needed to count: a number (absolute) or ``"x%"`` (relative to the best).
        start_epoch: first epoch whose checks count against patience.
        start_step: first optimizer step from which checks count against patience.
        smoothing: None, ``"ema"`` or ``"median"``.
        ema_alpha: weight of the newest value for ``"ema"`` (0 < alpha <= 1).
        median_window: number of values for ``"median"``.
        restore_best_weights: False, True (CPU copy) or ``"checkpoint"``.
        stopping_threshold: stop as soon as the value is better than this.
        divergence_threshold: stop as soon as the value is worse than this (after the grace period).
        check_finite: stop when the value is NaN or infinite.
        check_on_train_epoch_end: check at the end of each training epoch instead of after each
            validation; None decides as Lightning does.
        strict: a missing metric is an error (False: the check is skipped with a warning).
        verbose: print improvements, not only the stop.

    Example:
        >>> import lightning as L
        >>> es = EarlyStopping("val_loss", patience=5, min_delta="0.5%", start_epoch=3,
        ...                    smoothing="ema", restore_best_weights=True)
        >>> es.state_key
        "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"
        >>> trainer = L.Trainer(callbacks=[es], min_epochs=10)  # doctest: +SKIP
    """

    def __init__(
        self,
        monitor: str,
        mode: str = "min",
        patience: int = 3,
        min_delta: float | str = 0.0,
        start_epoch: int = 0,
        start_step: int = 0,
        smoothing: str | None = None,
        ema_alpha: float = 0.3,
        median_window: int = 5,
        restore_best_weights: bool | str = False,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_finite: bool = True,
        check_on_train_epoch_end: bool | None = None,
        strict: bool = True,
        verbose: bool = False,
    ) -> None:
        super().__init__()
        self.min_delta, self.relative_delta = _check_arguments(
            monitor=monitor, mode=mode, patience=patience, min_delta=min_delta, start_epoch=start_epoch,
            start_step=start_step, smoothing=smoothing, ema_alpha=ema_alpha, median_window=median_window,
            restore_best_weights=restore_best_weights, stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold, check_finite=check_finite,
            check_on_train_epoch_end=check_on_train_epoch_end, strict=strict, verbose=verbose,
        )

        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.start_epoch = start_epoch
        self.start_step = start_step
        self.smoothing = smoothing
        self.ema_alpha = float(ema_alpha)
        self.median_window = median_window
        self.restore_best_weights = restore_best_weights
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.check_finite = check_finite
        self._check_on_train_epoch_end = check_on_train_epoch_end
        self.strict = strict
        self.verbose = verbose

        # state (identical on every rank; all in state_dict)
        self.wait_count = 0
        self.checks = 0
        self.best_score: float | None = None
        self.best_epoch = -1
        self.best_step = -1
        self.last_value: float | None = None
        self.ema: float | None = None
        self.window: list[float] = []
        self.stopped_epoch = -1
        self.stopped_step = -1
        self.stop_reason: str | None = None
        self.stop_message: str | None = None
        self.deferred_reason: str | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self._warned_missing = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    # -- hooks ---------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._check_on_train_epoch_end is None:
            self._check_on_train_epoch_end = trainer.val_check_interval == 1.0 and trainer.check_val_every_n_epoch == 1
        if stage == "fit" and self.restore_best_weights == "checkpoint" and self._checkpoint_callback(trainer) is None:
            raise ConfigError("EarlyStopping.restore_best_weights", "checkpoint",
                              f"a lightning_optkit Checkpoint callback with monitor={self.monitor!r} in the trainer",
                              hint=f"add Checkpoint(monitor={self.monitor!r}, mode={self.mode!r}) to callbacks, "
                                   "or use restore_best_weights=True for an in-memory copy")

    def _checkpoint_callback(self, trainer: pl.Trainer) -> Any:
        from ._checkpoint import Checkpoint

        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, Checkpoint) and cb.monitor == self.monitor and cb.mode == self.mode and cb.save_top_k:
                return cb
        return None

    def _should_skip(self, trainer: pl.Trainer) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        return trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or bool(trainer.fast_dev_run)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._check_on_train_epoch_end and not self._should_skip(trainer):
            self._run_check(trainer, pl_module, at_train_epoch_end=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._check_on_train_epoch_end and not self._should_skip(trainer):
            self._run_check(trainer, pl_module, at_train_epoch_end=False)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.restore_best_weights is True and self.best_state is not None:
            pl_module.load_state_dict(self.best_state)
            rank_zero_info(f"EarlyStopping: restored the weights of the best check ({self.monitor}="
                           f"{self.best_score:.6g} at epoch {self.best_epoch}, step {self.best_step}).")
        elif self.restore_best_weights == "checkpoint":
            ckpt = self._checkpoint_callback(trainer)
            if ckpt is None:
                return
            ckpt.wait()
            trainer.strategy.barrier("EarlyStopping.restore_best_weights")
            if not ckpt.best_model_path:
                rank_zero_warn("EarlyStopping: restore_best_weights='checkpoint' but the Checkpoint callback has "
                               "saved no best file; the final weights are kept.")
                return
            from ._checkpoint import Checkpoint

            state = Checkpoint.load(ckpt.best_model_path)
            pl_module.load_state_dict(state["state_dict"])
            rank_zero_info(f"EarlyStopping: restored the weights of {ckpt.best_model_path}.")

    # -- the check -----------------------------------------------------------------------------------
    def _reduced_value(self, trainer: pl.Trainer) -> float | None:
        return mean_over_ranks(trainer, self.monitor)

    def _smooth(self, value: float) -> float:
        if self.smoothing == "ema":
            self.ema = value if self.ema is None else self.ema_alpha * value + (1 - self.ema_alpha) * self.ema
            return self.ema
        if self.smoothing == "median":
            self.window = (self.window + [value])[-self.median_window:]
            return float(statistics.median(self.window))
        return value

    def _improves(self, value: float) -> bool:
        if self.best_score is None:
            return True
        delta = self.min_delta * abs(self.best_score) if self.relative_delta else self.min_delta
        return value < self.best_score - delta if self.mode == "min" else value > self.best_score + delta

    def _better_than(self, value: float, threshold: float) -> bool:
        return value < threshold if self.mode == "min" else value > threshold

    def _can_stop(self, trainer: pl.Trainer, at_train_epoch_end: bool) -> bool:
        fit_loop = trainer.fit_loop
        epochs_done = fit_loop.epoch_progress.current.processed
        if not at_train_epoch_end and fit_loop.epoch_loop._num_ready_batches_reached():
            epochs_done += 1  # validation at the end of the epoch: Lightning counts it once the epoch ends
        min_epochs = fit_loop.min_epochs or 0
        min_steps = fit_loop.min_steps or 0
        return epochs_done >= min_epochs and trainer.global_step >= min_steps

    def _run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, at_train_epoch_end: bool) -> None:
        raw = self._reduced_value(trainer)  # a collective call: every rank gets the same value
        if raw is None:
            available = sorted(trainer.callback_metrics)
            if self.strict:
                raise ConfigError("EarlyStopping.monitor", self.monitor,
                                  "a metric logged on every rank; available: " + (", ".join(available) or "none"),
                                  suggestions=did_you_mean(self.monitor, available),
                                  hint=f"call self.log({self.monitor!r}, ...) in validation_step, or pass "
                                       "strict=False to skip checks where it is missing")
            if not self._warned_missing:
                self._warned_missing = True
                rank_zero_warn(f"EarlyStopping: {self.monitor!r} is not logged (on every rank); check skipped. "
                               f"Available: {available}")
            return
        self.checks += 1
        epoch, step = trainer.current_epoch, trainer.global_step
        counting = epoch >= self.start_epoch and step >= self.start_step
        reason: str | None = None
        message = ""
        if self.check_finite and not math.isfinite(raw):
            reason = "non_finite"
            message = f"{self.monitor} = {raw} is not finite (best was {self.best_score})."
        else:
            value = self._smooth(raw)
            self.last_value = value
            shown = f"{self.monitor} = {value:.6g}" + (f" (smoothed; raw {raw:.6g})" if self.smoothing else "")
            if math.isfinite(value) and self._improves(value):
                previous = self.best_score
                self.best_score, self.best_epoch, self.best_step = value, epoch, step
                self.wait_count = 0
                self.deferred_reason = None
                if self.restore_best_weights is True:
                    self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
                if self.verbose:
                    rank_zero_info(f"EarlyStopping: {shown} improved on {previous}.")
            elif counting:
                self.wait_count += 1
            if self.stopping_threshold is not None and self._better_than(value, self.stopping_threshold):
                reason = "stopping_threshold"
                message = f"{shown} reached stopping_threshold={self.stopping_threshold:g}."
            elif (counting and self.divergence_threshold is not None
                  and (not math.isfinite(value) or self._better_than(self.divergence_threshold, value))):
                reason = "divergence_threshold"
                message = f"{shown} is past divergence_threshold={self.divergence_threshold:g}."
            elif counting and self.wait_count >= self.patience:
                reason = "patience"
                by = f"{self.min_delta * 100:g}%" if self.relative_delta else f"{self.min_delta:g}"
                message = (f"{self.monitor} did not improve by more than {by} in the last {self.wait_count} checks "
                           f"(patience={self.patience}); best {self.best_score:.6g} at epoch {self.best_epoch}, "
                           f"step {self.best_step}.")
        stop = False
        if reason is not None:
            if self._can_stop(trainer, at_train_epoch_end):
                stop = True
            elif self.deferred_reason != reason:
                self.deferred_reason = reason
                rank_zero_info(f"EarlyStopping: {message} Not stopping yet: Trainer(min_epochs="
                               f"{trainer.fit_loop.min_epochs}, min_steps={trainer.fit_loop.min_steps}) is not met; "
                               "training stops when it is, if the condition still holds then.")
        if trainer.world_size > 1:
            stop, reason, message = trainer.strategy.broadcast((stop, reason, message), 0)
        if stop:
            trainer.should_stop = True
            self.stopped_epoch, self.stopped_step = epoch, step
            self.stop_reason, self.stop_message = reason, message
            rank_zero_info(f"EarlyStopping: stopping at epoch {epoch}, step {step} ({reason}): {message}")
            self._log_stop(trainer)

    def _log_stop(self, trainer: pl.Trainer) -> None:
        metrics = {"early_stopping/stopped_epoch": float(self.stopped_epoch),
                   "early_stopping/wait_count": float(self.wait_count),
                   "early_stopping/reason_" + str(self.stop_reason): 1.0}
        if self.best_score is not None:
            metrics["early_stopping/best"] = float(self.best_score)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "wait_count": self.wait_count,
            "checks": self.checks,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "last_value": self.last_value,
            "ema": self.ema,
            "window": list(self.window),
            "stopped_epoch": self.stopped_epoch,
            "stopped_step": self.stopped_step,
            "stop_reason": self.stop_reason,
            "stop_message": self.stop_message,
            "deferred_reason": self.deferred_reason,
            "patience": self.patience,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = int(state_dict["wait_count"])
        self.checks = int(state_dict.get("checks", 0))
        self.best_score = state_dict.get("best_score")
        self.best_epoch = int(state_dict.get("best_epoch", -1))
        self.best_step = int(state_dict.get("best_step", -1))
        self.last_value = state_dict.get("last_value")
        self.ema = state_dict.get("ema")
        self.window = list(state_dict.get("window", []))
        self.stopped_epoch = int(state_dict.get("stopped_epoch", -1))
        self.stopped_step = int(state_dict.get("stopped_step", -1))
        self.stop_reason = state_dict.get("stop_reason")
        self.stop_message = state_dict.get("stop_message")
        self.deferred_reason = state_dict.get("deferred_reason")
        self.best_state = state_dict.get("best_state")
