"""A task whose validation score is pure seed noise, for the re-evaluation tests (issue 15, item 5).

``SeedNoise(variant="noisy")`` scores ``sign * z`` where ``z`` is the first ``torch.randn`` draw after
the trial's ``seed_everything``: a config whose value is the luck of its seed. ``variant="stable"``
scores ``stable_score`` whatever the seed. Training leaves the score alone (zero gradient), so a run's
``val_score`` is known before it runs: :func:`noisy_score` computes it.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import OptimMixin

OPTIM = {"optimizer": {"name": "sgd", "lr": 1.0e-2, "weight_decay": 0.0}, "scheduler": {"name": "constant"}}


class SeedNoise(OptimMixin, L.LightningModule):
    """One parameter, the score: ``sign * randn()`` (noisy) or ``stable_score`` (stable)."""

    def __init__(self, optim: dict[str, Any], variant: Literal["noisy", "stable"] = "stable",
                 stable_score: float = 0.0, sign: float = 1.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        z = torch.randn(1)
        self.score = nn.Parameter(sign * z if variant == "noisy" else torch.tensor([float(stable_score)]))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return (self.score * 0.0).sum() + 0.0 * batch[0].sum()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_score", self.score.detach().sum())


class Zeros(L.LightningDataModule):
    """Four zeros, one batch."""

    def __init__(self) -> None:
        super().__init__()
        self.data = TensorDataset(torch.zeros(4, 1))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=4)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=4)


def noisy_score(seed: int, sign: float = 1.0) -> float:
    """The score of the noisy variant trained with ``seed`` (its first draw after ``seed_everything``)."""
    L.seed_everything(seed, workers=True, verbose=False)
    return float(SeedNoise(OPTIM, variant="noisy", sign=sign).score.detach())
