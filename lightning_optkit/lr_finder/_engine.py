"""The range-test engine shared by :func:`find_lr` and the ``LRFinder`` callback.

The test runs *beside* the fit loop, not inside it: it draws batches from its own iterator over the
trainer's training loader(s), and for each optimizer step calls the strategy's ``training_step``,
``backward`` and ``optimizer_step`` (so AMP, gradient clipping, DDP gradient averaging and the
module's ``on_before_backward``/``on_after_backward``/``on_before_optimizer_step`` hooks behave as in
training). The fit loop's counters, data iterator and scheduler are never touched, so nothing has to
be rewound there: ``global_step``, the epoch/batch progress and the scheduler state are what they
were. While the test runs, the trainer's callbacks are detached (they see no hook), step hooks registered on
the optimizers are paused, and ``self.log`` calls go to a throw-away result collection (no logger
sees them). Hooks on the model's modules and tensors still run: they are part of the model. Everything else the
test changes is snapshot first and restored after (:mod:`._state`).

Steps: with gradient accumulation ``a``, one LR per optimizer step (``a`` batches each); with manual
optimization, one LR per ``training_step`` call (the module steps its optimizers itself).
Under DDP the loss of each step is averaged over ranks, the stop decision is taken jointly, and
rank 0's result is broadcast, so every rank gets the same suggestion.

Lightning's ``optimizer_step``/``optimizer_zero_grad`` module hooks are bypassed during the test:
a hook that sets the LR (a hand-written warm-up) would defeat the sweep.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .._internal.ranks import device_mean
from .._internal.training import accumulation_at
from ..config import ConfigError
from ._apply import LRPlan, lr_plan, schedule_profile
from ._data import BatchStream, flatten, held_out_loaders, probe_mode, training_loaders
from ._result import LRFinderResult
from ._rules import Curve, noise_level, rules_curve, schedule_peak, suggest_all
from ._settings import RangeTestSettings, sweep_lrs
from ._state import TrainingSnapshot
from ._verdict import assess

__all__ = ["RangeTestSettings", "run_range_test", "sweep_lrs"]

_MIN_STEPS_BEFORE_STOP = 5
_STEP_HOOKS = ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks")


# --------------------------------------------------------------------------------------------------
# Checks


def _target(trainer: Any, settings: RangeTestSettings) -> int:
    optimizers = trainer.optimizers
    if not optimizers:
        raise ConfigError("optimizer", None, "an optimizer returned by configure_optimizers to test",
                          hint="the LR finder sweeps the LR of an optimizer; configure_optimizers returned none")
    if settings.optimizer is None:
        if len(optimizers) > 1:
            names = ", ".join(f"{i}: {type(o).__name__}" for i, o in enumerate(optimizers))
            raise ConfigError("optimizer",
                              expected=f"the index of the optimizer to test: configure_optimizers returned "
                                       f"{len(optimizers)} ({names})",
                              hint="pass optimizer=<index>; the others keep their LR during the test")
        index = 0
    else:
        index = int(settings.optimizer)
        if index >= len(optimizers):
            raise ConfigError("optimizer", settings.optimizer,
                              f"an index below {len(optimizers)} (configure_optimizers returned {len(optimizers)})")
    optimizer = optimizers[index]
    if isinstance(optimizer, torch.optim.LBFGS):
        raise ConfigError("optimizer", type(optimizer).__name__,
                          "an optimizer that takes one step per batch: LBFGS re-evaluates the loss several times "
                          "per step, so there is no loss-per-LR curve to read",
                          hint="run the range test with the optimizer's first-order cousin, or pick the LR by a sweep")
    return index


def _check_module(module: Any) -> None:
    if module is None:
        raise ConfigError("model", None, "a LightningModule attached to the trainer")
    params = inspect.signature(module.training_step).parameters
    if "dataloader_iter" in params:
        raise ConfigError("training_step", "training_step(self, dataloader_iter)",
                          "training_step(self, batch, batch_idx): the range test feeds batches itself")


# --------------------------------------------------------------------------------------------------
# Isolation of the trainer while the test runs


@contextlib.contextmanager
def _isolated(trainer: Any, module: Any, loaders: list[Any]) -> Iterator[None]:
    from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultCollection

    epoch_loop = trainer.fit_loop.epoch_loop
    saved_callbacks = trainer.callbacks
    saved_results = epoch_loop._results
    saved_fx = trainer._logger_connector._current_fx
    saved_module_fx = module._current_fx_name
    saved_should_stop = trainer.should_stop
    # a loader with persistent workers keeps one iterator, which the fit loop is using: give the
    # test its own and put the fit loop's back afterwards
    persistent = {id(dl): (dl, dl._iterator) for dl in loaders
                  if getattr(dl, "persistent_workers", False) and hasattr(dl, "_iterator")}
    for dl, _it in persistent.values():
        dl._iterator = None
    # step hooks other callbacks put on the optimizers (gradient statistics, inf checks) must not see the test
    hooks = [(opt, attr, getattr(opt, attr)) for opt in trainer.optimizers for attr in _STEP_HOOKS
             if isinstance(getattr(opt, attr, None), OrderedDict)]
    for opt, attr, _h in hooks:
        setattr(opt, attr, OrderedDict())
    trainer.callbacks = []
    epoch_loop._results = _ResultCollection(training=True)
    try:
        with torch.enable_grad():
            yield
    finally:
        trainer.callbacks = saved_callbacks
        epoch_loop._results = saved_results
        trainer._logger_connector._current_fx = saved_fx
        module._current_fx_name = saved_module_fx
        trainer.should_stop = saved_should_stop
        for opt, attr, h in hooks:
            setattr(opt, attr, h)
        for dl, it in persistent.values():
            mine = dl._iterator
            if mine is not None and mine is not it:
                with contextlib.suppress(Exception):
                    mine._shutdown_workers()
            dl._iterator = it


def _loss_of(output: Any, manual: bool) -> torch.Tensor | None:
    if output is None:
        return None
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("loss"), torch.Tensor):
        return output["loss"]
    what = "with manual optimization, training_step must return the loss (a tensor or {'loss': tensor})" if manual \
        else "training_step to return a loss tensor, a dict with 'loss', or None"
    raise ConfigError("training_step", type(output).__name__, what)


# --------------------------------------------------------------------------------------------------
# The sweep


@dataclass
class _Record:
    lrs: list[float]
    losses: list[float]
    val_losses: list[float] | None
    diverged_at: int | None


class _Sweep:
    def __init__(self, trainer: Any, module: Any, index: int, plan: LRPlan, settings: RangeTestSettings) -> None:
        self.trainer = trainer
        self.module = module
        self._batch_stats = True  # BatchNorm uses the probe batch's statistics (see probe_mode)
        self.strategy = trainer.strategy
        self.optimizer = trainer.optimizers[index]
        self.plan = plan
        self.settings = settings
        self.manual = not module.automatic_optimization
        self.distributed = trainer.world_size > 1

    def _training_step(self, batch: Any, batch_idx: int) -> Any:
        self.module._current_fx_name = "training_step"
        return self.strategy.training_step(batch, batch_idx)

    def _set_lr(self, lr: float) -> None:
        for group, ratio in zip(self.optimizer.param_groups, self.plan.ratios):
            value = lr * ratio
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(value)
            else:
                group["lr"] = value

    def _to_device(self, batch: Any) -> Any:
        return self.strategy.batch_to_device(batch, dataloader_idx=0)

    def _automatic_step(self, stream: BatchStream, accumulate: int) -> torch.Tensor | None:
        losses: list[torch.Tensor] = []

        def closure() -> torch.Tensor | None:
            for _ in range(accumulate):
                batch, batch_idx = stream.next()
                loss = _loss_of(self._training_step(self._to_device(batch), batch_idx), manual=False)
                if loss is None:
                    if self.distributed:
                        raise RuntimeError("training_step returned None under distributed training; the LR finder "
                                           "(like Lightning) cannot skip a step on one rank only")
                    continue
                self.strategy.backward(loss / accumulate, self.optimizer)
                losses.append(loss.detach().float())
            return torch.stack(losses).mean() if losses else None

        self.optimizer.zero_grad(set_to_none=True)
        self.strategy.optimizer_step(self.optimizer, closure, model=self.module)
        return torch.stack(losses).mean() if losses else None

    def _manual_step(self, stream: BatchStream) -> torch.Tensor | None:
        batch, batch_idx = stream.next()
        loss = _loss_of(self._training_step(self._to_device(batch), batch_idx), manual=True)
        if loss is None:
            raise ConfigError("training_step", None,
                              "with manual optimization, training_step must return the loss (a tensor or {'loss': tensor})",
                              hint="the LR finder reads the loss of each step from what training_step returns")
        return loss.detach().float()

    def _held_out_loss(self, batches: list[tuple[Any, int]]) -> torch.Tensor:
        try:
            return self._probe(batches, self._batch_stats)
        except ValueError:  # e.g. BatchNorm's "Expected more than 1 value per channel" on a 1-sample batch
            if not self._batch_stats:
                raise
            self._batch_stats = False
            return self._probe(batches, False)

    def _probe(self, batches: list[tuple[Any, int]], batch_stats: bool) -> torch.Tensor:
        precision = self.strategy.precision_plugin
        values = []
        with probe_mode(self.module, batch_stats), torch.no_grad(), precision.val_step_context():
            for batch, idx in batches:
                self.module._current_fx_name = "training_step"
                loss = _loss_of(self.module.training_step(batch, idx), manual=self.manual)
                if loss is not None:
                    values.append(loss.detach().float())
        if not values:
            return torch.tensor(float("nan"), device=self.strategy.root_device)
        return torch.stack(values).mean()

    def _mean_over_ranks(self, value: torch.Tensor | None) -> float:
        if value is None:
            return float("nan")
        if self.distributed:
            value = device_mean(self.trainer, value.to(self.strategy.root_device))
        return float(value)

    def _first_held_out(self, val_loaders: Any, count: int) -> list[tuple[Any, int]]:
        """The held-out batches, probed once before the sweep in ``"auto"`` mode: when ``training_step``
        cannot take a validation batch (another batch layout), the test reads the training loss and warns."""
        from lightning.pytorch.utilities import rank_zero_warn

        val_stream = BatchStream(flatten(val_loaders)[0], float("inf"))
        held_out = [(self._to_device(b), i) for b, i in (val_stream.next() for _ in range(count))]
        if self.settings.val_batches == "auto":
            try:
                self._held_out_loss(held_out)
            except Exception as err:  # any failure of the user's step turns the probes off
                rank_zero_warn(f"LR range test: reading the training loss only; training_step failed on a "
                               f"validation batch ({type(err).__name__}: {err}). Set val_batches=0 to silence this.")
                return []
        return held_out

    def run(self, train_loaders: Any, val_loaders: Any, val_count: int) -> _Record:
        settings = self.settings
        limit = self.trainer.num_training_batches
        stream = BatchStream(train_loaders, limit if isinstance(limit, (int, float)) else float("inf"))
        held_out = self._first_held_out(val_loaders, val_count) if val_loaders is not None and val_count else []
        accumulate = 1 if self.manual else accumulation_at(self.trainer, self.trainer.current_epoch)
        lrs: list[float] = []
        losses: list[float] = []
        val_losses: list[float] | None = [] if held_out else None
        avg, best = 0.0, math.inf
        threshold = settings.divergence_threshold
        diverged_at: int | None = None
        for k, lr in enumerate(sweep_lrs(settings)):
            self._set_lr(lr)
            step_loss = self._manual_step(stream) if self.manual else self._automatic_step(stream, accumulate)
            loss = self._mean_over_ranks(step_loss)
            lrs.append(lr)
            losses.append(loss)
            if val_losses is not None:
                val_losses.append(self._mean_over_ranks(self._held_out_loss(held_out)))
            stop = False
            if not math.isfinite(loss):
                stop = True
            else:
                avg = settings.beta * avg + (1 - settings.beta) * loss
                smoothed = avg / (1 - settings.beta ** (k + 1))
                if threshold is not None and k >= _MIN_STEPS_BEFORE_STOP and math.isfinite(best) \
                        and smoothed > best + (threshold - 1) * abs(best):
                    stop = True
                best = min(best, smoothed)
            if self.distributed:
                stop = self.strategy.reduce_boolean_decision(stop, all=False)
            if stop:
                diverged_at = k
                break
        return _Record(lrs, losses, val_losses, diverged_at)


# --------------------------------------------------------------------------------------------------
# Entry point


def _snapshot_dir(trainer: Any, settings: RangeTestSettings) -> str:
    if settings.snapshot_dir is not None:
        return os.fspath(settings.snapshot_dir)
    try:
        log_dir = trainer.log_dir
    except Exception:
        log_dir = None
    return os.fspath(log_dir or trainer.default_root_dir)


def run_range_test(trainer: Any, settings: RangeTestSettings) -> LRFinderResult:
    """Run one LR range test on ``trainer``'s module and optimizer, leaving no trace; returns the result.

    The trainer must be fitting with its strategy set up (from a callback hook such as
    ``on_fit_start`` or ``on_train_epoch_start``). Nothing is applied here: see
    :func:`~lightning_optkit.lr_finder.apply_result`.
    """
    module = trainer.lightning_module
    _check_module(module)
    index = _target(trainer, settings)
    optimizer = trainer.optimizers[index]
    plan = lr_plan(module, optimizer, index)
    train_loaders = training_loaders(trainer)
    flat_train = flatten(train_loaders)
    val_loaders, val_count = held_out_loaders(trainer, settings)
    flat_val = flatten(val_loaders) if val_loaders is not None else []
    schedulers = [c.scheduler for c in trainer.lr_scheduler_configs]
    snapshot = TrainingSnapshot.take(
        module, trainer.optimizers, schedulers,
        scaler=getattr(trainer.strategy.precision_plugin, "scaler", None),
        loaders=[*flat_train, *flat_val],
        where=settings.snapshot,
        directory=_snapshot_dir(trainer, settings) if settings.snapshot == "disk" else None,
    )
    try:
        with _isolated(trainer, module, [*flat_train, *flat_val]):
            record = _Sweep(trainer, module, index, plan, settings).run(train_loaders, val_loaders, val_count)
    finally:
        snapshot.restore()
    result = _result(trainer, optimizer, plan, settings, record)
    return trainer.strategy.broadcast(result, src=0)


def _flatness(curve: Curve) -> str:
    """A warning when the loss barely moved against its own step-to-step noise (every rule then guesses)."""
    start, end = curve.window()
    imin = curve.minimum_index()
    if imin is None or end - start < 5:
        return ""
    if imin - start < 4:
        return ""
    noise = noise_level(curve)
    drop = float(curve.smoothed[start] - curve.smoothed[imin])
    if drop < noise:
        return (f"the loss barely moved (a drop of {drop:.3g} against step-to-step noise of {noise:.3g}): "
                "every rule is guessing; look at the plot, use larger batches or more num_steps")
    return ""


def _result(trainer: Any, optimizer: torch.optim.Optimizer, plan: LRPlan, settings: RangeTestSettings,
            record: _Record) -> LRFinderResult:
    curve = Curve.from_losses(record.lrs, record.losses, settings.beta, record.diverged_at)
    read = rules_curve(record.lrs, record.losses, record.val_losses, settings.beta, record.diverged_at)
    suggestions = suggest_all(read)
    verdict = assess(read, suggestions[settings.rule])
    if verdict.status == "diverged_at_once":  # nothing to suggest: every rule would read noise
        suggestions = dict.fromkeys(suggestions)
    suggestion = suggestions[settings.rule]
    messages = []
    if record.diverged_at is not None:
        messages.append(f"the loss diverged at step {record.diverged_at} (lr {record.lrs[record.diverged_at]:.3g})")
    flat = _flatness(curve)
    if flat:
        messages.append(flat)
    if verdict.status == "diverged_at_once":
        messages.append(f"no suggestion: {verdict.advice}")
    elif suggestion is None:
        messages.append(f"no suggestion: rule '{settings.rule}' needs a descending stretch of at least 3 steps "
                        f"before the divergence (got {curve.stop} usable steps); lower min_lr or raise "
                        "divergence_threshold")
    # the schedule ahead, seen through the group with the largest ratio (its LR is the reference's multiple)
    group = max(range(len(plan.ratios)), key=lambda i: plan.ratios[i])
    profile = schedule_profile(trainer, optimizer, group, plan.configured * plan.ratios[group])
    factor = 1.0
    if settings.schedule_aware and profile.mean_factor > 0:
        factor = 1.0 / profile.mean_factor
    recommended = None if suggestion is None else schedule_peak(read, suggestion, factor, profile.kind)
    return LRFinderResult(
        lrs=record.lrs,
        losses=record.losses,
        smoothed=[float(v) for v in curve.smoothed],
        suggestions=suggestions,
        rule=settings.rule,
        recommended_lr=recommended,
        val_losses=record.val_losses,
        schedule=profile.kind,
        peak_factor=factor,
        diverged_at=record.diverged_at,
        reference=plan.reference,
        epoch=int(trainer.current_epoch),
        message="; ".join(messages),
        settings=asdict(settings),
        status=verdict.status,
        interval=verdict.interval,
        confidence=verdict.confidence,
        cliff_lr=verdict.divergence_lr,
        margin_lr=verdict.margin_lr,
        advice=verdict.advice,
    )

