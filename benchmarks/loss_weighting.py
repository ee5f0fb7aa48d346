"""Adaptive loss weights on a two-task problem whose losses differ in scale by about 100x.

Data: ``x ~ N(0, I_8)``; task ``a``: ``y = sin(x0 + x1) + 0.5 x2 x3`` (MSE of order 0.5), task ``b``:
the same kind of function of other inputs, times 10 (MSE of order 50). A shared trunk (8 -> 16,
tanh) feeds two linear heads, so the tasks compete for the trunk's 16 units. Each ``weighting`` of
the ``weighted_sum`` loss (``coef`` 1 for both) trains the same network from the same seed with a
real Lightning Trainer (Adam, lr 1e-2, 40 epochs of 32 steps); reported: each task's validation
MSE (mean over 3 seeds) and its ratio to fixed equal weights measured in the same run (< 1: better),
plus the final weights and the seconds per fit.

Run: ``python benchmarks/loss_weighting.py`` (about 2 minutes on 2 shared CPU cores: 15 fits).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import OptimMixin

RULES: dict[str, dict[str, Any]] = {
    "fixed": {},
    "inverse_std": {"window": 32},
    "dwa": {"window": 32, "temperature": 2.0},
    "gradnorm": {"shared_params": "trunk.*", "alpha": 1.5},
    "uncertainty": {},
}
SEEDS = (0, 1, 2)
EPOCHS = 40


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    ya = torch.sin(x[:, 0] + x[:, 1]) + 0.5 * x[:, 2] * x[:, 3]
    yb = 10 * (torch.sin(x[:, 4] - x[:, 5]) + 0.5 * x[:, 6] * x[:, 7])
    return TensorDataset(x, ya.unsqueeze(1), yb.unsqueeze(1))


class TwoTask(OptimMixin, L.LightningModule):
    """Shared trunk, two regression heads; the loss is ``loss_fn.forward_tasks`` over both."""

    def __init__(self, optim: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.head_a = nn.Linear(16, 1)
        self.head_b = nn.Linear(16, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, ya, yb = batch
        h = self.trunk(x)
        return self.loss_fn.forward_tasks([(self.head_a(h), ya), (self.head_b(h), yb)])

    @torch.no_grad()
    def task_mse(self, data: TensorDataset) -> list[float]:
        x, ya, yb = data.tensors
        h = self.trunk(x)
        return [float(nn.functional.mse_loss(self.head_a(h), ya)),
                float(nn.functional.mse_loss(self.head_b(h), yb))]


def _fit(rule: str, seed: int, train: TensorDataset, val: TensorDataset) -> tuple[list[float], list[float], float]:
    loss = {"name": "weighted_sum", "weighting": rule, **RULES[rule],
            "losses": [{"name": "mse", "label": "a"}, {"name": "mse", "label": "b"}]}
    torch.manual_seed(seed)
    model = TwoTask({"optimizer": {"name": "adam", "lr": 1e-2}, "loss": loss})
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    loader = DataLoader(train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    trainer.fit(model, loader)
    seconds = time.perf_counter() - start
    model.eval()
    return model.task_mse(val), model.loss_fn.weights.tolist(), seconds


def main() -> None:
    torch.set_num_threads(1)
    train, val = _data(1024, 100), _data(2048, 200)
    rows: dict[str, tuple[list[float], list[float], float]] = {}
    for rule in RULES:
        runs = [_fit(rule, seed, train, val) for seed in SEEDS]
        mse = [statistics.mean(r[0][t] for r in runs) for t in range(2)]
        weights = [statistics.mean(r[1][t] for r in runs) for t in range(2)]
        rows[rule] = (mse, weights, statistics.mean(r[2] for r in runs))
    base = rows["fixed"][0]
    print(f"two tasks, loss scales ~1:100, {EPOCHS} epochs x 32 steps, mean of {len(SEEDS)} seeds")
    print(f"{'weighting':<12} {'val mse a':>10} {'val mse b':>10} {'a / fixed':>10} {'b / fixed':>10} "
          f"{'w_a':>7} {'w_b':>7} {'s/fit':>6}")
    for rule, (mse, weights, seconds) in rows.items():
        print(f"{rule:<12} {mse[0]:>10.4f} {mse[1]:>10.3f} {mse[0] / base[0]:>10.3f} {mse[1] / base[1]:>10.3f} "
              f"{weights[0]:>7.3f} {weights[1]:>7.3f} {seconds:>6.1f}")


if __name__ == "__main__":
    main()
