"""The tasks of ``benchmarks/tuning_efficiency.py``: four tiny CPU tasks with train / val / TEST splits.

Every task has fixed splits (drawn once, independent of every seed): a study trains on ``train`` and
is scored on ``val``; ``test`` is only read by the benchmark's re-training of the returned configs.
A full trial is ~60-120 optimizer steps on a few hundred samples (well under a second on one core).

- ``digits``: an MLP 64 -> 64 -> 10 on sklearn's 8x8 digits, 400 training images; plain accuracy.
- ``moons``: an MLP 2 -> 64 -> 64 -> 2 on noisy two moons (noise 0.3), 256 training points; accuracy.
- ``friedman``: an MLP 10 -> 64 -> 64 -> 1 on ``make_friedman1`` (noise 1.0, targets standardized by the
  training split), 256 training points; the objective is ``val_mse`` (minimized).
- ``cnn``: a small CNN on the 8x8 digit images with only 150 training images (a wide spread of outcomes).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import OptimMixin

__all__ = ["TASKS", "Splits", "Task"]


@dataclass(frozen=True)
class Splits:
    """Fixed train / val / test tensors of one task."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def _accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out.argmax(-1) == y).float().mean()


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out.squeeze(-1) - y) ** 2).mean()


class TaskNet(OptimMixin, L.LightningModule):
    """Any ``net`` with the optim block's loss; logs ``monitor`` over the whole validation split (one batch)."""

    def __init__(self, optim: dict, net: nn.Module, monitor: str, metric: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.optim_config = optim
        self.net = net
        self.monitor = monitor
        self.metric = metric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.net(x)
        return self.loss_fn(out.squeeze(-1) if out.shape[-1] == 1 else out, y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log(self.monitor, self.metric(self.net(x), y))


class TaskData(L.LightningDataModule):
    """The training split in shuffled mini-batches; the validation split as one batch."""

    def __init__(self, splits: Splits, batch_size: int) -> None:
        super().__init__()
        self.splits = splits
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        s = self.splits
        return DataLoader(TensorDataset(s.x_train, s.y_train), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        s = self.splits
        return DataLoader(TensorDataset(s.x_val, s.y_val), batch_size=len(s.x_val))


@dataclass(frozen=True)
class Task:
    """One benchmark task: its data, network, loss, metric and run length."""

    name: str
    splits: Callable[[], Splits]
    net: Callable[[], nn.Module]
    loss: str
    monitor: str
    batch_size: int
    epochs: int

    @property
    def direction(self) -> str:
        return "minimize" if self.monitor.endswith("mse") else "maximize"

    @property
    def metric(self) -> Callable[..., torch.Tensor]:
        return _mse if self.monitor.endswith("mse") else _accuracy

    def data(self) -> Splits:
        return _cached(self.splits)

    def steps_per_trial(self) -> int:
        """Optimizer steps of one full trial (``epochs`` x batches per epoch)."""
        return self.epochs * math.ceil(len(self.data().x_train) / self.batch_size)

    def base(self) -> dict[str, Any]:
        """The base optim block of every study (AdamW 1e-3, constant LR)."""
        return {"optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4}, "loss": {"name": self.loss}}

    def build(self, optim: dict) -> tuple[TaskNet, TaskData]:
        """The factory ``tune()`` calls: ``(LightningModule, LightningDataModule)`` for ``optim``."""
        return TaskNet(optim, self.net(), self.monitor, self.metric), TaskData(self.data(), self.batch_size)

    @torch.no_grad()
    def score(self, module: TaskNet) -> tuple[float, float]:
        """``(val, test)`` metric of a trained module."""
        s = self.data()
        module.eval()
        return (float(self.metric(module(s.x_val), s.y_val)), float(self.metric(module(s.x_test), s.y_test)))


@functools.cache
def _cached(fn: Callable[[], Splits]) -> Splits:
    return fn()


def _split(x: np.ndarray, y: np.ndarray, n_train: int, n_val: int, n_test: int | None, y_float: bool) -> Splits:
    """Standardize by the training split (inputs; regression targets too) and cut in three."""
    tr, va = slice(0, n_train), slice(n_train, n_train + n_val)
    te = slice(n_train + n_val, None if n_test is None else n_train + n_val + n_test)
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-6
    x = (x - mean) / std
    if y_float:
        y = (y - y[tr].mean()) / y[tr].std()
    ty = torch.float32 if y_float else torch.long

    def t(a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.tensor(np.ascontiguousarray(a), dtype=dtype)

    return Splits(t(x[tr]), t(y[tr], ty), t(x[va]), t(y[va], ty), t(x[te]), t(y[te], ty))


@functools.cache
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(x))
    return x[perm].astype(np.float32), y[perm]


def _digits() -> Splits:
    x, y = _digits_raw()
    return _split(x, y, 400, 400, None, y_float=False)


def _digits_images() -> Splits:
    x, y = _digits_raw()
    s = _split(x, y, 150, 400, None, y_float=False)
    return Splits(*(a.view(-1, 1, 8, 8) if a.dtype == torch.float32 else a for a in (
        s.x_train, s.y_train, s.x_val, s.y_val, s.x_test, s.y_test)))


def _moons() -> Splits:
    from sklearn.datasets import make_moons

    x, y = make_moons(256 + 1024 + 4096, noise=0.3, random_state=0)
    return _split(x.astype(np.float32), y, 256, 1024, 4096, y_float=False)


def _friedman() -> Splits:
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(256 + 512 + 2048, n_features=10, noise=1.0, random_state=0)
    return _split(x.astype(np.float32), y.astype(np.float32), 256, 512, 2048, y_float=True)


def _mlp(n_in: int, n_out: int, hidden: int = 64, depth: int = 2) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        return nn.Sequential(*layers, nn.Linear(width, n_out))
    return make


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 10))


TASKS: dict[str, Task] = {
    "digits": Task("digits", _digits, _mlp(64, 10, depth=1), "cross_entropy", "val_acc", 32, 6),
    "moons": Task("moons", _moons, _mlp(2, 2), "cross_entropy", "val_acc", 32, 10),
    "friedman": Task("friedman", _friedman, _mlp(10, 1), "mse", "val_mse", 32, 10),
    "cnn": Task("cnn", _digits_images, _cnn, "cross_entropy", "val_acc", 16, 8),
}
