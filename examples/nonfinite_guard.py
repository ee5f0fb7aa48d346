"""NonFiniteGuard: a NaN batch and an LR spike, survived by rolling back to an in-memory snapshot.

A regression MLP trains for 3 epochs. At step 30 one batch carries a NaN (bad data); at step 60 the LR
is multiplied by 1000 for a single step (a scheduler bug, say), which ruins the weights without any NaN:
the next loss is a spike. With ``policy="rollback"`` the guard skips the NaN step (weights and optimizer
state untouched) and, at the spike, restores the snapshot it took every 10 steps. Every event is in
``nonfinite_events.json`` in the log dir. Try ``policy="reduce_lr"``, ``"skip"``, ``"stop"`` or ``"raise"``.

Run:  python examples/nonfinite_guard.py
"""

from __future__ import annotations

import json
import os

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit.callbacks import NonFiniteGuard


class Regressor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class Trouble(Callback):
    """A NaN in the batch of step 30, and a 1000x LR for step 60."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 30:
            batch[0][0, 0] = float("nan")
        if trainer.global_step == 60:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] *= 1000

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 61:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] /= 1000


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(1024, 8)
    y = torch.tanh(x @ torch.randn(8, 1) / 2)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    guard = NonFiniteGuard(policy="rollback", snapshot_every_n_steps=10, spike_warmup=20)
    logger = CSVLogger("lightning_logs", name="nonfinite_example")
    trainer = L.Trainer(max_epochs=3, logger=logger, callbacks=[guard, Trouble()], enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False)
    model = Regressor()
    trainer.fit(model, loader)

    print(f"\nfinished {trainer.global_step} steps; weights finite: "
          f"{all(bool(torch.isfinite(p).all()) for p in model.parameters())}; "
          f"final loss {float(trainer.callback_metrics['train_loss']):.4f}")
    print(f"snapshot memory: {guard.snapshot_bytes} bytes")
    for event in guard.events:
        print(" -", event.message())
    path = os.path.join(logger.log_dir, "nonfinite_events.json")
    with open(path) as fh:
        print(f"\n{path}: {len(json.load(fh)['events'])} events")


if __name__ == "__main__":
    main()
