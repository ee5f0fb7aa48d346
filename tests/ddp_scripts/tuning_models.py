"""Tiny real models and data for the tuning tests (imported by tests/test_tuning_*.py and the DDP script).

Everything is real torch and Lightning, sized to train in a fraction of a second on a CPU.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import OptimMixin


class TinyNet(OptimMixin, L.LightningModule):
    """4 features -> 3 classes. Logs ``val_loss`` (synced across ranks) and ``val_acc`` at every validation
    and keeps its own record of each validation: ``val_history = [(optimizer step, mean val loss)]``."""

    def __init__(self, optim: dict, hidden: int = 16, log_val: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3))
        self.val_history: list[tuple[int, float]] = []
        self._val_losses: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self._val_losses.append(loss.detach())
        if self.hparams.log_val:
            self.log("val_loss", loss, sync_dist=True)
            self.log("val_acc", (logits.argmax(-1) == y).float().mean(), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking and self._val_losses:
            self.val_history.append((int(self.trainer.global_step), float(torch.stack(self._val_losses).mean())))
        self._val_losses.clear()


class TinyData(L.LightningDataModule):
    """``n`` points (equal-size batches of ``batch_size``), 3 classes from the signs of two features."""

    def __init__(self, n: int = 64, batch_size: int = 8, seed: int = 0) -> None:
        super().__init__()
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(self.seed)
        x = torch.randn(self.n, 4, generator=g)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        self.ds = TensorDataset(x, y)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.ds, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.ds, batch_size=self.batch_size)


def build(optim: dict) -> tuple[TinyNet, TinyData]:
    """The factory the tests tune: ``build(optim) -> (module, datamodule)``."""
    return TinyNet(optim), TinyData()


def build_unlogged(optim: dict) -> tuple[TinyNet, TinyData]:
    """A model that logs nothing in validation (for the never-logged-metric test)."""
    return TinyNet(optim, log_val=False), TinyData()
