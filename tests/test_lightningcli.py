"""OptimMixin under LightningCLI: the optim block from a YAML config or the command line, trained for real."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import ConfigError, OptimMixin, load_config

pytest.importorskip("jsonargparse")


class Net(OptimMixin, L.LightningModule):
    """A user's module: the optim block is an ordinary init argument."""

    def __init__(self, optim: dict, hidden: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(nn.Linear(4, hidden), nn.LayerNorm(hidden), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.backbone(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", self.loss_fn(self(x), y))


class RandomData(L.LightningDataModule):
    def __init__(self, n: int = 48, batch_size: int = 8) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.n, 4, generator=g)
        self.data = TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)


OPTIM = {
    "optimizer": {"name": "AdamW", "lr": 3.0e-3, "weight_decay": 0.05},
    "param_groups": [{"params": "backbone.*", "lr_scale": 0.1}],
    "scheduler": {"name": "warmup_cosine", "warmup": 2, "min_lr_ratio": 0.1},
    "loss": {"name": "cross_entropy", "label_smoothing": 0.1},
}


def _trainer_section(tmp_path) -> dict:
    return {
        "max_epochs": 1,
        "accelerator": "cpu",
        "devices": 1,
        "default_root_dir": str(tmp_path),
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}},
        "callbacks": [{"class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
                       "init_args": {"logging_interval": "step"}}],
    }


def _fit_and_check(cli: LightningCLI) -> None:
    cfg = cli.model.get_optim_config()
    assert cfg == load_config(OPTIM)
    assert cli.model.hparams.hidden == 8
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 6
    monitor = next(cb for cb in cli.trainer.callbacks if isinstance(cb, LearningRateMonitor))
    names = set(monitor.lrs)
    assert "lr-AdamW/backbone" in names, names
    assert {"lr-AdamW/default", "lr-AdamW/backbone/no_decay", "lr-AdamW/default/no_decay"} <= names
    backbone, default = monitor.lrs["lr-AdamW/backbone"], monitor.lrs["lr-AdamW/default"]
    assert len(backbone) == 6
    assert backbone[0] == 0.0, "the warm-up starts at 0"
    assert default[2] == pytest.approx(3e-3), "peak at the end of the 2-step warm-up"
    assert backbone[2] == pytest.approx(3e-4), "lr_scale 0.1"
    assert default[-1] == pytest.approx(3e-4), "decayed to min_lr_ratio at the last step"
    assert isinstance(cli.model.loss_fn, nn.CrossEntropyLoss)
    assert cli.model.loss_fn.label_smoothing == 0.1


def test_lightningcli_yaml_config(tmp_path):
    config = {"model": {"optim": OPTIM, "hidden": 8}, "trainer": _trainer_section(tmp_path)}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LightningCLI(Net, RandomData, run=False, args=["--config", str(path)], save_config_callback=None)
    _fit_and_check(cli)


def test_lightningcli_subclass_mode_init_args(tmp_path):
    config = {
        "model": {"class_path": f"{__name__}.Net", "init_args": {"optim": OPTIM}},
        "data": {"class_path": f"{__name__}.RandomData"},
        "trainer": _trainer_section(tmp_path),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       run=False, args=["--config", str(path)], save_config_callback=None)
    assert isinstance(cli.model, Net)
    _fit_and_check(cli)


def test_lightningcli_command_line_override(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": {"optim": OPTIM}, "trainer": _trainer_section(tmp_path)}))
    optim = dict(OPTIM, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9})
    cli = LightningCLI(Net, RandomData, run=False, save_config_callback=None,
                       args=["--config", str(path), "--model.optim", json.dumps(optim), "--model.hidden", "4"])
    cfg = cli.model.get_optim_config()
    assert cfg.optimizer.name == "sgd"
    assert cfg.optimizer.kwargs == {"momentum": 0.9}
    assert cli.model.hparams.hidden == 4
    cli.trainer.fit(cli.model, cli.datamodule)
    assert type(cli.trainer.optimizers[0]).__name__ == "SGD"


def test_lightningcli_bad_optim_block_is_a_config_error(tmp_path):
    bad = dict(OPTIM, scheduler={"name": "warmup_cosin"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": {"optim": bad}, "trainer": _trainer_section(tmp_path)}))
    cli = LightningCLI(Net, RandomData, run=False, args=["--config", str(path)], save_config_callback=None)
    with pytest.raises(ConfigError) as info:
        cli.trainer.fit(cli.model, cli.datamodule)
    assert info.value.path == "scheduler.name"
    assert "warmup_cosine" in info.value.suggestions
