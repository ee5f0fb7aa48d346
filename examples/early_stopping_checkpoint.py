"""Early stopping and crash-safe checkpoints, then an exact resume after a crash.

1. Train a small classifier with ``EarlyStopping`` (patience counted after a 3-epoch warm-up,
   a relative ``min_delta``, EMA smoothing, best weights restored at the end) and ``Checkpoint``
   (top-2 by ``val_loss``, ``last.ckpt`` at every save, a save every epoch and every 25 optimizer
   steps, asynchronous writing). A callback raises in the middle of the fourth epoch, standing in
   for a crash; Checkpoint writes an emergency file on the way out.
2. ``Checkpoint.latest_valid`` picks the newest checkpoint whose sha256 verifies; ``fit`` resumes
   from it, in the middle of the epoch, and finishes.
3. The same training without the crash ends with bitwise the same weights.

Run:  python examples/early_stopping_checkpoint.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import OptimMixin
from lightning_optkit.callbacks import Checkpoint, EarlyStopping

OPTIM = {
    "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
    "scheduler": {"name": "warmup_cosine", "warmup": "1 epoch"},
    "loss": {"name": "cross_entropy", "label_smoothing": 0.05},
}


class Classifier(OptimMixin, L.LightningModule):
    def __init__(self, optim: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 4))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss_fn(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", self.loss_fn(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())


class Crash(L.Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            raise RuntimeError(f"simulated crash at step {self.at_step}")


def data() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 20, generator=g)
    y = (x[:, :4] @ torch.randn(4, 4, generator=g)).argmax(-1)
    train = TensorDataset(x[:1000], y[:1000])
    return DataLoader(train, batch_size=32, shuffle=True), DataLoader(TensorDataset(x[1000:], y[1000:]), batch_size=100)


def fit(folder: Path, *, crash_at: int | None = None, ckpt_path: str | None = None) -> tuple[Classifier, Any]:
    L.seed_everything(0, verbose=False)
    early = EarlyStopping("val_loss", patience=3, min_delta="0.5%", start_epoch=3, smoothing="ema",
                          restore_best_weights=True)
    ckpt = Checkpoint(dirpath=folder, monitor="val_loss", save_top_k=2, every_n_epochs=1, every_n_train_steps=25,
                      async_save=True)
    callbacks: list[L.Callback] = [early, ckpt] + ([Crash(crash_at)] if crash_at else [])
    trainer = L.Trainer(max_epochs=30, callbacks=callbacks, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    model = Classifier(OPTIM)
    train, val = data()
    trainer.fit(model, train, val, ckpt_path=ckpt_path)
    return model, early


def main() -> None:
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="optkit-example-"))
    folder = root / "checkpoints"
    try:
        fit(folder, crash_at=115)  # 32 steps per epoch: the 20th batch of the fourth epoch
    except RuntimeError as err:
        print(f"\n*** {err}")
    manifest = json.loads((folder / "checkpoints.json").read_text())
    print("manifest:", [(e["file"], e["step"], round(e["metric"], 4) if e["metric"] else None)
                        for e in manifest["entries"]])
    latest = Checkpoint.latest_valid(folder)
    print("resuming from", latest)
    resumed, early = fit(folder, ckpt_path=latest)
    print(f"stopped: {early.stop_reason} at epoch {early.stopped_epoch}; best val_loss {early.best_score:.4f} "
          f"at epoch {early.best_epoch} (weights restored)")

    uninterrupted, _ = fit(root / "again")
    same = all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), uninterrupted.state_dict().values()))
    print("resumed run == uninterrupted run, bitwise:", same)


if __name__ == "__main__":
    main()
