"""2-process CPU DDP: a metric logged without sync_dist differs per rank; EarlyStopping and Checkpoint agree.

Usage: python es_and_ckpt_agree.py OUTDIR   (Lightning re-runs this script for rank 1)

Rank r logs ``val_metric = MEAN[e] + (-1)^r * SPREAD[e]`` at epoch e, without ``sync_dist``. Each
rank writes ``OUTDIR/rank<r>.json`` with what it decided and its EarlyStopping / Checkpoint state.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit.callbacks import Checkpoint, EarlyStopping

MEAN = [1.0, 0.9, 0.85, 0.86, 0.87, 0.88, 0.89, 0.90, 0.91, 0.92]
SPREAD = [0.0, 0.3, -0.3, 0.3, -0.3, 0.3, -0.3, 0.3, -0.3, 0.3]


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        e = self.current_epoch
        sign = 1.0 if self.global_rank == 0 else -1.0
        self.log("val_metric", torch.tensor(MEAN[e] + sign * SPREAD[e]))  # no sync_dist, on purpose

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    x = torch.randn(32, 4)
    ds = TensorDataset(x, x.sum(1, keepdim=True))
    es = EarlyStopping("val_metric", patience=2)
    ckpt = Checkpoint(dirpath=out / "ckpt", monitor="val_metric", save_top_k=2, async_save=True)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=len(MEAN), logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[es, ckpt])
    trainer.fit(Net(), DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=8))
    state = {k: v for k, v in es.state_dict().items() if k != "best_state"}
    result = {
        "rank": trainer.global_rank,
        "global_step": trainer.global_step,
        "current_epoch": trainer.current_epoch,
        "should_stop": trainer.should_stop,
        "es": state,
        "ckpt": {k: v for k, v in ckpt.state_dict().items() if k != "rng"},
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    if torch.distributed.is_initialized():  # join gloo's threads before exit: without it an exit rarely aborts
        torch.distributed.destroy_process_group()  # ("terminate called without an active exception")
