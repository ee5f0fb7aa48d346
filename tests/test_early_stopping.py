"""EarlyStopping on real Trainers: patience, deltas, grace, smoothing, thresholds, min_epochs, best weights."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import ConfigError
from lightning_optkit.callbacks import Checkpoint, EarlyStopping


class Scripted(L.LightningModule):
    """Trains a real (tiny) regression; logs ``metric`` = ``values[k]`` at the k-th validation run."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = values
        self.layer = nn.Linear(4, 1)
        self.k = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("metric", self.values[min(self.k, len(self.values) - 1)])

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.k += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(n: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def _fit(values: list[float], callbacks: list[Callback], **kw: Any) -> tuple[L.Trainer, Scripted]:
    args: dict[str, Any] = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, num_sanity_val_steps=0, max_epochs=len(values),
                                enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks))
    args.update(kw)
    trainer = L.Trainer(callbacks=callbacks, **args)
    model = Scripted(values)
    trainer.fit(model, _loader(), _loader(8))
    return trainer, model


# -- arguments ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "path"), [
    ({"monitor": ""}, "EarlyStopping.monitor"),
    ({"mode": "maximum"}, "EarlyStopping.mode"),
    ({"patience": -1}, "EarlyStopping.patience"),
    ({"patience": 2.5}, "EarlyStopping.patience"),
    ({"min_delta": -0.1}, "EarlyStopping.min_delta"),
    ({"min_delta": "abc%"}, "EarlyStopping.min_delta"),
    ({"start_epoch": -1}, "EarlyStopping.start_epoch"),
    ({"start_step": 1.0}, "EarlyStopping.start_step"),
    ({"smoothing": "mean"}, "EarlyStopping.smoothing"),
    ({"ema_alpha": 0}, "EarlyStopping.ema_alpha"),
    ({"median_window": 0}, "EarlyStopping.median_window"),
    ({"restore_best_weights": "best"}, "EarlyStopping.restore_best_weights"),
    ({"restore_best_weights": 1}, "EarlyStopping.restore_best_weights"),
    ({"stopping_threshold": math.nan}, "EarlyStopping.stopping_threshold"),
    ({"divergence_threshold": "10"}, "EarlyStopping.divergence_threshold"),
    ({"check_finite": 1}, "EarlyStopping.check_finite"),
    ({"check_on_train_epoch_end": "yes"}, "EarlyStopping.check_on_train_epoch_end"),
])
def test_bad_arguments_name_the_argument_and_end_with_a_hint(kwargs: dict[str, Any], path: str) -> None:
    kwargs = {"monitor": "val_loss", **kwargs}
    with pytest.raises(ConfigError) as info:
        EarlyStopping(**kwargs)
    message = str(info.value)
    assert message.startswith(path + ": got ") and "HINT: " in message


def test_a_misspelt_metric_is_an_error_listing_what_is_logged() -> None:
    with pytest.raises(ConfigError, match=r"EarlyStopping.monitor: got 'metrc'.*available: metric, train_loss.*"
                                          r"Did you mean 'metric'\?.*HINT"):
        _fit([1.0, 0.9], [EarlyStopping("metrc")])


def test_strict_false_skips_checks_without_the_metric() -> None:
    es = EarlyStopping("absent", strict=False)
    with pytest.warns(UserWarning, match="'absent' is not logged"):
        trainer, _ = _fit([1.0, 0.9, 0.8], [es])
    assert trainer.current_epoch == 3 and es.checks == 0


# -- the rules ------------------------------------------------------------------------------------------
def test_patience_counts_checks_without_improvement() -> None:
    es = EarlyStopping("metric", patience=2)
    trainer, _ = _fit([5, 4, 3, 3.5, 3.2, 2.0, 1.0], [es])
    assert (es.stop_reason, es.stopped_epoch, es.best_epoch, es.best_score, es.wait_count) == ("patience", 4, 2, 3, 2)
    assert trainer.current_epoch == 5  # Lightning counts the epoch that just ended


@pytest.mark.parametrize(("min_delta", "stopped"), [(0.0, -1), (0.05, 5), ("10%", 2)])
def test_min_delta_absolute_or_relative(min_delta: float | str, stopped: int) -> None:
    # every value improves a little; by more than 0.05: 1.0 -> 0.92 -> 0.84; by more than 10%: none
    es = EarlyStopping("metric", patience=2, min_delta=min_delta)
    _fit([1.0, 0.92, 0.91, 0.84, 0.83, 0.82, 0.81], [es])
    assert es.stopped_epoch == stopped


def test_checks_before_start_epoch_do_not_count() -> None:
    values = [5, 6, 7, 8, 4, 4.5, 4.6, 4.7]  # a warm-up that gets worse, then a plateau
    plain = EarlyStopping("metric", patience=2)
    _fit(values, [plain])
    assert plain.stopped_epoch == 2
    graced = EarlyStopping("metric", patience=2, start_epoch=4)
    _fit(values, [graced])
    assert graced.stopped_epoch == 6 and graced.best_epoch == 4


