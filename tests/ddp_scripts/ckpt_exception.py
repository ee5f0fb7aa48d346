"""2-process CPU DDP: rank 1 raises mid-training; the job must end (no hang) with an emergency checkpoint.

Usage: python ckpt_exception.py OUTDIR   (Lightning re-runs this script for rank 1)

Rank 1 raises in ``training_step`` at optimizer step 5, while rank 0 goes on into the gradient
all-reduce of that step. Before raising, rank 1 writes ``OUTDIR/raised.json`` with the time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit.callbacks import Checkpoint, EarlyStopping

RAISE_AT = 5


class Net(L.LightningModule):
    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        if self.global_rank == 1 and self.global_step == RAISE_AT:
            (self.out / "raised.json").write_text(json.dumps({"time": time.time(), "step": self.global_step}))
            raise RuntimeError("rank 1 failed on purpose")
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    x = torch.randn(64, 4)
    ds = TensorDataset(x, x.sum(1, keepdim=True))
    ckpt = Checkpoint(dirpath=out / "ckpt", every_n_train_steps=2, async_save=True)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[EarlyStopping("val_loss", patience=5), ckpt])
    trainer.fit(Net(out), DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=16))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
