"""The range of learning rates that train stably, with and without AutoClip.

Task: regression with a 3-layer tanh MLP (8 -> 64 -> 64 -> 1) on 512 samples whose first feature is
unnormalized (scale 3), trained by plain SGD and by SGD with momentum 0.9, 5 epochs of 16 steps, on
the CPU. Without clipping the loss turns NaN or blows up past a certain LR. Each cell is the mean
training loss over the last epoch (median over seeds); a run is *stable* when that is finite and
below half the loss of the first step. Columns: no clipping, ``AutoClip()`` (10th percentile),
``AutoClip(mode="agc")`` and, for reference, a fixed ``Trainer(gradient_clip_val=1.0)``.

Run:  python benchmarks/autoclip_lr_range.py [--seeds 3] [--momentum 0.0,0.9]
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit.callbacks import AutoClip

LRS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
CLIPS = ["none", "autoclip", "agc", "fixed_1.0"]
EPOCHS = 5


class Regressor(L.LightningModule):
    def __init__(self, lr: float, momentum: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
        self.lr, self.momentum = lr, momentum

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


class Losses(Callback):
    def __init__(self) -> None:
        self.values: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.values.append((trainer.current_epoch, float(outputs["loss"])))


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    x[:, 0] *= 3.0
    y = torch.tanh(x @ torch.randn(8, 1, generator=g) / 3) * 2
    return TensorDataset(x, y)


def run(lr: float, momentum: float, clip: str, seed: int = 0) -> tuple[float, float]:
    """(first-step loss, mean loss of the last epoch) of one fit."""
    torch.manual_seed(seed)
    model = Regressor(lr, momentum)
    losses = Losses()
    callbacks: list[Callback] = [losses]
    kwargs: dict[str, Any] = {}
    if clip == "autoclip":
        callbacks.append(AutoClip())
    elif clip == "agc":
        callbacks.append(AutoClip(mode="agc"))
    elif clip.startswith("fixed_"):
        kwargs["gradient_clip_val"] = float(clip.split("_", 1)[1])
    loader = DataLoader(dataset(), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=EPOCHS, callbacks=callbacks, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader)
    last = [v for e, v in losses.values if e == EPOCHS - 1]
    return losses.values[0][1], (sum(last) / len(last)) if last else math.nan


def stable(first: float, final: float) -> bool:
    return math.isfinite(final) and final < 0.5 * first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--momentum", default="0.0,0.9")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    for momentum in [float(m) for m in args.momentum.split(",")]:
        print(f"\nSGD, momentum {momentum:g}: mean loss of the last epoch (median of {args.seeds} seeds; "
              "* = stable in every seed)")
        print(f"{'lr':>6s} " + " ".join(f"{c:>12s}" for c in CLIPS))
        ok: dict[str, list[float]] = {c: [] for c in CLIPS}
        for lr in LRS:
            cells = []
            for clip in CLIPS:
                results = [run(lr, momentum, clip, seed) for seed in range(args.seeds)]
                final = statistics.median(f for _, f in results) if all(math.isfinite(f) for _, f in results) \
                    else math.nan
                good = all(stable(a, b) for a, b in results)
                if good:
                    ok[clip].append(lr)
                cells.append(f"{final:11.3g}{'*' if good else ' '}")
            print(f"{lr:6g} " + " ".join(cells))
        print("stable LRs: " + "; ".join(
            f"{c} {min(v):g}-{max(v):g}" if v else f"{c} none" for c, v in ok.items()))
        if ok["none"]:
            print("largest stable LR over no clipping's: " + ", ".join(
                f"{c} x{max(v) / max(ok['none']):g}" for c, v in ok.items() if c != "none" and v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
