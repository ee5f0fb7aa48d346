"""Composing losses from config: a weighted sum inside a learned uncertainty weighting.

A tiny two-task model on synthetic data: a classification head trained with
``cross_entropy + 0.5 * dice`` (a ``weighted_sum``), and a regression head trained with ``mse``.
The two task losses are combined by ``uncertainty_weighted`` (Kendall et al. 2018), whose learned
log-variances are ordinary parameters of the LightningModule, so ``self.parameters()`` hands them
to the optimizer.

Run:  python examples/loss_composition.py
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit.losses import build_loss

LOSS_CONFIG = {
    "name": "uncertainty_weighted",
    "losses": [
        {
            "label": "classify",
            "name": "weighted_sum",
            "losses": [
                {"name": "cross_entropy", "label_smoothing": 0.05, "weight": [1.0, 1.0, 2.0]},  # coef 1.0
                {"name": "dice", "coef": 0.5, "batch_dice": True},
            ],
        },
        {"label": "regress", "name": "mse"},
    ],
    "tasks": ["classification", "regression"],  # the paper's exact per-task terms
}


class TwoTaskNet(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.cls_head = nn.Linear(32, 3)
        self.reg_head = nn.Linear(32, 1)
        self.loss_fn = build_loss(LOSS_CONFIG)  # a submodule: its log_vars join self.parameters()

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x, y_cls, y_reg = batch
        h = self.body(x)
        total = self.loss_fn([(self.cls_head(h), y_cls), (self.reg_head(h).squeeze(-1), y_reg)])
        # last_parts holds detached tensors (no host sync here); Lightning reads them when it logs
        parts = self.loss_fn.last_parts
        inner = self.loss_fn.parts[0].last_parts  # the weighted sum's own parts
        weights = self.loss_fn.weights
        self.log_dict(
            {
                "loss/total": total,
                "loss/classify": parts["classify"],
                "loss/regress": parts["regress"],
                "loss/ce": inner["cross_entropy"],
                "loss/dice": inner["dice"],
                "weight/classify": weights[0],
                "weight/regress": weights[1],
            },
            prog_bar=False,
        )
        return total

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.0)


def make_data(n: int = 512) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y_cls = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()  # 3 classes
    y_reg = 3.0 * x[:, 2] + torch.randn(n, generator=g)  # noisy: the model should learn to trust it less
    return TensorDataset(x, y_cls, y_reg)


def main() -> None:
    L.seed_everything(0, verbose=False)
    model = TwoTaskNet()
    print(model.loss_fn)
    print("state_dict keys of the loss:", list(model.loss_fn.state_dict()))  # only log_vars
    trainer = L.Trainer(
        max_epochs=5,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=5,
    )
    trainer.fit(model, DataLoader(make_data(), batch_size=64, shuffle=True))
    metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
    print("final metrics:", metrics)
    print("learned log-variances:", model.loss_fn.log_vars.detach().tolist())


if __name__ == "__main__":
    main()
