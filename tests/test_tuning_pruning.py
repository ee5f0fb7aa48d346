"""PruningCallback with real Trainers and real Optuna studies on SQLite files."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import lightning as L
import optuna
import pytest

from lightning_optkit import ConfigError
from lightning_optkit.tuning import PruningCallback

sys.path.insert(0, str(Path(__file__).resolve().parent / "ddp_scripts"))
from tuning_models import TinyData, TinyNet

OPTIM = {"optimizer": {"name": "adamw", "lr": 1e-2}}



def _study(tmp_path, pruner=None, directions=("minimize",)) -> optuna.Study:
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", pruner=pruner or optuna.pruners.NopPruner(),
                               directions=list(directions))


def _fit(callback, max_epochs=2, optim=OPTIM, **kwargs) -> tuple[L.Trainer, TinyNet]:
    L.seed_everything(0, verbose=False)
    model = TinyNet(optim)
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback], **kwargs)
    trainer.fit(model, datamodule=TinyData(n=64, batch_size=8))
    return trainer, model


def test_every_validation_is_stored_at_its_optimizer_step(tmp_path):
    study = _study(tmp_path)
    trial = study.ask()
    callback = PruningCallback(trial, "val_loss")
    trainer, model = _fit(callback, max_epochs=2, val_check_interval=0.25)  # 8 batches: 4 validations per epoch
    study.tell(trial, callback.final_values()[0])
    stored = study.trials[0].intermediate_values
    assert sorted(stored) == [2, 4, 6, 8, 10, 12, 14, 16] == [s for s, _ in model.val_history]
    for step, loss in model.val_history:  # the model's own record of each validation
        assert stored[step] == pytest.approx(loss, rel=1e-6)
    assert study.trials[0].value == pytest.approx(model.val_history[-1][1], rel=1e-6)
    assert trainer.global_step == 16


def test_steps_count_optimizer_steps_with_gradient_accumulation(tmp_path):
    study = _study(tmp_path)
    trial = study.ask()
    callback = PruningCallback(trial, "val_loss")
    _fit(callback, max_epochs=1, val_check_interval=0.5, accumulate_grad_batches=2)  # 8 batches, 4 optimizer steps
    assert sorted(study.trials[0].intermediate_values) == [2, 4]


def test_two_validations_at_one_optimizer_step_keep_the_first_and_warn(tmp_path):
    study = _study(tmp_path)
    trial = study.ask()
    callback = PruningCallback(trial, "val_loss")
    with pytest.warns(UserWarning, match="two validations at optimizer step"):
        _, model = _fit(callback, max_epochs=1, val_check_interval=0.25, accumulate_grad_batches=4)
    steps = [s for s, _ in model.val_history]
    assert steps == [0, 1, 1, 2]
    assert study.trials[0].intermediate_values == pytest.approx({0: model.val_history[0][1], 1: model.val_history[1][1],
                                                                  2: model.val_history[3][1]})


def test_a_pruned_trial_stops_at_that_validation_and_is_recorded_pruned(tmp_path):
    # ThresholdPruner prunes as soon as val_loss > 1e-6: at the first validation
    study = _study(tmp_path, pruner=optuna.pruners.ThresholdPruner(upper=1e-6))
    after_fit = []

    def objective(trial):
        trainer, _ = _fit(PruningCallback(trial, "val_loss"), max_epochs=3, val_check_interval=0.5)
        after_fit.append(trainer.global_step)  # not reached: TrialPruned leaves trainer.fit, no check_pruned()
        return 0.0

    study.optimize(objective, n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.PRUNED and after_fit == []
    assert sorted(t.intermediate_values) == [4]


@pytest.mark.parametrize("pruner", ["median", "none"])
def test_a_diverged_trial_is_pruned_unless_the_study_never_prunes(tmp_path, pruner):
    """SGD at lr=1e30: the weights are non-finite after the first steps. A pruning study stops the trial at its
    first validation (the median pruner alone would wait for 5 startup trials); pruner 'none' trains it out."""
    nop = pruner == "none"
    study = _study(tmp_path, pruner=optuna.pruners.NopPruner() if nop else optuna.pruners.MedianPruner(n_startup_trials=5))

    def objective(trial):
        trainer, _ = _fit(PruningCallback(trial, "val_loss"), max_epochs=3, val_check_interval=0.5,
                          optim={"optimizer": {"name": "sgd", "lr": 1e30}})
        return trainer.global_step

    study.optimize(objective, n_trials=1)
    t = study.trials[0]
    if nop:
        assert t.state == optuna.trial.TrialState.COMPLETE and t.value == 24
        assert "optkit.diverged" not in t.user_attrs
    else:
        assert t.state == optuna.trial.TrialState.PRUNED
        assert t.user_attrs["optkit.diverged"] == 4 == max(t.intermediate_values)


def test_a_metric_never_logged_is_a_config_error_at_the_first_validation(tmp_path):
    study = _study(tmp_path)
    trial = study.ask()
    with pytest.raises(ConfigError) as info:
        _fit(PruningCallback(trial, "val_los"), max_epochs=3)
    err = info.value
    assert err.path == "monitor" and err.value == "val_los" and "val_loss" in err.suggestions
    assert "val_acc" in str(err) and "optimizer step 8" in str(err)


def test_no_validation_at_all_is_a_config_error_after_fit(tmp_path):
    study = _study(tmp_path)
    callback = PruningCallback(study.ask(), "val_loss")
    _fit(callback, max_epochs=1, limit_val_batches=0)
    with pytest.raises(ConfigError, match="no validation ran"):
        callback.final_values()


class _Messages(logging.Handler):
    """Collects Lightning's rank-zero messages (its logger may not propagate to pytest's handlers)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_multi_objective_studies_record_without_reporting_or_pruning(tmp_path):
    study = _study(tmp_path, pruner=optuna.pruners.ThresholdPruner(upper=1e-6), directions=("minimize", "maximize"))
    trial = study.ask()
    callback = PruningCallback(trial, ["val_loss", "val_acc"])
    handler, logger = _Messages(), logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        trainer, _ = _fit(callback, max_epochs=2)
    finally:
        logger.removeHandler(handler)
    said = " ".join(handler.messages)
    assert "multi-objective" in said and "no trial is pruned" in said
    study.tell(trial, list(callback.final_values()))
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE and t.intermediate_values == {}
    assert sorted(t.user_attrs["optkit.intermediate_values"]) == ["16", "8"]
    assert trainer.global_step == 16  # not pruned


def test_monitor_count_must_match_the_study_and_rank_zero_needs_the_trial(tmp_path):
    study = _study(tmp_path)
    with pytest.raises(ConfigError, match="one per objective"):
        _fit(PruningCallback(study.ask(), ["val_loss", "val_acc"]), max_epochs=1)
    with pytest.raises(ValueError, match="rank 0 needs the trial"):
        _fit(PruningCallback(None, "val_loss"), max_epochs=1)
    with pytest.raises(ConfigError, match="metric name"):
        PruningCallback(None, "")


def test_state_dict_round_trip(tmp_path):
    study = _study(tmp_path)
    callback = PruningCallback(study.ask(), "val_loss")
    _fit(callback, max_epochs=1, val_check_interval=0.5)
    other = PruningCallback(None, "val_loss")
    other.load_state_dict(callback.state_dict())
    assert other.history == callback.history and other.intermediate_values == callback.intermediate_values
    assert callback.state_key == other.state_key and "val_loss" in callback.state_key
