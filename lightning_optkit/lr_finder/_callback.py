"""LRFinder: the LR range test as a Trainer callback, at the start of training and at chosen epochs."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..config import ConfigError
from ..schedules import follow_param_groups
from ._apply import apply_result
from ._engine import RangeTestSettings, run_range_test
from ._result import LRFinderResult
from ._rules import DEFAULT_RULE

__all__ = ["LRFinder"]


def _epochs(value: Any) -> tuple[int, ...]:
    try:
        items = [value] if isinstance(value, int) and not isinstance(value, bool) else list(value)
    except TypeError:
        items = []
    ok = all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in items)
    out = tuple(sorted(set(items))) if ok else ()
    if not ok or not out:
        raise ConfigError("epochs", value, "a non-empty list of epoch indices >= 0 (0: at the start of training)",
                          hint="e.g. epochs=[0, 5] to test again when epoch 5 starts (after unfreezing a backbone)")
    return out


def _live_groups(trainer: L.Trainer, index: int) -> str:
    """The live optimizer's groups and their LRs now, e.g. ``Adam (3 groups): lr 0.01, 0.001, 0.001``."""
    from .._internal.optimizers import unwrap_optimizer

    opt = unwrap_optimizer(trainer.optimizers[index])
    n = len(opt.param_groups)
    lrs = ", ".join(f"{float(g['lr']):.4g}" for g in opt.param_groups)
    return f"{type(opt).__name__} ({n} group{'s' * (n != 1)}): lr {lrs}"


