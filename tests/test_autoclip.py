"""AutoClip on real Trainers: percentile clipping against a reference, AGC against a reference, resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import ConfigError
from lightning_optkit.callbacks import AutoClip
from lightning_optkit.callbacks._grad_stats import grad_stats


class Net(L.LightningModule):
    def __init__(self, lr: float = 0.05, opt: str = "sgd") -> None:
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 1)
        self.lr, self.opt = lr, opt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.blocks(x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.opt == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def data(n: int = 128, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True).tanh()), batch_size=batch_size)


def make_trainer(tmp_path: Path, *callbacks: Callback, **kw: Any) -> L.Trainer:
    kw.setdefault("max_steps", 20)
    kw.setdefault("logger", False)
    return L.Trainer(accelerator="cpu", devices=1, callbacks=list(callbacks), default_root_dir=str(tmp_path),
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kw)


class Clipped(Callback):
    """After AutoClip: the pre-clip total norm (from the cache) and the total norm actually left."""

    def __init__(self) -> None:
        self.pre: list[float] = []
        self.post: list[float] = []
        self.unit_before: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.pre.append(float(grad_stats(trainer, optimizer).total(2.0)))
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.post.append(float(torch.nn.utils.get_total_norm(grads)))


class Before(Callback):
    """Before AutoClip: a copy of every gradient (for the AGC reference)."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.named_parameters()})
        self.weights.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})


@pytest.mark.parametrize("percentile", [10.0, 50.0, 100.0])
def test_percentile_clips_to_the_history_percentile(tmp_path: Path, percentile: float) -> None:
    seen = Clipped()
    clip = AutoClip(percentile=percentile, history_size=8)
    make_trainer(tmp_path, clip, seen, max_steps=20).fit(Net(lr=0.2), data())
    for step, (pre, post) in enumerate(zip(seen.pre, seen.post)):
        history = seen.pre[max(0, step - 7): step + 1]  # the ring holds the last 8 norms, this one included
        k = max(1, math.ceil(percentile / 100 * len(history)))
        threshold = sorted(history)[k - 1]
        assert post == pytest.approx(min(pre, threshold), rel=1e-5), step
    if percentile == 100.0:
        assert seen.post == pytest.approx(seen.pre, rel=1e-6)  # never clips
    assert clip.steps == 20


def _agc_reference(g: torch.Tensor, w: torch.Tensor, lam: float, eps: float) -> torch.Tensor:
    if w.ndim > 1:
        wn = w.flatten(1).norm(dim=1).clamp_min(eps).view(-1, *[1] * (w.ndim - 1))
        gn = g.flatten(1).norm(dim=1).view(-1, *[1] * (w.ndim - 1))
    else:
        wn, gn = w.norm().clamp_min(eps), g.norm()
    limit = lam * wn
    return torch.where(gn > limit, g * limit / gn.clamp_min(1e-6), g)


@pytest.mark.parametrize(("exclude", "excluded"), [("auto", {"head.weight", "head.bias"}),
                                                   (["blocks.0.*"], {"blocks.0.weight", "blocks.0.bias"}),
                                                   ((), set())])
def test_agc_matches_unitwise_reference(tmp_path: Path, exclude: Any, excluded: set[str]) -> None:
    before, after = Before(), Before()
    clip = AutoClip(mode="agc", clip_factor=0.02, exclude=exclude)
    make_trainer(tmp_path, before, clip, after, max_steps=6).fit(Net(lr=0.2), data())
    assert set(clip.excluded_names) == excluded
    clipped_any = False
    for g_before, w, g_after in zip(before.grads, before.weights, after.grads):
        for name, g in g_before.items():
            expected = g if name in excluded else _agc_reference(g, w[name], 0.02, 1e-3)
            assert torch.allclose(g_after[name], expected, rtol=1e-5, atol=1e-8), name
            clipped_any |= not torch.equal(g_after[name], g)
    assert clipped_any


def test_conflict_with_trainer_gradient_clip_val(tmp_path: Path) -> None:
    t = make_trainer(tmp_path, AutoClip(), gradient_clip_val=1.0)
    with pytest.raises(ConfigError, match=r"Trainer.gradient_clip_val: got 1.0.*HINT: drop gradient_clip_val"):
        t.fit(Net(), data())


def test_logs_threshold_and_fraction(tmp_path: Path) -> None:
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    clip = AutoClip(percentile=10)
    make_trainer(tmp_path, clip, logger=logger, log_every_n_steps=5, max_steps=10).fit(Net(lr=0.2), data())
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"autoclip/threshold", "autoclip/clip_coef", "autoclip/clipped_fraction"} <= tags
    assert [e.step for e in acc.Scalars("autoclip/threshold")] == [4, 9]
    assert 0.0 <= clip.last["autoclip/clipped_fraction"] <= 1.0


def test_resume_continues_exactly(tmp_path: Path) -> None:
    """The norm history is in the checkpoint: 1 + 1 epochs equal 2 straight epochs, bitwise."""

    def run(model: Net, epochs: int, clip: AutoClip, ckpt_path: Path | None = None) -> None:
        L.Trainer(accelerator="cpu", max_epochs=epochs, callbacks=[clip, ModelCheckpoint(tmp_path / "ck", save_last=True)],
                  logger=False, enable_progress_bar=False, enable_model_summary=False,
                  default_root_dir=str(tmp_path)).fit(model, data(), ckpt_path=ckpt_path)

    torch.manual_seed(0)
    straight = Net(opt="adamw", lr=0.05)
    run(straight, 2, AutoClip(history_size=16))
    torch.manual_seed(0)
    run(Net(opt="adamw", lr=0.05), 1, AutoClip(history_size=16))
    clip = AutoClip(history_size=16)
    resumed = Net(opt="adamw", lr=0.05)
    run(resumed, 2, clip, tmp_path / "ck" / "last.ckpt")
    assert clip.steps == 32
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_stable_lr_range_widens(load_benchmark) -> None:
    """The short version of benchmarks/autoclip_lr_range.py: at lr=0.5 plain SGD blows up, AutoClip trains."""
    bench = load_benchmark("autoclip_lr_range")
    first, final = bench.run(0.5, 0.0, "none")
    assert not bench.stable(first, final)
    first, final = bench.run(0.5, 0.0, "autoclip")
    assert bench.stable(first, final)
    first, final = bench.run(0.2, 0.0, "none")  # and below the edge the plain run is fine
    assert bench.stable(first, final)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"mode": "adaptive"}, r"AutoClip.mode: got 'adaptive'; expected one of 'percentile', 'agc'"),
    ({"percentile": 0}, r"AutoClip.percentile: got 0; expected a finite number in \(0, 100\]"),
    ({"history_size": 0}, r"history_size"),
    ({"clip_factor": -1.0}, r"clip_factor"),
    ({"exclude": [1]}, r"AutoClip.exclude"),
])
def test_argument_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AutoClip(**kwargs)


def test_state_key_distinguishes_instances() -> None:
    assert AutoClip(percentile=10).state_key != AutoClip(percentile=25).state_key
    assert AutoClip(mode="agc").state_key != AutoClip().state_key
