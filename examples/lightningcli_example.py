"""LightningCLI + OptimMixin: the optimizer, schedule and loss live in the YAML under ``model.init_args.optim``.

The module below has no ``configure_optimizers``: it takes an ``optim`` dict, saves it as a
hyperparameter and :class:`~lightning_optkit.OptimMixin` does the rest. LightningCLI fills ``optim``
from the config file; on the command line a block of ``optim`` is replaced as a whole (``optim`` is a
plain dict to jsonargparse, so it does not merge nested keys).

Run (from the repository root):
    python examples/lightningcli_example.py fit --config examples/lightningcli_config.yaml
    python examples/lightningcli_example.py fit --config examples/lightningcli_config.yaml \\
        --model.init_args.optim.optimizer='{name: adamw, lr: 1.0e-3, weight_decay: 0.01}' --trainer.max_epochs=3
"""

from __future__ import annotations

import sys

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_optkit import ConfigError, OptimMixin
from lightning_optkit.demo import DigitsDataModule


class LitMLP(OptimMixin, L.LightningModule):
    """A user's model: the ``optim`` block is an ordinary constructor argument.

    Example:
        >>> model = LitMLP({"optimizer": {"name": "adamw", "lr": 1e-3}, "loss": {"name": "cross_entropy"}})
        >>> model(torch.zeros(2, 64)).shape
        torch.Size([2, 10])
    """

    def __init__(self, optim: dict, hidden: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()  # -> self.hparams["optim"], read by OptimMixin (and saved in checkpoints)
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10))
        self.val_acc = MulticlassAccuracy(num_classes=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)  # the `loss:` block of the config
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", self.loss_fn(logits, y), prog_bar=True)
        self.val_acc(logits, y)
        self.log("val_acc", self.val_acc, prog_bar=True)


def main() -> None:
    # subclass_mode_model: the YAML names the class (model.class_path) and its arguments (model.init_args)
    try:
        LightningCLI(LitMLP, DigitsDataModule, subclass_mode_model=True, save_config_kwargs={"overwrite": True})
    except ConfigError as err:  # a mistake in the optim block: one line naming the key, no traceback
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
