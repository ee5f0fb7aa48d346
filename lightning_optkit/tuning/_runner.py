"""The trial runner: one trial = sample, (send to the other ranks), build, train with pruning, log.

:class:`TrialPlan` holds everything a trial needs and nothing tied to a process: the model source,
the search space, the base config, the metric(s), the trainer arguments, the seed and the output
folder. :class:`TrialRunner` turns a plan into an Optuna objective (rank 0) and a follower loop
(the other DDP ranks). A process launcher can run one trial per process by rebuilding the plan
from :meth:`TrialPlan.describe` (stored in the study's user attributes) and calling
:meth:`TrialRunner.__call__` on a trial it asked the shared storage for.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from ..config import ConfigError, load_config
from ._dist import Assignment, DistributedContext, Stop
from ._pruning import PruningCallback
from ._sources import ModelSource
from ._space import SearchSpace, split_overrides

__all__ = ["TrialPlan", "TrialRunner", "quiet_lightning", "run_and_tell", "trial_trainer_kwargs"]

# The Trainer settings of a trial unless the caller's trainer arguments say otherwise.
TRIAL_DEFAULTS: dict[str, Any] = {
    "enable_progress_bar": False,   # the study has its own progress line
    "enable_model_summary": False,
    "enable_checkpointing": False,  # a trial's weights are not kept; refit the best config instead
}


@dataclass
class TrialPlan:
    """What every trial of a study shares (see the module docstring).

    Example:
        >>> from lightning_optkit.tuning._sources import ExampleSource
        >>> plan = TrialPlan(ExampleSource("digits"), SearchSpace.from_dict({"optimizer.lr": {"low": 1e-3, "high": 1e-1}}),
        ...                  base={"optimizer": {"name": "adamw"}}, monitors=("val_acc",), directions=("maximize",),
        ...                  trainer_kwargs={"max_epochs": 2}, seed=0, out_dir=Path("optkit_tune/digits"))
        >>> plan.describe()["monitors"]
        ['val_acc']
    """

    source: ModelSource
    space: SearchSpace
    base: dict[str, Any]
    monitors: tuple[str, ...]
    directions: tuple[str, ...]
    trainer_kwargs: dict[str, Any]
    seed: int
    out_dir: Path
    tensorboard: bool = True
    threads: int | None = None

    @classmethod
    def from_description(cls, desc: dict[str, Any], out_dir: str | Path, **kwargs: Any) -> TrialPlan:
        """The plan back from :meth:`describe` (stored as the study's ``optkit.plan`` user attribute).

        Trainer arguments that are not plain values (callback objects) are not stored; pass them in
        ``kwargs["trainer_kwargs"]``.
        """
        from ._sources import source_from_description

        trainer = {**desc.get("trainer", {}), **kwargs.pop("trainer_kwargs", {})}
        return cls(source=source_from_description(desc["source"]), space=SearchSpace.from_dict(desc["search"]),
                   base=desc["base"], monitors=tuple(desc["monitors"]), directions=tuple(desc["directions"]),
                   trainer_kwargs=trainer, seed=int(desc["seed"]), out_dir=Path(out_dir), **kwargs)

    def describe(self) -> dict[str, Any]:
        """A JSON-safe description (source, space, base, metric, trainer arguments, seed)."""
        trainer = {k: v for k, v in self.trainer_kwargs.items()
                   if isinstance(v, (int, float, str, bool, type(None)))}
        return {
            "source": self.source.describe(),
            "search": self.space.to_dict(),
            "base": self.base,
            "monitors": list(self.monitors),
            "directions": list(self.directions),
            "trainer": trainer,
            "seed": self.seed,
        }


def trial_trainer_kwargs(plan: TrialPlan, callback: PruningCallback, logger: Any,
                         sampled: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Trainer arguments of one trial: defaults, the plan's arguments, the sampled ``trainer.*``
    values, fresh copies of its callbacks."""
    kwargs: dict[str, Any] = {**TRIAL_DEFAULTS, "default_root_dir": str(plan.out_dir)}
    kwargs.update({k: v for k, v in plan.trainer_kwargs.items() if k != "callbacks"})
    kwargs.update(sampled or {})
    callbacks = []
    for cb in plan.trainer_kwargs.get("callbacks") or []:
        try:
            callbacks.append(copy.deepcopy(cb))  # stateful callbacks (EarlyStopping) start fresh each trial
        except Exception:
            callbacks.append(cb)
    kwargs["callbacks"] = [*callbacks, callback]
    kwargs["logger"] = logger
    return kwargs


@contextlib.contextmanager
def quiet_lightning(verbose: bool = False) -> Iterator[None]:
    """Silence Lightning's per-Trainer banners and Optuna's per-trial log lines while a study runs."""
    if verbose:
        yield
        return
    names = ("lightning.pytorch", "lightning.fabric", "lightning_optkit")
    saved = {n: logging.getLogger(n).level for n in names}
    optuna_level = optuna.logging.get_verbosity()
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.WARNING)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            for pattern in (".*does not have many workers.*", ".*smaller than the logging interval.*",
                            ".*is deprecated, use `isinstance.*", ".*GPU available but not used.*"):
                warnings.filterwarnings("ignore", message=pattern)
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
        optuna.logging.set_verbosity(optuna_level)


