"""The digits demo: sklearn's 8x8 handwritten digits and a small MLP that takes an ``optim:`` block."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from ..config import OptimConfig, read_yaml
from ..mixin import OptimMixin

__all__ = ["DigitsClassifier", "DigitsDataModule", "digits_config", "digits_config_path"]

NUM_FEATURES = 64
NUM_CLASSES = 10


def digits_config_path() -> Path:
    """Path of the demo's ``optim:`` preset shipped with the package (a copy of ``configs/digits.yaml``)."""
    return Path(str(resources.files("lightning_optkit.demo").joinpath("digits.yaml")))


def digits_config() -> dict[str, Any]:
    """The demo's ``optim:`` preset as a plain dict (a fresh copy on every call)."""
    data = read_yaml(digits_config_path())
    return copy.deepcopy(data)


class DigitsDataModule(L.LightningDataModule):
    """sklearn's ``load_digits`` (1797 images of 8x8 pixels, 10 classes; bundled, no download).

    The split is stratified and seeded, so the same ``seed`` always gives the same images in the
    same split. Features are standardized with the training split's mean and standard deviation
    (constant border pixels keep a scale of 1) and served as float32 tensors of shape ``(B, 64)``;
    labels are int64.

    Args:
        batch_size: training and validation batch size.
        val_fraction: share of the images held out for validation (stratified by class).
        seed: seed of the split (the order of training batches follows Lightning's seed).
        num_workers: DataLoader workers; 0 is fastest for a dataset this small.

    Example:
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), x.dtype, y.dtype, len(dm.train_set), len(dm.val_set)
        ((32, 64), torch.float32, torch.int64, 1437, 360)
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        self.save_hyperparameters()
        self.batch_size = int(batch_size)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        x_train, x_val, y_train, y_val = train_test_split(
            x, y, test_size=self.val_fraction, stratify=y, random_state=self.seed
        )
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std[std == 0] = 1.0
        self.train_set = _tensors((x_train - mean) / std, y_train)
        self.val_set = _tensors((x_val - mean) / std, y_val)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)


def _tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64))


class DigitsClassifier(OptimMixin, L.LightningModule):
    """A small MLP for the digits: ``backbone`` (a stack of Linear-ReLU-Dropout blocks) and a ``head``.

    The optimizer, schedule and loss come from ``optim`` through :class:`~lightning_optkit.OptimMixin`;
    there is no ``configure_optimizers`` here. The layout (``backbone.<i>`` blocks, ``head``) lets
    ``param_groups`` rules and ``layer_decay`` address the layers. Logs ``train_loss``, ``val_loss``
    and ``val_acc`` (torchmetrics' multiclass accuracy) once per epoch.

    Args:
        optim: the ``optim:`` block (a dict or :class:`~lightning_optkit.OptimConfig`); ``None`` uses
            the demo preset (``configs/digits.yaml``).
        hidden_sizes: widths of the hidden layers.
        dropout: dropout after every hidden layer.

    Example:
        >>> model = DigitsClassifier(hidden_sizes=(32,))
        >>> model(torch.zeros(2, 64)).shape
        torch.Size([2, 10])
        >>> type(model.loss_fn).__name__
        'CrossEntropyLoss'
    """

    def __init__(
        self,
        optim: Mapping[str, Any] | OptimConfig | None = None,
        hidden_sizes: Sequence[int] = (128, 64),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if isinstance(optim, OptimConfig):
            optim = optim.to_dict()
        optim = dict(optim) if optim is not None else digits_config()
        hidden_sizes = [int(h) for h in hidden_sizes]
        self.save_hyperparameters({"optim": optim, "hidden_sizes": hidden_sizes, "dropout": float(dropout)})
        blocks: list[nn.Module] = []
        width = NUM_FEATURES
        for size in hidden_sizes:
            blocks.append(nn.Sequential(nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)))
            width = size
        self.backbone = nn.Sequential(*blocks)
        self.head = nn.Linear(width, NUM_CLASSES)
        self.val_acc = MulticlassAccuracy(num_classes=NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", self.loss_fn(logits, y), on_step=False, on_epoch=True, prog_bar=True)
        self.val_acc(logits, y)
        self.log("val_acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)
