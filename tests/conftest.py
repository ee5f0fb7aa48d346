"""Shared tiny models and fixtures for the config / optimizer / parameter-group tests.

Everything here is real torch and Lightning, sized to run in milliseconds on a CPU.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import OptimMixin
from lightning_optkit.config import TrainingLength

# Every model here is tiny: intra-op threads only add contention (10x slower on a loaded 2-core runner).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Keep one intra-op thread in every test, whatever a test before it set."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


class TinyNet(nn.Module):
    """``backbone`` (a stack: Linear, LayerNorm, Linear) and ``head``: 4 -> 2."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.backbone(x)))


class TinyTransformer(nn.Module):
    """Embeddings, a ModuleList of two encoder layers, a final norm and a head (ViT/LM layout).

    ``pos`` is a 3-D parameter that only the ``no_weight_decay()`` hook exempts from weight decay.
    """

    def __init__(self, vocab: int = 16, dim: int = 8, depth: int = 2, tie: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(1, 6, dim))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        if tie:
            self.head.weight = self.embed.weight

    def no_weight_decay(self) -> set[str]:
        return {"pos"}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


class RegressionNet(OptimMixin, L.LightningModule):
    """A LightningModule with an ``optim`` config: MSE regression 4 -> 1."""

    def __init__(self, optim: dict, log_val: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 1)
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.backbone(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.losses.append(float(loss.detach()))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        if self.hparams.log_val:
            self.log("val_loss", nn.functional.mse_loss(self(x), y))


def regression_loader(n: int = 64, batch_size: int = 16, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])).tanh()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


FAST_TRAINER = dict(
    accelerator="cpu",
    devices=1,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def tiny_transformer() -> type[TinyTransformer]:
    """The class, so a test can build it tied or untied."""
    return TinyTransformer


@pytest.fixture
def length20() -> TrainingLength:
    """20 optimizer steps in 4 epochs of 5: what a short Trainer run reports."""
    return TrainingLength(total_steps=20, steps_per_epoch=(5,) * 4)


@pytest.fixture
def fast_trainer_kwargs(tmp_path) -> dict:
    return dict(FAST_TRAINER, default_root_dir=str(tmp_path))


@pytest.fixture
def regression_net() -> type[RegressionNet]:
    return RegressionNet


@pytest.fixture
def make_regression_loader():
    return regression_loader


def _load_benchmark(name: str) -> Any:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def load_benchmark():
    """``load_benchmark("name")``: the module ``benchmarks/name.py``, to test its pieces."""
    return _load_benchmark
