"""GradNormMonitor: gradient norms per layer group, at close to no cost, in TensorBoard.

A small transformer encoder learns to copy a token sequence shifted by one. The monitor logs the total
gradient norm every logging step and, every 20 steps, the norm per encoder block (``groups="auto"``:
``encoder.layers.0``, ``encoder.layers.1``, ...), the parameter norms and the update-to-parameter ratio
``|Δw| / |w|`` of each group (a healthy ratio is around 1e-3). The script reads the TensorBoard event
file back and prints a few curves.

Run:  python examples/grad_norm_monitor.py        then: tensorboard --logdir lightning_logs/grad_norm_example
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit.callbacks import GradNormMonitor

VOCAB, SEQ = 32, 16


class Copier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 64)
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
        self.head = nn.Linear(64, VOCAB)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.head(self.encoder(self.embed(x)))
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def main() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, VOCAB, (512, SEQ))
    loader = DataLoader(TensorDataset(x, torch.roll(x, 1, dims=1)), batch_size=32, shuffle=True)
    logger = TensorBoardLogger("lightning_logs", name="grad_norm_example")
    monitor = GradNormMonitor(detail_every_n_steps=20, param_norms=True, histogram_every_n_steps=40)
    trainer = L.Trainer(max_epochs=4, logger=logger, log_every_n_steps=5, callbacks=[monitor],
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)
    trainer.fit(Copier(), loader)

    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    for tag in ("grad_norm/total", "grad_norm/encoder.layers.0", "grad_norm/head", "update_ratio/encoder.layers.0"):
        points = acc.Scalars(tag)
        print(f"{tag:32s} " + "  ".join(f"{p.step}:{p.value:.3g}" for p in points[:: max(1, len(points) // 5)]))
    print(f"\nevent file in {logger.log_dir}")


if __name__ == "__main__":
    main()