class LRFinder(Callback):
    """Run an LR range test when training starts (and again at chosen epochs) and use its suggestion.

    At the start of ``fit`` (epoch 0), and at the start of every epoch listed in ``epochs``, the
    callback sweeps the learning rate of the optimizer over ``num_steps`` optimizer steps from
    ``min_lr`` to ``max_lr`` on the training data, restores everything the test touched (weights,
    optimizer and scheduler state, RNGs, counters; nothing is logged and other callbacks see no
    hook), picks an LR with ``rule`` and, with ``apply=True``, writes it:

    * with :class:`~lightning_optkit.OptimMixin`, into the optim config (``optimizer.lr``; other LRs
      keep their ratio to it), so the fit, its checkpoints and a tuning run see it. At the start
      of a fresh fit the optimizer and scheduler are rebuilt from the new config;
    * otherwise, into every param group of the optimizer (ratios kept) and the scheduler's base LRs.

    With a schedule that has a peak (warm-up + cosine, OneCycle...), the LR written is the peak whose
    mean LR over the steps ahead equals the constant-LR suggestion (``schedule_aware``).
    A test at a later epoch (``epochs=[0, 5]``, e.g. after a backbone is unfrozen) measures from
    the current weights and optimizer state and keeps that state. Put ``LRFinder`` after callbacks
    that change the model at epoch start (``BackboneFinetuning``), so it tests the changed model.

    Args:
        min_lr, max_lr, num_steps, mode: the sweep.
        rule: the suggestion rule (default chosen by the quality benchmark; see the README).
        val_batches: held-out batches whose loss is recorded after every step and read by the rules;
            ``"auto"`` (default): 2 when the run has validation data, else 0 (see :func:`find_lr`).
        divergence_threshold: stop once the smoothed loss exceeds this multiple of its best.
        beta: smoothing of the bias-corrected moving average.
        epochs: epochs at whose start to run (0: at the start of training).
        apply: write the recommendation (else only record it in :attr:`results`).
        schedule_aware: apply the schedule's peak rule.
        optimizer: index of the optimizer to test when ``configure_optimizers`` returns several.
        snapshot: keep the pre-test copy in ``"memory"`` or on ``"disk"`` (in ``snapshot_dir``,
            default the trainer's log dir), for models whose copy does not fit in memory.
        snapshot_dir: folder of the on-disk copy.
        verbose: print the suggestions (rank 0).

    Attributes:
        results: ``{epoch: LRFinderResult}`` of the tests run so far (kept in checkpoints).

    Example:
        (Lines marked ``+SKIP`` are not run as doctests: needs your model and data; tests/test_lr_finder.py runs it for real.)
        >>> import lightning as L
        >>> finder = LRFinder(num_steps=50, epochs=[0, 3])
        >>> trainer = L.Trainer(callbacks=[finder], max_epochs=5, logger=False)  # doctest: +SKIP
        >>> trainer.fit(model, datamodule=data)  # doctest: +SKIP
        >>> finder.results[0].suggestion  # doctest: +SKIP
        0.0023
        >>> finder.state_key
        "LRFinder{'epochs': (0, 3), 'optimizer': None}"
    """

    def __init__(
        self,
        *,
        min_lr: float = 1e-7,
        max_lr: float = 10.0,
        num_steps: int = 100,
        mode: str = "exponential",
        rule: str = DEFAULT_RULE,
        val_batches: int | str = "auto",
        divergence_threshold: float | None = 4.0,
        beta: float = 0.98,
        epochs: Iterable[int] | int = (0,),
        apply: bool = True,
        schedule_aware: bool = True,
        optimizer: int | None = None,
        snapshot: str = "memory",
        snapshot_dir: str | os.PathLike | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        self.settings = RangeTestSettings(
            min_lr=min_lr, max_lr=max_lr, num_steps=num_steps, mode=mode, rule=rule, val_batches=val_batches,
            divergence_threshold=divergence_threshold, beta=beta, schedule_aware=schedule_aware,
            optimizer=optimizer, snapshot=snapshot,
            snapshot_dir=None if snapshot_dir is None else os.fspath(snapshot_dir),
        )
        self.epochs = _epochs(epochs)
        for name, flag in (("apply", apply), ("verbose", verbose)):
            if not isinstance(flag, bool):
                raise ConfigError(name, flag, "true or false")
        self.apply = apply
        self.verbose = verbose
        self.results: dict[int, LRFinderResult] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(epochs=self.epochs, optimizer=self.settings.optimizer)

    @property
    def result(self) -> LRFinderResult | None:
        """The result of the latest test (``None`` before the first)."""
        return self.results[max(self.results)] if self.results else None

    # -- hooks ---------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if 0 not in self.epochs or 0 in self.results:
            return
        if trainer.ckpt_path is not None:  # resuming: training already started, the test at epoch 0 is past
            return
        self._run(trainer, 0)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = int(trainer.current_epoch)
        if epoch == 0 or epoch not in self.epochs or epoch in self.results:
            return
        self._run(trainer, epoch)

    def _run(self, trainer: L.Trainer, epoch: int) -> None:
        if trainer.fast_dev_run:
            rank_zero_warn("LRFinder: skipped because fast_dev_run is on (a range test needs num_steps batches)")
            return
        if trainer.sanity_checking:  # pragma: no cover - no hook of ours runs then
            return
        follow_param_groups(c.scheduler for c in trainer.lr_scheduler_configs)  # groups added at this epoch's start
        result = run_range_test(trainer, self.settings)
        if self.apply and result.recommended_lr is not None:
            result.applied = apply_result(trainer, result, self.settings.optimizer or 0)
        self.results[epoch] = result
        if result.recommended_lr is None:
            rank_zero_warn(f"LRFinder (epoch {epoch}): no suggestion, the LR is left as it was. {result.message}")
        elif self.verbose:
            action = f"set {result.reference} = {result.recommended_lr:.4g}" if result.applied else \
                f"recommends {result.reference} = {result.recommended_lr:.4g} (apply=False: not set)"
            rank_zero_info(f"LRFinder (epoch {epoch}): {action}; {_live_groups(trainer, self.settings.optimizer or 0)}"
                           f"\n{result.summary()}")

    # -- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"results": {str(e): r.to_dict() for e, r in self.results.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.results = {int(e): LRFinderResult.from_dict(r) for e, r in state_dict.get("results", {}).items()}
