"""Tune your own LightningModule's optim block with ``tune()`` and a factory.

The factory gets each trial's complete ``optim:`` block (a plain dict, already validated) and returns
``(LightningModule, LightningDataModule)``. The search space uses the same dotted key paths as the
config; ``when:`` makes a parameter exist only for some choices of another (SGD's momentum). Every
validation is reported at its optimizer step, so Hyperband can stop a poor trial after its first
quarter epoch (``val_check_interval=0.25``).

Run (from the repository root, about a minute on 2 CPU cores):
    python examples/tune_factory.py
    optuna-dashboard sqlite:///optkit_tune/optuna.db      # if you have optuna-dashboard installed
    tensorboard --logdir optkit_tune/tune_factory/tensorboard   # the HParams tab compares the trials

Under DDP, pass ``trainer_kwargs={"strategy": "ddp", "devices": 2, ...}`` and run the script as usual
(or with torchrun): rank 0 owns the study and sends each trial's config to the other ranks.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_optkit import OptimMixin, load_config
from lightning_optkit.demo import DigitsDataModule
from lightning_optkit.tuning import tune


class LitMLP(OptimMixin, L.LightningModule):
    """A user's model: no configure_optimizers, the optim block is a constructor argument.

    Example:
        >>> LitMLP({"optimizer": {"name": "adamw"}, "loss": {"name": "cross_entropy"}})(torch.zeros(2, 64)).shape
        torch.Size([2, 10])
    """

    def __init__(self, optim: dict, hidden: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        self.val_acc = MulticlassAccuracy(num_classes=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", self.loss_fn(logits, y))
        self.val_acc(logits, y)
        self.log("val_acc", self.val_acc)  # the metric the study maximizes


def build(optim: dict) -> tuple[LitMLP, DigitsDataModule]:
    """The factory: one trial's optim block -> (model, data)."""
    return LitMLP(optim), DigitsDataModule(batch_size=64)


BASE = {  # the first trial of the study
    "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
    "scheduler": {"name": "warmup_cosine", "warmup": "5%", "min_lr_ratio": 0.01},
    "loss": {"name": "cross_entropy"},
}

SEARCH = {
    "optimizer.name": {"choices": ["adamw", "sgd"]},
    "optimizer.lr": {"low": 1e-4, "high": 3e-1, "log": True},
    "optimizer.weight_decay": {"low": 1e-5, "high": 1e-1, "log": True},
    "optimizer.momentum": {"low": 0.8, "high": 0.99, "when": {"optimizer.name": "sgd"}},
    "scheduler.warmup": {"choices": ["0%", "5%", "10%"]},
    "loss.label_smoothing": {"low": 0.0, "high": 0.2},
}


def main() -> None:
    torch.set_num_threads(1)  # a tiny model: one thread per trial is fastest, and leaves the other core free
    study = tune(
        build,
        SEARCH,
        config=BASE,
        monitor="val_acc",            # direction inferred: maximize
        n_trials=20,
        pruner="hyperband",           # the default; its smallest budget is one validation interval
        trainer_kwargs={"max_epochs": 6, "val_check_interval": 0.25, "accelerator": "cpu", "devices": 1,
                        "deterministic": True},
        seed=0,
        out_dir="optkit_tune",
    )
    best = load_config(f"optkit_tune/{study.study_name}/best_config.yaml")
    print(f"\nbest {study.best_value:.4f} with {best.optimizer.name} at lr={best.optimizer.lr:.3g}")


if __name__ == "__main__":
    main()
