"""TrainingDoctor: a run with three classic mistakes, diagnosed automatically.

The model has a layer defined in ``__init__`` but never called (its parameters never get a gradient),
its OneCycleLR is sized in optimizer steps but stepped once per epoch (so the LR never leaves its
warm-up), and it trains on few noisy samples for many epochs (the validation loss turns up while the
training loss keeps falling). The doctor warns once per finding while training, prints a summary table at
the end, writes ``doctor.json`` to the log dir and puts the table into TensorBoard (``doctor/summary``).

Run:  python examples/training_doctor.py
"""

from __future__ import annotations

import json
import os

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit.callbacks import TrainingDoctor

EPOCHS, BATCHES = 30, 3


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
        self.forgotten = nn.Linear(256, 256)  # mistake 1: never used in forward
        self.head = nn.Linear(256, 4)

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=3e-3)
        # mistake 2: a length in optimizer steps, stepped per epoch
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=EPOCHS * BATCHES)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def blobs(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 16, generator=torch.Generator().manual_seed(1)) * 2
    y = torch.randint(0, 4, (n,), generator=g)
    return TensorDataset(centers[y] + 3.0 * torch.randn(n, 16, generator=g), y)


def main() -> None:
    torch.manual_seed(0)
    train = DataLoader(blobs(48, 0), batch_size=16, shuffle=True)  # mistake 3: tiny, noisy, many epochs
    val = DataLoader(blobs(256, 1), batch_size=64)
    logger = TensorBoardLogger("lightning_logs", name="doctor_example")
    doctor = TrainingDoctor(check_every_n_steps=20)
    trainer = L.Trainer(max_epochs=EPOCHS, logger=logger, callbacks=[doctor], enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False, log_every_n_steps=BATCHES)
    trainer.fit(Classifier(), train, val)

    print("\ncodes:", doctor.codes)
    with open(os.path.join(logger.log_dir, "doctor.json")) as fh:
        report = json.load(fh)
    for d in report["diagnoses"]:
        print(f"- {d['code']} ({d['severity']}): {d['message']}\n  remedy: {d['remedy']}")


if __name__ == "__main__":
    main()
