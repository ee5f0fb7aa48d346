"""Every preset in configs/ loads, builds optimizers and schedulers, and trains a tiny model for real."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import OptimMixin, build_optimizers, load_config
from lightning_optkit.config import TrainingLength
from lightning_optkit.demo import digits_config_path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))
REQUIRED = {"adamw_warmup_cosine", "sgd_onecycle", "adam_plateau", "finetune_layer_decay", "digits"}


class Backboned(OptimMixin, L.LightningModule):
    """A pretrained-style layout: ``backbone`` (stem + a ModuleList of layers) and a new ``head``."""

    def __init__(self, optim: dict, depth: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Module()
        self.backbone.stem = nn.Linear(4, 8)
        self.backbone.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.ReLU()) for _ in range(depth)
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone.stem(x)
        for layer in self.backbone.layers:
            h = layer(h)
        return self.head(h)

    def _loss(self, batch) -> torch.Tensor:
        x, y = batch
        loss_fn = self.loss_fn if self.get_optim_config().loss is not None else nn.functional.cross_entropy
        return loss_fn(self(x), y)

    def training_step(self, batch, batch_idx):
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch))


def _loader(n: int = 32, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()), batch_size=batch_size)


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_required_presets_exist():
    assert {p.stem for p in PRESETS} >= REQUIRED


def test_packaged_demo_config_is_the_preset():
    assert digits_config_path().read_text(encoding="utf-8") == (CONFIGS / "digits.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("path", PRESETS, ids=_ids(PRESETS))
def test_preset_loads_and_builds(path: Path):
    cfg = load_config(path)
    assert load_config(cfg.to_dict()) == cfg
    assert cfg.scheduler is not None
    torch.manual_seed(0)
    model = Backboned(cfg.to_dict())
    length = TrainingLength(100, (10,) * 10)
    optimizers, schedulers = build_optimizers(model, cfg, length=length)
    (optimizer,) = optimizers
    assert schedulers and all(s["scheduler"].optimizer is optimizer for s in schedulers)
    owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert owned == {id(p) for p in model.parameters()}
    peak = 0.0
    for step in range(length.total_steps):  # the whole run, as Lightning steps them
        optimizer.step()
        for entry in schedulers:
            if entry["interval"] == "step":
                entry["scheduler"].step()
            elif (step + 1) % 10 == 0 and entry.get("reduce_on_plateau"):
                entry["scheduler"].step(1.0)  # a metric that never improves
            elif (step + 1) % 10 == 0:
                entry["scheduler"].step()
        lrs = [g["lr"] for g in optimizer.param_groups]
        assert all(lr >= 0 and lr == lr for lr in lrs)
        peak = max(peak, *lrs)
    assert peak == pytest.approx(cfg.optimizer.lr)
    if cfg.loss is not None:
        assert isinstance(model.loss_fn, nn.Module)


def test_finetune_preset_orders_the_learning_rates():
    cfg = load_config(CONFIGS / "finetune_layer_decay.yaml")
    model = Backboned(cfg.to_dict(), depth=3)
    optimizer = build_optimizers(model, cfg, length=TrainingLength(100, (10,) * 10))[0][0]
    base = cfg.optimizer.lr
    # warm-up starts at 0: compare the peak LRs the schedule scales (initial_lr)
    peak_of = {n: g["initial_lr"] for g in optimizer.param_groups for n, p in model.named_parameters()
               if any(p is q for q in g["params"])}
    assert set(peak_of) == {n for n, _ in model.named_parameters()}
    assert peak_of["head.weight"] == pytest.approx(base)
    layers = [peak_of[f"backbone.layers.{i}.0.weight"] for i in range(3)]
    assert layers == sorted(layers) and layers[0] < layers[-1] < base * 0.5 + 1e-12
    assert peak_of["backbone.stem.weight"] < layers[0]
    assert peak_of["backbone.layers.2.0.weight"] == pytest.approx(base * 0.5 * 0.8)


@pytest.mark.parametrize("path", PRESETS, ids=_ids(PRESETS))
def test_preset_trains_with_a_real_trainer(path: Path, tmp_path):
    L.seed_everything(0, verbose=False)
    model = Backboned(load_config(path).to_dict())
    logger = CSVLogger(tmp_path, name="preset")
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", devices=1, logger=logger, log_every_n_steps=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[LearningRateMonitor(logging_interval="step")],
    )
    trainer.fit(model, _loader(), _loader())
    assert trainer.global_step == 12
    assert torch.isfinite(trainer.callback_metrics["val_loss"])
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    column = next(k for k in rows[0] if k.startswith("lr-"))
    lrs = [float(r[column]) for r in rows if r.get(column)]
    assert len(lrs) == 12 and len(set(lrs)) > 1  # the schedule moved the LR during the run
