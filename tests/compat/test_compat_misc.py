"""Smaller patterns of real projects: metric names with '/', nn.Module arguments, folders of earlier runs,
spawn strategies with the pruning callback, and what the LR finder logs."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import pytest
import torch
from compat_helpers import FAST, Body, PlainNet, assert_same_weights, loader
from torch import nn

from lightning_optkit import OptimMixin
from lightning_optkit.callbacks import Checkpoint, LRFinder
from lightning_optkit.config import ConfigError
from lightning_optkit.tuning import PruningCallback


class HydraStyle(OptimMixin, L.LightningModule):
    """The lightning-hydra-template layout: the network is a constructor argument, not built inside."""

    def __init__(self, net: nn.Module, optim: dict) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net"])
        self.net = net
        self.lrs: list[list[float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", nn.functional.mse_loss(self.net(x), y))

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.lrs.append([float(g["lr"]) for g in optimizer.param_groups])


def _fit(model: L.LightningModule, tmp_path: Path, callbacks: list | None = None, epochs: int = 3, **kw: Any) -> None:
    torch.manual_seed(1)
    args = dict(FAST, **kw)
    L.Trainer(max_epochs=epochs, callbacks=callbacks or [], default_root_dir=str(tmp_path), **args).fit(
        model, loader(), loader(seed=1))


def test_a_module_taking_an_nn_module_equals_plain_lightning(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = PlainNet(scheduler=lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [7, 13], 0.1), interval="step")
    torch.manual_seed(0)
    net = Body()  # the same layers, built outside and handed in
    ported = HydraStyle(net, {"optimizer": {"name": "adam", "lr": 0.01}, "no_weight_decay": "none",
                              "scheduler": {"name": "multistep", "milestones": [7, 13], "gamma": 0.1}})
    _fit(plain, tmp_path / "plain")
    _fit(ported, tmp_path / "ported")
    assert ported.lrs == plain.lrs
    assert_same_weights(plain, ported.net)


def test_checkpoint_filename_names_a_metric_with_a_slash(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ckpt = Checkpoint(dirpath=tmp_path / "ckpt", monitor="val/loss", save_top_k=2, filename="{epoch}-{val/loss:.4f}")
    _fit(PlainNet(), tmp_path, [ckpt], enable_checkpointing=True)
    files = sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt"))
    assert len(files) == 3 and "last.ckpt" in files  # two best and last, all in the folder itself
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.is_dir()]
    values = sorted(float(name.removesuffix(".ckpt").split("-")[1]) for name in files if name != "last.ckpt")
    assert values == pytest.approx(sorted(float(v) for v in ckpt.best_k_models.values()), abs=1e-4)
    with pytest.raises(ConfigError, match=r"filename.*HINT.*'val_loss=\{val/loss:.4f\}'"):
        Checkpoint(filename="val/loss={val/loss:.4f}")


def test_a_fresh_run_in_a_folder_of_an_earlier_run_says_what_it_does(tmp_path: Path) -> None:
    _fit(PlainNet(), tmp_path / "a", [Checkpoint(dirpath=tmp_path / "ckpt")], epochs=1, enable_checkpointing=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(PlainNet(), tmp_path / "b", [Checkpoint(dirpath=tmp_path / "ckpt")], epochs=1, enable_checkpointing=True)
    [message] = [str(w.message) for w in caught if "earlier run" in str(w.message)]
    assert "does not resume it" in message and "never prunes them" in message and "replaces" in message
    assert "latest_valid" in message


def test_pruning_callback_names_the_spawn_strategy_it_cannot_run_under(tmp_path: Path) -> None:
    trial = optuna.create_study().ask()
    args = {k: v for k, v in FAST.items() if k != "devices"}
    trainer = L.Trainer(max_epochs=1, strategy="ddp_fork", devices=1, default_root_dir=str(tmp_path),
                        callbacks=[PruningCallback(trial, "val/loss")], **args)
    with pytest.raises(Exception, match=r"ddp_fork(.|\n)*expected strategy='ddp'") as info:
        trainer.fit(PlainNet(), loader(), loader(seed=1))
    assert "got 'DDPStrategy';" not in str(info.value)


def test_lr_finder_logs_the_live_optimizer_not_a_rebuild(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Grouped(HydraStyle):
        pass

    optim = {"optimizer": {"name": "adam", "lr": 0.01}, "no_weight_decay": "none",
             "param_groups": [{"params": "net.backbone.0.*", "lr_scale": 0.1}, {"params": "net.head.*", "lr_scale": 2}]}
    torch.manual_seed(0)
    model = Grouped(Body(), optim)
    finder = LRFinder(num_steps=20, min_lr=1e-4, max_lr=1.0)
    lightning_log = logging.getLogger("lightning.pytorch")  # rank_zero_info's logger; it does not propagate
    lightning_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
            _fit(model, tmp_path, [finder], epochs=1)
    finally:
        lightning_log.removeHandler(caplog.handler)
    text = caplog.text
    assert finder.results[0].applied
    assert text.count("lightning_optkit: Adam (3 groups)") == 1  # configure_optimizers; the rebuild is silent
    assert "(1 group)" not in text
    assert "LRFinder (epoch 0): set optimizer.lr" in text and "Adam (3 groups): lr " in text
