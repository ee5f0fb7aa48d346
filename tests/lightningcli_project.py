"""A user's LightningCLI project, written the way Lightning's fine-tuning example writes it, on a tiny model.

The script's own ``LightningCLI`` subclass adds ``BackboneFinetuning`` as a ``finetuning:`` section
(``parser.add_lightning_class_args``), so the config it prints has a section only that CLI knows.
The model takes its backbone as an ``nn.Module`` argument (Hydra style). Every fit appends what it
saw to :data:`RUNS` (same process; :data:`TRAINABLE` when the optimizer is built): whether the backbone stayed frozen and unchanged, whether the
head trained, and the callbacks that ran.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BackboneFinetuning, Callback
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import OptimMixin

RUNS: list[dict[str, Any]] = []
TRAINABLE: list[int] = []  # trainable parameters each time the optimizer is built (an LR range test too)


class Backboned(OptimMixin, L.LightningModule):
    """``backbone`` -> ``head``; the backbone is an argument (an ``nn.Module``) or built from ``hidden``."""

    def __init__(self, optim: dict, hidden: int = 8, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone if backbone is not None else nn.Sequential(nn.Linear(4, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> Any:
        TRAINABLE.append(sum(p.numel() for p in self.parameters() if p.requires_grad))
        return super().configure_optimizers()

    def on_train_start(self) -> None:
        self._start = {k: v.detach().clone() for k, v in self.state_dict().items()}
        self._start_step = int(self.trainer.global_step)

    def on_train_end(self) -> None:
        now = self.state_dict()
        moved = {k for k, v in self._start.items() if not torch.equal(v, now[k])}
        in_optimizer = {id(p) for opt in self.trainer.optimizers for g in opt.param_groups for p in g["params"]}
        RUNS.append({
            "backbone": type(self.backbone).__name__,
            "steps": (self._start_step, int(self.trainer.global_step)),
            "backbone_params": sum(p.numel() for p in self.backbone.parameters()),
            "backbone_frozen": all(not p.requires_grad for p in self.backbone.parameters()),
            "backbone_moved": any(k.startswith("backbone.") for k in moved),
            "head_moved": any(k.startswith("head.") for k in moved),
            "trainable_in_optimizer": sum(p.numel() for p in self.parameters() if id(p) in in_optimizer
                                          and p.requires_grad),
            "optim": dict(self.hparams["optim"]),
            "callbacks": sorted(type(cb).__name__ for cb in self.trainer.callbacks),
        })


class Data(L.LightningDataModule):
    def __init__(self, n: int = 48, batch_size: int = 8) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.n, 4, generator=g)
        self.dataset = TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size)


class EpochCounter(Callback):
    """A callback the YAML lists under ``trainer.callbacks``."""

    def __init__(self, label: str = "x") -> None:
        self.label = label
        self.epochs = 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs += 1


class ProjectCLI(LightningCLI):
    """The script's CLI: a fine-tuning callback with its own config section, as in Lightning's example."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_lightning_class_args(BackboneFinetuning, "finetuning")
        parser.set_defaults({"finetuning.unfreeze_backbone_at_epoch": 10})


def cli_main(args: Any = None) -> ProjectCLI:
    """The script's entry point (``python train.py fit --config ...``)."""
    return ProjectCLI(Backboned, Data, args=args, save_config_kwargs={"overwrite": True})


class FixedProjectCLI(ProjectCLI):
    """The same CLI as a class that fixes its model and data (``--cli lightningcli_project.FixedProjectCLI``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(Backboned, Data, **kwargs)
