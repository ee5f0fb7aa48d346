"""Validation-aware range tests: on by default when the run has validation data, BatchNorm probed with the
probe batch's statistics, exact restore, and a clear fallback when a validation batch does not fit."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import ConfigError, OptimMixin
from lightning_optkit.callbacks import LRFinder
from lightning_optkit.lr_finder import RangeTestSettings, find_lr
from lightning_optkit.lr_finder._engine import probe_mode

QUIET = dict(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False, logger=False,
             enable_checkpointing=False, max_epochs=1)
FINDER = dict(num_steps=20, min_lr=1e-5, max_lr=10.0)


class BNNet(OptimMixin, L.LightningModule):
    """6 -> 3 classifier with BatchNorm; counts training_step calls."""

    def __init__(self, optim: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.optim_config = optim or {"optimizer": {"name": "adam", "lr": 1e-3}}
        self.net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
        self.calls = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.calls += 1
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[:2]
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))


def _loaders(val_batch: int = 16, extra: bool = False) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    train = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=16, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    val_set = TensorDataset(x[128:], y[128:], torch.zeros(32)) if extra else TensorDataset(x[128:], y[128:])
    return train, DataLoader(val_set, batch_size=val_batch)


def _model() -> BNNet:
    L.seed_everything(0, verbose=False)
    return BNNet()


def test_auto_reads_the_held_out_loss_only_when_the_run_has_validation_data():
    train, val = _loaders()
    model = _model()
    with_val = find_lr(model, train, val, trainer_kwargs=QUIET, **FINDER)
    assert with_val.val_losses is not None and len(with_val.val_losses) == with_val.num_steps
    # one probe of 2 held-out batches before the sweep and after every step, through training_step
    assert model.calls == with_val.num_steps + 2 * (with_val.num_steps + 1)
    model = _model()
    without = find_lr(model, _loaders()[0], trainer_kwargs=QUIET, **FINDER)
    assert without.val_losses is None and model.calls == without.num_steps
    off = find_lr(_model(), *_loaders(), val_batches=0, trainer_kwargs=QUIET, **FINDER)
    assert off.val_losses is None
    disabled = find_lr(_model(), *_loaders(), trainer_kwargs={**QUIET, "limit_val_batches": 0}, **FINDER)
    assert disabled.val_losses is None
    # the training curve is the same with and without the probes (they change no weight, buffer or RNG)
    assert with_val.losses == off.losses
    assert RangeTestSettings(val_batches="AUTO").val_batches == "auto"
    with pytest.raises(ConfigError, match=r'val_batches: got .*"auto"'):
        RangeTestSettings(val_batches="some")


def test_auto_falls_back_to_the_training_loss_with_a_warning_when_a_validation_batch_does_not_fit():
    train, val = _loaders(extra=True)  # (x, y, extra): training_step cannot unpack it

    with pytest.warns(UserWarning, match="training_step failed on a validation batch"):
        result = find_lr(BNNet(), train, val, trainer_kwargs=QUIET, **FINDER)
    assert result.val_losses is None and result.suggestion is not None
    with pytest.raises(ValueError, match="too many values to unpack"):  # asked for explicitly: the error shows
        find_lr(BNNet(), train, val, val_batches=2, trainer_kwargs=QUIET, **FINDER)


def test_the_callback_and_a_one_sample_validation_batch_work_in_auto_mode(tmp_path):
    train, val = _loaders(val_batch=1)  # BatchNorm has no batch statistics for one sample: eval mode instead
    finder = LRFinder(apply=False, **FINDER)
    model = BNNet()
    trainer = L.Trainer(callbacks=[finder], default_root_dir=tmp_path, **QUIET)
    trainer.fit(model, train, val)
    result = finder.results[0]
    assert result.val_losses is not None and all(v == v for v in result.val_losses[:5])


def test_probes_normalize_with_the_batch_statistics_and_restore_the_running_ones_bitwise():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    net.train()
    net(torch.randn(32, 4) * 3 + 1)  # running statistics away from the defaults
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(16, 4)
    with torch.no_grad():
        with probe_mode(net):
            assert not net.training and net[1].training and not net[2].training  # dropout off, BatchNorm on
            probed = net(x)
        bn = net[1]
        batch_stats = nn.functional.batch_norm(net[0](x), None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
        net.eval()
        stale = net(x)  # eval mode: the running statistics
        net.train()
    assert torch.allclose(probed, net[3](batch_stats), atol=1e-6)
    assert not torch.allclose(probed, stale)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # num_batches_tracked too
    with probe_mode(net, batch_stats=False):
        assert not net[1].training
    assert net.training and net[1].training
