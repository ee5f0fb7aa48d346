"""Before and after lightning_optkit: one LightningModule, its hand-written ``configure_optimizers`` deleted.

BEFORE: AdamW with a decay / no-decay split of the parameters and a linear warm-up + cosine decay
written as a ``LambdaLR`` -- the 25 lines most Lightning projects carry around.
AFTER: the same module with :class:`~lightning_optkit.OptimMixin` and an ``optim`` dict (which could
as well live in a YAML file or LightningCLI config). Nothing else changes.

Both train for two epochs on random data; the LR of every optimizer step is printed side by side.

Run:
    python examples/before_after.py
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import OptimMixin

EPOCHS = 2
BATCHES_PER_EPOCH = 8
WARMUP_STEPS = 4


class Classifier(L.LightningModule):
    """The part of the project that stays as it is: layers and steps."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 32))
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)


# ----------------------------------------------------------------------------------------------- BEFORE
class Before(Classifier):
    def __init__(self, lr: float = 1e-3, weight_decay: float = 0.05, warmup_steps: int = WARMUP_STEPS) -> None:
        super().__init__()
        self.save_hyperparameters()

    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if param.ndim <= 1 or name.endswith(".bias"):  # biases and norm weights
                no_decay.append(param)
            else:
                decay.append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
        )
        total = int(self.trainer.estimated_stepping_batches)
        warmup = self.hparams.warmup_steps

        def lr_lambda(step: int) -> float:  # the usual HuggingFace-style cosine with warm-up
            if step < warmup:
                return step / max(1, warmup)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# ------------------------------------------------------------------------------------------------ AFTER
class After(OptimMixin, Classifier):
    def __init__(self, optim: dict) -> None:
        super().__init__()
        self.save_hyperparameters()  # OptimMixin reads self.hparams["optim"]; no configure_optimizers


OPTIM = {
    "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
    "no_weight_decay": "auto",  # biases, 1-d parameters and normalization layers (the default)
    "scheduler": {"name": "warmup_cosine", "warmup": WARMUP_STEPS},  # or "10%", "1 epoch"
}


# -------------------------------------------------------------------------------------------- the run
class RecordLR(Callback):
    """The LR of every parameter group at each optimizer step (before the step, as it is used)."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.lrs.append([float(g["lr"]) for g in trainer.optimizers[0].param_groups])


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCHES_PER_EPOCH * 32, 16, generator=g)
    y = torch.randint(0, 4, (len(x),), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)


def train(model: L.LightningModule) -> tuple[list[list[float]], list[tuple[int, float]]]:
    L.seed_everything(0, verbose=False)
    recorder = RecordLR()
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder])
    trainer.fit(model, _data())
    groups = [(len(g["params"]), g["weight_decay"]) for g in trainer.optimizers[0].param_groups]
    return recorder.lrs, groups


def main() -> None:
    torch.manual_seed(0)
    before_lrs, before_groups = train(Before())
    torch.manual_seed(0)
    after_lrs, after_groups = train(After(OPTIM))

    print(f"\nparameter groups (tensors, weight_decay): before {before_groups}  after {after_groups}")
    print(f"\n{'step':>4}  {'before (LambdaLR)':>18}  {'after (optim dict)':>18}  {'difference':>11}")
    for step, (b, a) in enumerate(zip(before_lrs, after_lrs)):
        print(f"{step:>4}  {b[0]:>18.6e}  {a[0]:>18.6e}  {a[0] - b[0]:>+11.2e}")
    same_warmup = all(abs(b[0] - a[0]) < 1e-12 for b, a in zip(before_lrs[:WARMUP_STEPS + 1], after_lrs))
    print(f"\nwarm-up identical: {same_warmup}. After it the two cosines differ by one step: the hand-written one\n"
          f"reaches 0 at step {len(before_lrs)}, an LR no update uses; lightning_optkit ends its decay on the last\n"
          f"update (step {len(after_lrs) - 1}), as torch's CosineAnnealingLR(T_max=total - 1) does. Every group has\n"
          "the same curve (all groups scale with the schedule).")


if __name__ == "__main__":
    main()
