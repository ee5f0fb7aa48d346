"""Tiny models and callbacks for the compatibility suite: the patterns real Lightning projects use.

Each model exists twice where that makes sense: as the project wrote it (its own
``configure_optimizers`` with torch optimizers and schedulers) and ported onto
:class:`~lightning_optkit.OptimMixin` (the same network, an ``optim:`` block instead). Both share
``Body``, so the same seed gives the same initial weights.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BackboneFinetuning, BaseFinetuning, Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import OptimMixin

FAST = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, deterministic=True)


class Body(L.LightningModule):
    """``backbone`` (Linear, BatchNorm1d, Linear, Linear) and ``head``; MSE regression 4 -> 1."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
                                      nn.Linear(8, 8))
        self.head = nn.Linear(8, 1)
        self.lrs: list[list[float]] = []  # per optimizer step: the LR of every group used by that step
        self.betas: list[list[float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.backbone(x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", nn.functional.mse_loss(self(x), y))

    def configure_callbacks(self) -> list[Callback]:
        return [_Recorder()]


class _Recorder(Callback):
    """Each optimizer step's LR and momentum per group into ``pl_module.lrs``/``betas`` (a callback, so an
    LR finder's test steps, which callbacks do not see, are not recorded)."""

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        pl_module.lrs.append([float(g["lr"]) for g in optimizer.param_groups])
        pl_module.betas.append([float(g["betas"][0]) if "betas" in g else float(g.get("momentum", 0.0))
                                for g in optimizer.param_groups])


class PlainNet(Body):
    """The project as written: Adam on the trainable parameters and a torch scheduler."""

    def __init__(self, lr: float = 0.01, scheduler: Any = None, interval: str = "epoch", **adam: Any) -> None:
        super().__init__()
        self.lr, self.scheduler, self.interval, self.adam = lr, scheduler, interval, adam

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr, **self.adam)
        if self.scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler(opt), "interval": self.interval}}


class PortedNet(OptimMixin, Body):
    """The same network ported onto the mixin: an ``optim`` block replaces ``configure_optimizers``."""

    def __init__(self, optim: dict) -> None:
        super().__init__()
        self.save_hyperparameters()


class MilestonesFinetuning(BaseFinetuning):
    """Lightning's ``computer_vision_fine_tuning.py`` pattern: unfreeze part of the backbone at each milestone."""

    def __init__(self, milestones: tuple[int, int] = (1, 2), train_bn: bool = False) -> None:
        super().__init__()
        self.milestones = milestones
        self.train_bn = train_bn

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self.freeze(modules=pl_module.backbone, train_bn=self.train_bn)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Any) -> None:
        if epoch == self.milestones[0]:
            self.unfreeze_and_add_param_group(modules=pl_module.backbone[-2:], optimizer=optimizer,
                                              train_bn=self.train_bn)
        elif epoch == self.milestones[1]:
            self.unfreeze_and_add_param_group(modules=pl_module.backbone[:-2], optimizer=optimizer,
                                              train_bn=self.train_bn)


class ResumableBackboneFinetuning(BackboneFinetuning):
    """``BackboneFinetuning`` that also resumes past its unfreeze epoch (Lightning issue #21901).

    Lightning's ``BaseFinetuning`` puts the added param groups back on resume but leaves their
    parameters frozen (``setup()`` froze them again), so a resumed run never trains them. This sets
    ``requires_grad`` again for the groups added after those ``configure_optimizers`` built, as the
    fix proposed upstream (Lightning PR #21902) does.
    """

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        restarting = self._restarting
        built = [len(opt.param_groups) for opt in trainer.optimizers]
        super().on_fit_start(trainer, pl_module)
        if restarting:
            for opt, n in zip(trainer.optimizers, built):
                for group in opt.param_groups[n:]:
                    for p in group["params"]:
                        p.requires_grad_(True)


class NaNBatch(Callback):
    """Replace the inputs of training batch ``at`` (counted over the whole run) with NaN, once."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.seen == self.at:
            batch[0].fill_(float("nan"))
        self.seen += 1


def loader(n: int = 48, batch_size: int = 8, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])).tanh()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
