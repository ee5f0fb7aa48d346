"""Schedules inside real Lightning Trainers: accumulation, GradientAccumulationScheduler, exact resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, GradientAccumulationScheduler, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from training_helpers import EpochSeededSampler, TinyClassifier

from lightning_optkit import ConfigError

Net = TinyClassifier


def _data(n: int = 64, batch_size: int = 4) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    ds = TensorDataset(x, y)
    return (DataLoader(ds, batch_size=batch_size, sampler=EpochSeededSampler(n)),
            DataLoader(ds, batch_size=16))


class LRRecorder(Callback):
    """LR of every group at each optimizer step (the LR that step uses), and scheduler step counts."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.steps = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.lrs.append([g["lr"] for g in optimizer.param_groups])
        self.steps += 1


def _trainer(tmp_path: Path | None = None, **kw: Any) -> L.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, deterministic=True, num_sanity_val_steps=0,
    )
    defaults.update(kw)
    if tmp_path is not None:
        defaults["default_root_dir"] = str(tmp_path)
    return L.Trainer(**defaults)


COSINE = {"optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
          "param_groups": [{"params": "backbone.*", "lr_scale": 0.1}],
          "scheduler": {"name": "warmup_cosine", "warmup": 4, "min_lr_ratio": 0.02}}


def _cosine(step: int, total: int, warm: int = 4, floor: float = 0.02) -> float:
    if step < warm:
        return step / warm
    p = min((step - warm) / (total - warm - 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))


@pytest.mark.parametrize("accumulation", ["fixed", "scheduler"])
def test_one_scheduler_step_per_optimizer_step(accumulation: str) -> None:
    L.seed_everything(0)
    rec = LRRecorder()
    callbacks: list[Callback] = [rec]
    kw: dict[str, Any] = {}
    if accumulation == "fixed":
        kw["accumulate_grad_batches"] = 3
        expected_total = 3 * math.ceil(16 / 3)  # 16 batches per epoch, last partial accumulation steps too
    else:
        callbacks.append(GradientAccumulationScheduler({0: 1, 1: 3, 2: 2}))
        expected_total = 16 + math.ceil(16 / 3) + 8
    model = Net(COSINE)
    trainer = _trainer(max_epochs=3, callbacks=callbacks, limit_val_batches=0, **kw)
    train, _ = _data()
    trainer.fit(model, train)
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.global_step == expected_total == rec.steps
    assert sched.last_epoch == expected_total  # exactly one scheduler step per optimizer step
    assert sched.lr_lambdas[0].total == expected_total
    for k, lrs in enumerate(rec.lrs):
        expected = _cosine(k, expected_total)
        assert lrs[0] == pytest.approx(0.001 * expected, rel=1e-12, abs=1e-18), k
        assert lrs[-1] == pytest.approx(0.01 * expected, rel=1e-12, abs=1e-18), k
    # the final LR is reached at the last optimizer step, not before or after
    assert rec.lrs[-1][-1] == pytest.approx(0.01 * 0.02, rel=1e-12)
    assert rec.lrs[-2][-1] > rec.lrs[-1][-1] * 1.0001


def test_max_steps_caps_the_schedule() -> None:
    L.seed_everything(0)
    rec = LRRecorder()
    trainer = _trainer(max_epochs=10, max_steps=21, callbacks=[rec], limit_val_batches=0)
    trainer.fit(Net(COSINE), _data()[0])
    assert rec.steps == 21 and trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0].total == 21
    assert rec.lrs[-1][-1] == pytest.approx(0.01 * 0.02, rel=1e-12)


def test_infinite_length_is_a_config_error() -> None:
    trainer = _trainer(max_epochs=-1, max_time={"seconds": 5}, limit_val_batches=0)
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs"):
        trainer.fit(Net(COSINE), _data()[0])


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


RESUME_CONFIGS = {
    "warmup_cosine": COSINE,
    "onecycle": {"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
                 "scheduler": {"name": "onecycle", "pct_start": 0.25}},
    "plateau": {"optimizer": {"name": "adam", "lr": 0.02},
                "scheduler": {"name": "plateau", "monitor": "val_loss", "warmup": 6, "patience": 0, "factor": 0.5,
                              "threshold": 0.05}},
}


@pytest.mark.parametrize("kind", sorted(RESUME_CONFIGS))
def test_resume_is_bitwise_exact(kind: str, tmp_path: Path) -> None:
    config = RESUME_CONFIGS[kind]
    train, val = _data()
    # uninterrupted 4 epochs, saving a checkpoint at the end of every epoch
    L.seed_everything(1)
    full_rec = LRRecorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    full = Net(config)
    trainer = _trainer(max_epochs=4, callbacks=[full_rec, ckpt], enable_checkpointing=True)
    trainer.fit(full, train, val)
    full_opt = trainer.optimizers[0].state_dict()

    # resume from the checkpoint written after epoch 2 into a fresh model and trainer
    L.seed_everything(123)  # a different seed: nothing may depend on it
    resumed_rec = LRRecorder()
    resumed = Net(config)
    trainer2 = _trainer(max_epochs=4, callbacks=[resumed_rec])
    trainer2.fit(resumed, train, val, ckpt_path=str(tmp_path / "ckpt" / "epoch=1.ckpt"))

    n_first = len(full_rec.lrs) - len(resumed_rec.lrs)
    assert n_first == 2 * 16
    assert resumed_rec.lrs == full_rec.lrs[n_first:]  # bitwise: exact float equality
    if kind == "plateau":
        assert min(x[0] for x in full_rec.lrs) < 0.02  # the plateau really reduced the LR
    a, b = _state(full), _state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    resumed_opt = trainer2.optimizers[0].state_dict()
    for pid, st in full_opt["state"].items():
        for key, val_ in st.items():
            other = resumed_opt["state"][pid][key]
            assert torch.equal(val_, other) if isinstance(val_, torch.Tensor) else val_ == other
    sd_full = trainer.lr_scheduler_configs[0].scheduler.state_dict()
    sd_res = trainer2.lr_scheduler_configs[0].scheduler.state_dict()
    assert sd_full == sd_res


def test_checkpoint_carries_the_config_and_loads_weights_only(tmp_path: Path) -> None:
    trainer = _trainer(max_epochs=1, limit_val_batches=0)
    model = Net(COSINE)
    trainer.fit(model, _data()[0])
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["optkit"]["optim_config"]["scheduler"]["name"] == "warmup_cosine"
    assert len(ckpt["optkit"]["config_hash"]) == 64