def _tb_value(v: Any) -> Any:
    """TensorBoard's hparams take numbers and strings; booleans and lists are shown as text (categories)."""
    if isinstance(v, (int, float, str)) and not isinstance(v, bool):
        return v
    return str(v)


@dataclass
class TrialRunner:
    """The objective of a study (rank 0) and the loop the other DDP ranks run.

    Example:
        (Lines marked ``+SKIP`` are not run as doctests: needs a trial plan and a study; tests/test_tuning_*.py run it for real.)
        >>> runner = TrialRunner(plan)           # doctest: +SKIP
        >>> study.optimize(runner, n_trials=20)  # doctest: +SKIP
    """

    plan: TrialPlan
    dist: DistributedContext = field(default_factory=DistributedContext)
    last_run: dict[str, Any] = field(default_factory=dict)  # steps, epochs, seconds, state of the last train()

    # -- rank 0 ------------------------------------------------------------------------------------------
    def __call__(self, trial: optuna.trial.Trial) -> float | list[float]:
        plan = self.plan
        overrides = plan.space.sample(trial, plan.base)
        optim_overrides, _targets = split_overrides(overrides)  # model./data./trainer. keys: see train()
        optim_overrides = plan.space.scale_lr(optim_overrides, overrides, plan.base)
        try:
            optim = load_config(plan.base, optim_overrides).to_dict()
        except ConfigError as err:
            raise ConfigError(f"search (trial {trial.number})", overrides,
                              f"a combination of values that gives a valid config ({err})",
                              hint="make the parameters that do not fit together conditional (when: {...})") from None
        trial.set_user_attr("optkit.config", optim)
        assignment = Assignment(trial.number, overrides, optim, out_dir=str(plan.out_dir))
        self.dist.broadcast(assignment)
        return self.train(assignment, trial)

    def run_one(self, study: optuna.Study) -> optuna.trial.FrozenTrial:
        """Ask ``study`` for a trial, run it here and tell the result (:func:`run_and_tell`); an exception is raised.

        What a fresh process does with a plan rebuilt by :meth:`TrialPlan.from_description`.
        """
        frozen, exc = run_and_tell(study, study.ask(), self)
        if exc is not None:
            raise exc
        return frozen

    # -- ranks > 0 ---------------------------------------------------------------------------------------
    def follow(self) -> Stop:
        """Train every trial rank 0 sends, until it sends :class:`Stop`."""
        while True:
            message = self.dist.broadcast(None)
            if isinstance(message, Stop):
                return message
            if message.out_dir is not None:  # the study's folder: every rank builds the same Trainer
                self.plan.out_dir = Path(message.out_dir)
            try:
                self.train(message, None)
            except optuna.TrialPruned:
                pass
            except Exception as exc:  # rank 0 fails the same trial and decides what happens next
                print(f"optkit tune: trial {message.number} failed on this rank: {exc}", file=sys.stderr)

    # -- every rank --------------------------------------------------------------------------------------
    def train(self, assignment: Assignment, trial: optuna.trial.Trial | None) -> float | list[float]:
        """Build and train one trial; returns its objective value(s) (the last validation's)."""
        import lightning as L

        from ._targets import build_source

        plan = self.plan
        _optim, targets = split_overrides(assignment.overrides)
        L.seed_everything(plan.seed if assignment.seed is None else assignment.seed, workers=True, verbose=False)
        module, data = build_source(plan.source, assignment.optim, targets)
        callback = PruningCallback(trial, plan.monitors, record_only=assignment.seed is not None)
        logger = self._logger(assignment.number, assignment.seed)
        trainer = L.Trainer(**trial_trainer_kwargs(plan, callback, logger, targets["trainer"]))
        state = "FAIL"
        start = time.perf_counter()
        try:
            try:
                trainer.fit(module, datamodule=data)
            except SystemExit as exc:  # Lightning's Ctrl-C handling exits; let Optuna record the trial as FAIL
                raise KeyboardInterrupt from exc
            values = callback.final_values()
            state = "COMPLETE"
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        finally:
            seconds = time.perf_counter() - start
            self.last_run = {"steps": int(trainer.global_step), "epochs": int(trainer.current_epoch),
                             "seconds": round(seconds, 3), "state": state}
            if trial is not None:
                trial.set_user_attr("optkit.run", self.last_run)
            if logger:
                self._write_hparams(logger, assignment, callback, state, int(trainer.global_step))
        return values[0] if len(values) == 1 else list(values)

    def _logger(self, number: int, seed: int | None = None) -> Any:
        if not self.plan.tensorboard:
            return False
        from lightning.pytorch.loggers import TensorBoardLogger

        version = f"trial_{number:04d}" if seed is None else f"trial_{number:04d}_reeval_seed{seed}"
        return TensorBoardLogger(save_dir=str(self.plan.out_dir), name="tensorboard", version=version,
                                 default_hp_metric=False)

    def _write_hparams(self, logger: Any, assignment: Assignment, callback: PruningCallback, state: str,
                       step: int) -> None:
        params = {k: _tb_value(v) for k, v in assignment.overrides.items()}
        params["state"] = state
        metrics: dict[str, float] = {"hparams/steps": float(step)}
        if callback.last_values is not None:
            metrics.update({f"hparams/{m}": v for m, v in zip(self.plan.monitors, callback.last_values)})
        logger.log_hyperparams(params, metrics=metrics, step=step)
        logger.finalize("success" if state == "COMPLETE" else state.lower())


def run_and_tell(study: optuna.Study, trial: optuna.trial.Trial, objective: Callable[[optuna.trial.Trial], Any], *,
                 quiet_tell: bool = False, fail_interrupted: bool = True
                 ) -> tuple[optuna.trial.FrozenTrial, Exception | None]:
    """Run ``objective(trial)`` and tell ``study`` how it ended: the one ask/tell body of every run mode.

    COMPLETE with the returned value(s), PRUNED on :class:`optuna.TrialPruned`, FAIL on an exception,
    which is returned (not raised) with the told trial: the caller raises it, logs it (``catch=``) or
    turns it into an exit code. Ctrl-C and ``SystemExit`` propagate; with ``fail_interrupted`` the trial
    is told FAIL first (a worker process leaves it RUNNING: its launcher fails and retries it).
    ``quiet_tell`` silences the warnings of the final tell.
    """
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        return study.tell(trial, state=optuna.trial.TrialState.PRUNED), None
    except Exception as exc:
        return study.tell(trial, state=optuna.trial.TrialState.FAIL), exc
    except BaseException:
        if fail_interrupted:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    if not quiet_tell:
        return study.tell(trial, value), None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return study.tell(trial, value), None
