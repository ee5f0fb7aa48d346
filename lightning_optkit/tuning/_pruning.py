"""PruningCallback: report every validation to an Optuna trial at its optimizer step; DDP-safe pruning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..config import ConfigError, did_you_mean

__all__ = ["PruningCallback"]


class PruningCallback(Callback):
    """Report the monitored metric to an Optuna trial after every validation, and prune.

    The step given to Optuna is the **optimizer step** (``trainer.global_step``), so several
    validations per epoch (``val_check_interval=0.25``) are all kept, and pruners compare trials at
    the same amount of training whatever their batch size or accumulation.

    When the pruner says stop, every rank stops at that validation and the callback raises
    :class:`optuna.TrialPruned` out of ``trainer.fit``, so an objective needs no ``check_pruned()``:
    Optuna records the trial as PRUNED.

    Under DDP (``strategy="ddp"`` with Lightning's launcher, or torchrun) only rank 0 holds the
    trial; pass ``trial=None`` on the other ranks. The value reported is the mean over ranks (equal
    to the logged value when the metric is already synchronized, e.g. ``sync_dist=True`` or a
    torchmetrics metric), and rank 0's prune decision is broadcast, so all ranks stop together.
    :func:`~lightning_optkit.tuning.tune` does all of this for you, including sending the sampled
    hyperparameters to the other ranks before the model is built.

    A trial whose weights hold a NaN or an infinity at a validation has diverged and cannot
    recover: it is pruned there, whatever the pruner would say (user attribute ``optkit.diverged``:
    the optimizer step), unless the study's pruner is ``NopPruner`` (``pruner="none"``: every trial
    trains to its end). The check is one host read per validation, none per training step.

    With several monitored metrics (a multi-objective study) nothing is reported -- Optuna prunes
    single-objective studies only -- and the callback says so once; the values of every validation
    are kept in the trial's user attribute ``optkit.intermediate_values``.

    Args:
        trial: the trial (rank 0), or ``None`` on the other ranks of a DDP run.
        monitor: the metric logged in validation (``"val_acc"``), or a list for a multi-objective study.

    Raises:
        ConfigError: at the first validation when a monitored metric was not logged (naming the
            metrics that were), or after training when no validation ran.

    Example:
        (Lines marked ``+SKIP`` are not run as doctests: trains a model; tests/test_tuning_pruning.py runs it for real.)
        >>> import optuna
        >>> import lightning as L
        >>> from lightning_optkit.demo import make_example
        >>> def objective(trial):
        ...     model, data = make_example("digits", overrides={
        ...         "optimizer.lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True)})
        ...     trainer = L.Trainer(max_epochs=2, val_check_interval=0.5, logger=False,
        ...                         enable_checkpointing=False, enable_progress_bar=False,
        ...                         enable_model_summary=False,
        ...                         callbacks=[PruningCallback(trial, "val_acc")])
        ...     trainer.fit(model, datamodule=data)
        ...     return trainer.callback_metrics["val_acc"].item()
        >>> study = optuna.create_study(direction="maximize")
        >>> study.optimize(objective, n_trials=1)  # doctest: +SKIP
        >>> sorted(study.trials[0].intermediate_values)  # doctest: +SKIP
        [11, 23, 34, 46]
    """

    def __init__(self, trial: optuna.trial.Trial | None, monitor: str | Sequence[str], *,
                 record_only: bool = False) -> None:
        super().__init__()
        self.record_only = record_only  # no trial on rank 0 either: only record (a re-evaluation run)
        monitors = (monitor,) if isinstance(monitor, str) else tuple(monitor)
        if not monitors or not all(isinstance(m, str) and m for m in monitors):
            raise ConfigError("monitor", monitor, "a metric name such as 'val_loss', or a list of them")
        self.trial = trial
        self.monitors: tuple[str, ...] = monitors
        self.history: list[tuple[int, tuple[float, ...]]] = []
        self.pruned_at: int | None = None
        self._reported: set[int] = set()
        self._warned_repeat = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=list(self.monitors))

    @property
    def multi_objective(self) -> bool:
        return len(self.monitors) > 1

    @property
    def last_values(self) -> tuple[float, ...] | None:
        """The values of the last validation (``None`` before the first one)."""
        return self.history[-1][1] if self.history else None

    @property
    def intermediate_values(self) -> dict[int, tuple[float, ...]]:
        """``{optimizer step: values}`` of every validation so far (the first value per step)."""
        out: dict[int, tuple[float, ...]] = {}
        for step, values in self.history:
            out.setdefault(step, values)
        return out

    # -- Lightning hooks ------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

        launcher = getattr(trainer.strategy, "launcher", None)
        if isinstance(launcher, _MultiProcessingLauncher):
            method = getattr(launcher, "_start_method", None) or getattr(trainer.strategy, "_start_method", "spawn")
            raise ConfigError(
                "trainer.strategy", f"{type(trainer.strategy).__name__} with start_method={method!r} "
                f"(strategy='ddp_{method}' or 'ddp_notebook')",
                "strategy='ddp' (Lightning's subprocess launcher, or torchrun)",
                hint=f"'ddp_{method}' trains in {method}ed copies of this process: the trial's reports and the "
                     "TrialPruned exception stay in those copies. Use Trainer(strategy='ddp'), which starts the "
                     "other ranks as subprocesses and keeps rank 0 in this process (PruningCallback keeps the "
                     "trial there and broadcasts its decisions), or let optkit tune run the DDP trials",
            )
        if trainer.global_rank == 0 and self.trial is None and not self.record_only:
            raise ValueError("PruningCallback: rank 0 needs the trial (trial=None is for the other DDP ranks)")
        if self.trial is not None:
            n = len(self.trial.study.directions)
            if n != len(self.monitors):
                raise ConfigError("monitor", list(self.monitors),
                                  f"{n} metric name(s), one per objective of the study")
        if self.multi_objective:
            rank_zero_info(
                "PruningCallback: multi-objective study -- every validation is recorded (trial user attribute "
                "'optkit.intermediate_values') but nothing is reported and no trial is pruned: Optuna prunes "
                "single-objective studies only."
            )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        step = int(trainer.global_step)
        values = self._gather(trainer, pl_module, step)
        self.history.append((step, values))
        prune, why = False, ""
        if self.trial is not None:
            if self.multi_objective:
                self.trial.set_user_attr("optkit.intermediate_values",
                                         {str(s): list(v) for s, v in self.intermediate_values.items()})
            elif step in self._reported:
                if not self._warned_repeat:
                    self._warned_repeat = True
                    rank_zero_warn(
                        f"PruningCallback: two validations at optimizer step {step} (validation runs more often "
                        "than the optimizer steps, e.g. with gradient accumulation); Optuna keeps the first value "
                        "of each step."
                    )
            else:
                self.trial.report(values[0], step)
                self._reported.add(step)
                prune = self.trial.should_prune()
                if not prune and self._diverged(pl_module):
                    self.trial.set_user_attr("optkit.diverged", step)
                    prune, why = True, "its weights are not finite (diverged)"
        if not self.multi_objective and trainer.world_size > 1:
            prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            self.pruned_at = step
            trainer.should_stop = True
            number = getattr(self.trial, "number", "?")
            raise optuna.TrialPruned(f"trial {number} pruned at optimizer step {step} "
                                     f"({self.monitors[0]} = {values[0]:.6g}{'; ' + why if why else ''})")

    def _diverged(self, pl_module: LightningModule) -> bool:
        """Non-finite weights, when the study prunes at all (rank 0; DDP keeps the ranks' weights equal)."""
        from optuna.pruners import NopPruner

        from .._internal.tensors import first_nonfinite

        if isinstance(getattr(self.trial.study, "pruner", None), NopPruner):
            return False
        return first_nonfinite(list(pl_module.parameters())) is not None

    def _gather(self, trainer: Trainer, pl_module: LightningModule, step: int) -> tuple[float, ...]:
        metrics = trainer.callback_metrics
        if trainer.world_size == 1:
            missing = [m for m in self.monitors if m not in metrics]
            if missing:
                raise self._missing(missing[0], metrics, step)
            return tuple(float(metrics[m]) for m in self.monitors)
        # one all-reduce: the values and how many ranks have all of them
        device = pl_module.device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        row = [float(metrics[m]) if m in metrics else 0.0 for m in self.monitors]
        row.append(1.0 if all(m in metrics for m in self.monitors) else 0.0)
        total = trainer.strategy.reduce(torch.tensor(row, dtype=dtype, device=device), reduce_op="sum")
        count = float(total[-1])
        if count < trainer.world_size - 0.5:
            missing = next((m for m in self.monitors if m not in metrics), self.monitors[0])
            raise self._missing(missing, metrics, step, ranks=trainer.world_size - round(count))
        return tuple(float(v) / trainer.world_size for v in total[:-1].tolist())

    def _missing(self, name: str, metrics: Any, step: int, ranks: int = 0) -> ConfigError:
        logged = sorted(str(k) for k in metrics)
        where = f" on {ranks} rank(s)" if ranks else ""
        return ConfigError(
            "monitor", name,
            f"a metric logged during validation; at the first validation (optimizer step {step}){where} the "
            f"logged metrics were: {', '.join(logged) if logged else 'none'}",
            suggestions=did_you_mean(name, logged),
            hint="log it in validation_step with self.log(name, value), or monitor one of the metrics above",
        )

    # -- results -------------------------------------------------------------------------------------
    def final_values(self) -> tuple[float, ...]:
        """The values of the last validation, which are the trial's objective values.

        Raises:
            ConfigError: when no validation ran.
        """
        if not self.history:
            raise ConfigError(
                "monitor", list(self.monitors) if self.multi_objective else self.monitors[0],
                "a metric logged during validation, but no validation ran in this trial",
                hint="give the model a validation_step and the data a val_dataloader, and check "
                     "limit_val_batches / check_val_every_n_epoch against the run's length",
            )
        return self.history[-1][1]

    def state_dict(self) -> dict[str, Any]:
        return {"history": [[s, list(v)] for s, v in self.history], "pruned_at": self.pruned_at,
                "reported": sorted(self._reported)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [(int(s), tuple(float(x) for x in v)) for s, v in state_dict.get("history", [])]
        self.pruned_at = state_dict.get("pruned_at")
        self._reported = set(state_dict.get("reported", []))
