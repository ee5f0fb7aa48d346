"""AutoClip: the same run at a learning rate where plain SGD blows up, with and without adaptive clipping.

Percentile AutoClip (Seetharaman et al. 2020) clips each step's gradient to the 10th percentile of the
gradient norms seen so far, so the threshold needs no tuning; AGC (Brock et al. 2021) clips per unit
relative to the weight norm. ``benchmarks/autoclip_lr_range.py`` sweeps the LR; this is one point of it.

Run:  python examples/autoclip.py
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit.callbacks import AutoClip


class Regressor(L.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def fit(callbacks: list) -> float:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    x[:, 0] *= 3.0  # one unnormalized feature: it sets the largest stable LR
    y = torch.tanh(x @ torch.randn(8, 1, generator=g) / 3) * 2
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)
    trainer = L.Trainer(max_epochs=5, callbacks=callbacks, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False)
    trainer.fit(Regressor(lr=0.5), loader)
    return float(trainer.callback_metrics["train_loss"])


def main() -> None:
    runs = {"no clipping": [], "AutoClip() (10th percentile)": [AutoClip()],
            "AutoClip(mode='agc')": [AutoClip(mode="agc")]}
    results = {name: fit(callbacks) for name, callbacks in runs.items()}
    print("\nSGD at lr=0.5, mean training loss of the last epoch:")
    for name, loss in results.items():
        print(f"  {name:30s} {loss:.4g}")


if __name__ == "__main__":
    main()