def test_start_step_counts_optimizer_steps() -> None:
    es = EarlyStopping("metric", patience=1, start_step=13)  # checks at steps 4, 8, 12 are grace
    _fit([5, 6, 7, 4, 5, 6], [es])
    assert es.stopped_epoch == 4


def test_ema_smoothing_rides_out_noise_around_a_falling_trend() -> None:
    values = [1.0, 0.90, 0.95, 0.85, 0.90, 0.80, 0.85, 0.75, 0.80, 0.70]
    raw = EarlyStopping("metric", patience=1)
    _fit(values, [raw])
    assert raw.stopped_epoch == 2  # the first up-tick exhausts patience
    smooth = EarlyStopping("metric", patience=1, smoothing="ema", ema_alpha=0.3)
    _fit(values, [smooth])
    expected = [1.0]
    for v in values[1:]:
        expected.append(0.3 * v + 0.7 * expected[-1])
    assert smooth.checks == 10 and smooth.stop_reason is None
    assert smooth.ema == pytest.approx(expected[-1], rel=1e-6)
    assert smooth.best_score == pytest.approx(expected[-1], rel=1e-6)


def test_median_smoothing_ignores_a_single_outlier() -> None:
    values = [1.0, 0.9, 0.8, 5.0, 0.7, 0.6, 0.6, 0.6, 0.6]
    es = EarlyStopping("metric", patience=2, smoothing="median", median_window=3, divergence_threshold=2.0)
    _fit(values, [es])
    # medians: 1, .95, .9, .9, .8, .7, .6, .6, .6 -> never above 2.0; stalls only at the end
    assert (es.stop_reason, es.stopped_epoch) == ("patience", 8)
    assert es.best_score == pytest.approx(0.6) and es.window == pytest.approx([0.6, 0.6, 0.6])


@pytest.mark.parametrize(("kwargs", "values", "reason", "epoch"), [
    ({"stopping_threshold": 0.5}, [1.0, 0.7, 0.45, 0.3], "stopping_threshold", 2),
    ({"divergence_threshold": 3.0}, [1.0, 2.0, 3.5, 0.5], "divergence_threshold", 2),
    ({}, [1.0, 0.9, math.nan, 0.5], "non_finite", 2),
    ({}, [1.0, math.inf, 0.5], "non_finite", 1),
])
def test_thresholds_and_non_finite_values_stop(kwargs: dict[str, Any], values: list[float], reason: str,
                                               epoch: int) -> None:
    es = EarlyStopping("metric", patience=10, **kwargs)
    trainer, _ = _fit(values, [es])
    assert (es.stop_reason, es.stopped_epoch) == (reason, epoch)
    assert trainer.current_epoch == epoch + 1


def test_divergence_is_not_tested_during_the_grace_period() -> None:
    es = EarlyStopping("metric", patience=10, divergence_threshold=3.0, start_epoch=2)
    _fit([5.0, 4.0, 1.0, 1.0, 3.5, 1.0], [es])
    assert es.stop_reason == "divergence_threshold" and es.stopped_epoch == 4


# -- min_epochs ------------------------------------------------------------------------------------------
def test_min_epochs_stops_only_if_there_is_still_no_improvement() -> None:
    # patience runs out at epoch 3, long before min_epochs=8; the model improves at epoch 5
    values = [1.0, 0.8, 0.9, 0.95, 0.96, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98]
    lightning_es = LightningEarlyStopping("metric", patience=2)
    trainer, _ = _fit(values, [lightning_es], min_epochs=8)
    assert trainer.current_epoch == 8  # Lightning: stops at min_epochs although epoch 5 improved

    ours = EarlyStopping("metric", patience=2)
    trainer, _ = _fit(values, [ours], min_epochs=8)
    # wait restarts at the improvement (epoch 5); patience runs out again at epoch 7, still before min_epochs;
    # at epoch 7 (the 8th epoch ends) Lightning may stop and there has been no improvement since epoch 5
    assert (ours.stopped_epoch, ours.best_epoch, trainer.current_epoch) == (7, 5, 8)

    flat = EarlyStopping("metric", patience=2)
    trainer, _ = _fit([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9], [flat], min_epochs=6)
    assert (flat.stopped_epoch, trainer.current_epoch) == (5, 6)  # no improvement at all: stop at min_epochs

    improving = EarlyStopping("metric", patience=2)
    trainer, _ = _fit([1.0, 1.1, 1.2, 1.3, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05], [improving], min_epochs=6)
    assert improving.stop_reason is None and trainer.current_epoch == 10  # improvements after the deferral


