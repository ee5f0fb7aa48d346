"""find_lr: the functional LR range test."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from ..config import ConfigError
from ._apply import apply_result, config_source
from ._engine import RangeTestSettings, run_range_test
from ._result import LRFinderResult
from ._rules import DEFAULT_RULE
from ._state import collect_rng_state, restore_rng_state

__all__ = ["find_lr"]

_DEFAULT_TRAINER: dict[str, Any] = dict(
    accelerator="auto",
    devices=1,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)


class _RunOnce(Callback):
    """Runs the test at ``on_fit_start`` and ends the fit, as Lightning's tuner does."""

    def __init__(self, settings: RangeTestSettings, update_config: bool) -> None:
        self.settings = settings
        self.update_config = update_config
        self.result: LRFinderResult | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.pytorch.utilities.exceptions import _TunerExitException

        result = run_range_test(trainer, self.settings)
        if self.update_config:
            result.applied = apply_result(trainer, result, self.settings.optimizer or 0)
        self.result = result
        raise _TunerExitException()


def find_lr(
    model: L.LightningModule,
    train_dataloaders: Any = None,
    val_dataloaders: Any = None,
    datamodule: L.LightningDataModule | None = None,
    *,
    trainer: L.Trainer | None = None,
    min_lr: float = 1e-7, max_lr: float = 10.0, num_steps: int = 100, mode: str = "exponential",
    rule: str = DEFAULT_RULE,
    val_batches: int | str = "auto",
    divergence_threshold: float | None = 4.0,
    beta: float = 0.98,
    schedule_aware: bool = True,
    optimizer: int | None = None,
    snapshot: str = "memory", snapshot_dir: str | os.PathLike | None = None,
    update_config: bool = False,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> LRFinderResult:
    """Run an LR range test on ``model`` and return the curve and every rule's suggestion.

    The model and every global random generator are exactly as they were afterwards (so ``seed_everything(0);
    find_lr(...); trainer.fit(...)`` trains as ``seed_everything(0); trainer.fit(...)``), and the trainer can be used
    for the real ``fit`` next. ``result.recommended_lr`` is the value to configure as ``optimizer.lr``: the rule's
    suggestion, scaled for the schedule when it has a peak (warm-up/cosine, OneCycle: the schedule's mean LR ahead
    equals the suggestion), never above ``result.margin_lr`` (the LR where the loss starts to rise, divided by a
    safety margin). ``result.interval`` and ``result.confidence`` say how sure the curve is; ``result.status`` is
    ``"flat"``, ``"noisy"`` or ``"diverged_at_once"`` (no suggestion) when it is weak, with ``result.advice`` saying
    what to change.

    Args:
        model: the LightningModule (with :class:`~lightning_optkit.OptimMixin` or its own ``configure_optimizers``).
        train_dataloaders, val_dataloaders, datamodule: the data, as for ``Trainer.fit``.
        trainer: the Trainer to run on (use the one you will fit with: its length sets the schedule, its precision,
            accumulation and strategy are used). Default: a quiet single-device Trainer built from ``trainer_kwargs``.
        min_lr, max_lr, num_steps, mode: the sweep (``num_steps`` optimizer steps from ``min_lr`` to ``max_lr``,
            exponentially or linearly spaced).
        rule: the rule of :attr:`LRFinderResult.suggestion` (``"guarded"``, the default, ``"steepest"``,
            ``"valley"``, ``"minimum"``, ``"median"``).
        val_batches: held-out batches whose loss is measured after every step; the rules then read the
            held-out curve (validation-aware mode: sees overfitting; BatchNorm layers use the probe batch's
            statistics). ``"auto"`` (default): 2 when the run has validation data and automatic
            optimization, else 0 (training loss only); 0 turns it off.
        divergence_threshold: stop once the smoothed loss exceeds this multiple of its best.
        beta: smoothing of the bias-corrected moving average.
        schedule_aware: apply the schedule's peak rule to ``recommended_lr``.
        optimizer: index of the optimizer to test when there are several.
        snapshot, snapshot_dir: keep the pre-test copy in ``"memory"`` or on ``"disk"``.
        update_config: write ``recommended_lr`` into the model's optim config (mixin only).
        trainer_kwargs: arguments of the default Trainer (``max_epochs`` sets the schedule's length).

    Raises:
        ConfigError: for a bad argument, LBFGS, several optimizers without ``optimizer=``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_optkit import OptimMixin
        >>> class Net(OptimMixin, L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.optim_config = {"optimizer": {"name": "adam", "lr": 1e-3}}
        ...         self.layer = nn.Linear(4, 1)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return nn.functional.mse_loss(self.layer(x), y)
        >>> data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randn(64, 1)), batch_size=8)
        >>> result = find_lr(Net(), data, num_steps=30, trainer_kwargs={"accelerator": "cpu", "max_epochs": 1})
        >>> len(result.lrs) <= 30 and result.rule
        'guarded'
    """
    settings = RangeTestSettings(
        min_lr=min_lr, max_lr=max_lr, num_steps=num_steps, mode=mode, rule=rule, val_batches=val_batches,
        divergence_threshold=divergence_threshold, beta=beta, schedule_aware=schedule_aware,
        optimizer=optimizer, snapshot=snapshot, snapshot_dir=None if snapshot_dir is None else os.fspath(snapshot_dir),
    )
    trainer = _checked_trainer(model, trainer, trainer_kwargs, update_config)
    return _run_on_trainer(trainer, model, _RunOnce(settings, update_config),
                           train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders, datamodule=datamodule)


def _checked_trainer(model: Any, trainer: L.Trainer | None, trainer_kwargs: Any, update_config: Any) -> L.Trainer:
    """Check ``find_lr``'s non-sweep arguments and return the Trainer to run on (built when ``None``).

    Raises:
        ConfigError: naming the bad argument, its value and what is valid.
    """
    if not isinstance(model, L.LightningModule):
        raise ConfigError("model", type(model).__name__, "a LightningModule")
    if not isinstance(update_config, bool):
        raise ConfigError("update_config", update_config, "true or false")
    if update_config and config_source(model) is None:
        raise ConfigError("update_config", True, "a model with OptimMixin and an optim config to write the LR into",
                          hint="without the mixin, read result.recommended_lr and set it yourself")
    if trainer is None:
        if trainer_kwargs is not None and not isinstance(trainer_kwargs, Mapping):
            raise ConfigError("trainer_kwargs", trainer_kwargs, "a dict of Trainer arguments")
        trainer = L.Trainer(**{**_DEFAULT_TRAINER, **dict(trainer_kwargs or {})})
    elif trainer_kwargs:
        raise ConfigError("trainer_kwargs", dict(trainer_kwargs), "nothing when trainer= is given",
                          hint="configure the Trainer you pass, or leave trainer=None")
    if trainer.fast_dev_run:
        raise ConfigError("trainer.fast_dev_run", trainer.fast_dev_run, "False: fast_dev_run runs one batch, "
                          "a range test needs num_steps")
    return trainer


def _run_on_trainer(trainer: L.Trainer, model: L.LightningModule, runner: _RunOnce, **data: Any) -> LRFinderResult:
    """Fit ``model`` with only ``runner`` as callback, then restore the trainer and every RNG; return the result.

    ``data`` holds ``Trainer.fit``'s ``train_dataloaders``, ``val_dataloaders`` and ``datamodule``.
    """
    rng = collect_rng_state()  # the fit's own set-up (loader iterators) draws from them too
    saved_callbacks, saved_loggers = trainer.callbacks, trainer.loggers
    # the user's callbacks and loggers see nothing of the test (no hparams logged, no checkpoint dirs)
    trainer.callbacks = [runner]
    trainer.loggers = []
    try:
        trainer.fit(model, **data)
    finally:
        trainer.callbacks = saved_callbacks
        trainer.loggers = saved_loggers
        # a later fit must request its loaders again (as Lightning's own tuner does)
        trainer.fit_loop._combined_loader = None
        trainer.fit_loop.epoch_loop.val_loop._combined_loader = None
        restore_rng_state(rng)
    if runner.result is None:  # pragma: no cover - the fit ended before on_fit_start
        raise RuntimeError("the LR range test did not run: the fit ended before on_fit_start")
    return runner.result
