"""Two-process CPU DDP run of the LRFinder callback; every rank writes what it saw to OUT_DIR/rank<r>.json.

Run: ``python tests/ddp_scripts/lr_finder_ddp.py OUT_DIR`` (Lightning's ``strategy="ddp"`` re-launches
this script for rank 1). Each rank trains on its own shard (DistributedSampler), so the per-rank
losses differ; the LR finder averages them over ranks, so both ranks must record the same curve,
the same suggestion and write the same LR.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import OptimMixin
from lightning_optkit.callbacks import LRFinder


class Net(OptimMixin, L.LightningModule):
    def __init__(self, optim: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)
        self.local_losses: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.head(self.body(x)), y)
        self.local_losses.append(float(loss))
        return loss


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    data = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    model = Net({"optimizer": {"name": "adamw", "lr": 1e-3}, "scheduler": {"name": "warmup_cosine", "warmup": "10%"}})
    finder = LRFinder(num_steps=25, min_lr=1e-4, max_lr=10.0)
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[finder], default_root_dir=out_dir)
    trainer.fit(model, data)
    result = finder.results[0]
    record = {
        "rank": trainer.global_rank,
        "result": result.to_dict(),
        "written_lr": model.hparams["optim"]["optimizer"]["lr"],
        "local_losses": model.local_losses[: result.num_steps],
        "global_step": trainer.global_step,
        "weights": [float(p.detach().double().sum()) for p in model.parameters()],
    }
    Path(out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
    if torch.distributed.is_initialized():  # join gloo's threads before exit: without it an exit rarely aborts
        torch.distributed.destroy_process_group()  # ("terminate called without an active exception")