def test_min_steps_is_respected() -> None:
    es = EarlyStopping("metric", patience=1)
    trainer, _ = _fit([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [es], min_steps=16)
    assert es.stopped_epoch == 3 and trainer.global_step == 16


# -- several checks per epoch -----------------------------------------------------------------------------
def test_patience_counts_validation_checks_when_validating_several_times_per_epoch() -> None:
    es = EarlyStopping("metric", patience=3)
    # 4 batches per epoch, validation every 2: two checks per epoch; best at check 2, then 3 bad checks
    trainer, _ = _fit([1.0, 0.9, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], [es], val_check_interval=2, max_epochs=6)
    assert es.checks == 6 and es.stopped_epoch == 2
    assert trainer.global_step == 12  # the check after the 6th validation run, mid-training


def test_checks_at_train_epoch_end_without_validation() -> None:
    es = EarlyStopping("train_loss", patience=1, min_delta=10.0)  # nothing improves by 10: stop on the 2nd check
    trainer, _ = _fit([0.0] * 5, [es], limit_val_batches=0)
    assert es.stop_reason == "patience" and es.stopped_epoch == 1 and es.checks == 2


# -- best weights ----------------------------------------------------------------------------------------
class WeightsAtChecks(Callback):
    """Copies the weights after every validation run (runs after EarlyStopping's check)."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.weights.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def test_restore_best_weights_from_memory() -> None:
    es = EarlyStopping("metric", patience=2, restore_best_weights=True)
    probe = WeightsAtChecks()
    _, model = _fit([3.0, 2.0, 1.0, 1.5, 1.7, 0.5], [es, probe])
    assert es.best_epoch == 2 and es.stopped_epoch == 4
    best = probe.weights[2]
    final = model.state_dict()
    assert all(torch.equal(final[k], best[k]) for k in best)
    assert not torch.equal(probe.weights[-1]["layer.weight"], best["layer.weight"])


def test_restore_best_weights_from_the_checkpoint_best_file(tmp_path: Path) -> None:
    ckpt = Checkpoint(dirpath=tmp_path, monitor="metric", save_top_k=1)
    es = EarlyStopping("metric", patience=2, restore_best_weights="checkpoint")
    probe = WeightsAtChecks()
    _, model = _fit([3.0, 2.0, 1.0, 1.5, 1.7, 0.5], [es, probe, ckpt])
    assert Path(ckpt.best_model_path).name == "epoch=2-step=12.ckpt"
    assert all(torch.equal(model.state_dict()[k], probe.weights[2][k]) for k in probe.weights[2])
    assert es.best_state is None  # nothing kept in memory


def test_restore_from_checkpoint_needs_a_checkpoint_callback() -> None:
    with pytest.raises(ConfigError, match=r"restore_best_weights: got 'checkpoint'.*HINT: add Checkpoint"):
        _fit([1.0], [EarlyStopping("metric", restore_best_weights="checkpoint")])


# -- reporting and state ---------------------------------------------------------------------------------
def test_the_stop_reason_is_printed_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    es = EarlyStopping("metric", patience=1)
    lightning_logger = logging.getLogger("lightning.pytorch")  # may not propagate to the root logger
    lightning_logger.addHandler(caplog.handler)
    try:
        _fit([1.0, 2.0, 3.0], [es], logger=CSVLogger(tmp_path, name="run"), log_every_n_steps=1)
    finally:
        lightning_logger.removeHandler(caplog.handler)
    assert "EarlyStopping: stopping at epoch 1, step 8 (patience)" in caplog.text
    assert es.stop_message is not None and "patience=1" in es.stop_message
    with open(next(tmp_path.rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    stopped = [r for r in rows if r.get("early_stopping/stopped_epoch")]
    assert len(stopped) == 1 and float(stopped[0]["early_stopping/stopped_epoch"]) == 1.0
    assert float(stopped[0]["early_stopping/reason_patience"]) == 1.0
    assert float(stopped[0]["early_stopping/best"]) == 1.0


def test_state_dict_round_trip_and_state_key() -> None:
    es = EarlyStopping("metric", patience=5, smoothing="median", median_window=2, restore_best_weights=True)
    _fit([3.0, 2.0, 2.5, 2.6], [es])
    other = EarlyStopping("metric", patience=5, smoothing="median", median_window=2, restore_best_weights=True)
    other.load_state_dict(es.state_dict())
    a, b = es.state_dict(), other.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a["best_state"][k], b["best_state"][k]) for k in a["best_state"])
    assert {k: v for k, v in a.items() if k != "best_state"} == {k: v for k, v in b.items() if k != "best_state"}
    assert es.state_key == "EarlyStopping{'monitor': 'metric', 'mode': 'min'}"
    assert EarlyStopping("acc", mode="max").state_key != es.state_key
