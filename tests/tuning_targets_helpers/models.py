"""An MLP whose depth, per-layer widths and dropout are constructor arguments, a datamodule with a
batch size, and factories over them; each fit records what was really built (for the tuning tests).

``on_fit_start`` writes ``built.json`` into the trial's TensorBoard folder: the layer widths and
dropout probabilities read off the modules, the datamodule's batch size and the Trainer's clipping
and accumulation -- so a test checks the objects, not only the study's parameters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import OptimMixin


class MLP(OptimMixin, L.LightningModule):
    """``n_layers`` hidden layers of ``units[i]`` units, each followed by an activation and dropout."""

    def __init__(self, optim: dict[str, Any], n_layers: int = 1, units: list[int] = [16],  # noqa: B006
                 dropout: float = 0.0, activation: Literal["relu", "tanh"] = "relu", note: str | None = None) -> None:
        super().__init__()
        if len(units) != n_layers:
            raise ValueError(f"units has {len(units)} elements for n_layers={n_layers}")
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = 8
        for u in units:
            layers += [nn.Linear(width, u), nn.ReLU() if activation == "relu" else nn.Tanh(), nn.Dropout(dropout)]
            width = u
        layers.append(nn.Linear(width, 3))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.loss_fn(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", self.loss_fn(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def on_fit_start(self) -> None:
        logger = self.trainer.logger
        if logger is None or not getattr(logger, "log_dir", None):
            return
        linears = [m for m in self.net if isinstance(m, nn.Linear)][:-1]
        built = {
            "n_layers": len(linears),
            "units": [m.out_features for m in linears],
            "dropout": [m.p for m in self.net if isinstance(m, nn.Dropout)],
            "activation": type(self.net[1]).__name__ if linears else None,
            "batch_size": self.trainer.datamodule.batch_size,
            "gradient_clip_val": self.trainer.gradient_clip_val,
            "accumulate_grad_batches": self.trainer.accumulate_grad_batches,
            "lr": self.trainer.optimizers[0].param_groups[0].get("initial_lr", self.trainer.optimizers[0].param_groups[0]["lr"]),
            "version": str(logger.version),
        }
        path = Path(logger.log_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "built.json").write_text(json.dumps(built))


class Blobs(L.LightningDataModule):
    """Three Gaussian blobs in 8 dimensions (fixed seed), 192 training and 96 validation points."""

    def __init__(self, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        g = torch.Generator().manual_seed(seed)
        centers = torch.randn(3, 8, generator=g) * 2
        y = torch.arange(288) % 3
        x = centers[y] + torch.randn(288, 8, generator=g)
        self.train_set, self.val_set = TensorDataset(x[:192], y[:192]), TensorDataset(x[192:], y[192:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=96)


def build(optim: dict[str, Any], targets: dict[str, dict[str, Any]]) -> tuple[MLP, Blobs]:
    """A two-argument factory: the sampled model/data values arrive in ``targets``."""
    return MLP(optim, **targets["model"]), Blobs(**targets["data"])


def build_optim_only(optim: dict[str, Any]) -> tuple[MLP, Blobs]:
    """A one-argument factory: it cannot take model./data. keys."""
    return MLP(optim), Blobs()


OPTIM = {"optimizer": {"name": "adamw", "lr": 1.0e-2}, "scheduler": {"name": "constant"},
         "loss": {"name": "cross_entropy"}}
