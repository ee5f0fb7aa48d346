"""Resume through ``Checkpoint.latest_valid`` with every callback active, groups added by fine-tuning."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from compat_helpers import FAST, PortedNet, ResumableBackboneFinetuning, assert_same_weights, loader
from lightning.pytorch.callbacks import Callback

from lightning_optkit.callbacks import (
    AutoClip,
    Checkpoint,
    EarlyStopping,
    GradNormMonitor,
    LRFinder,
    NonFiniteGuard,
    TrainingDoctor,
)

EPOCHS = 5  # 6 optimizer steps each; the backbone joins at epoch 2 (step 12)
CRASH_AT = 21


class CrashAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class LRRecorder(Callback):
    """The LR of every group at each optimizer step (the LR finder's test steps are not hooks)."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.lrs.append([float(g["lr"]) for g in optimizer.param_groups])


def _callbacks(dirpath: Path, extra: list | None = None) -> list:
    return [
        ResumableBackboneFinetuning(unfreeze_backbone_at_epoch=2),
        LRFinder(num_steps=12, verbose=False),
        GradNormMonitor(),
        NonFiniteGuard(event_log=None),
        AutoClip(),
        TrainingDoctor(),
        EarlyStopping(monitor="val/loss", patience=50),
        Checkpoint(dirpath=dirpath, monitor="val/loss", save_top_k=2, every_n_train_steps=4,
                   filename="{epoch}-{step}-{val/loss:.4f}"),
        *(extra or []),
    ]


def _trainer(tmp_path: Path, callbacks: list) -> L.Trainer:
    kw = dict(FAST, enable_checkpointing=True)
    return L.Trainer(max_epochs=EPOCHS, callbacks=callbacks, default_root_dir=str(tmp_path), **kw)


SCHEDULES = [
    {"name": "multistep", "milestones": ["2 epochs", "4 epochs"], "gamma": 0.1, "interval": "epoch"},
    {"name": "warmup_cosine", "warmup": 4},
    {"name": "onecycle"},
    {"name": "plateau", "monitor": "val/loss", "patience": 0, "warmup": 16},
]


@pytest.mark.parametrize("scheduler", SCHEDULES, ids=[s["name"] for s in SCHEDULES])
def test_resume_from_latest_valid_is_exact_with_added_groups(tmp_path: Path, scheduler: dict) -> None:
    optim = {"optimizer": {"name": "adamw", "lr": 0.01}, "scheduler": scheduler}
    torch.manual_seed(0)
    ref, ref_lrs = PortedNet(optim), LRRecorder()
    _trainer(tmp_path / "ref", _callbacks(tmp_path / "ref_ckpt", [ref_lrs])).fit(ref, loader(), loader(seed=1))

    torch.manual_seed(0)
    crashed = PortedNet(optim)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(tmp_path / "run", _callbacks(tmp_path / "ckpt", [CrashAt(CRASH_AT)])).fit(
            crashed, loader(), loader(seed=1))
    path = Checkpoint.latest_valid(tmp_path / "ckpt")
    assert path is not None
    saved_step = torch.load(path, weights_only=False)["global_step"]
    assert 12 < saved_step <= CRASH_AT  # after the backbone was added

    torch.manual_seed(123)  # the resumed run must not depend on the fresh init
    resumed = PortedNet(optim)
    lrs = LRRecorder()
    callbacks = _callbacks(tmp_path / "ckpt", [lrs])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(tmp_path / "run", callbacks).fit(resumed, loader(), loader(seed=1), ckpt_path=path)
    assert not [w for w in caught if "earlier run" in str(w.message)]  # item 3: resuming is not "an earlier run"
    assert len(ref_lrs.lrs) == EPOCHS * 6 and len(ref_lrs.lrs[-1]) > 1
    assert lrs.lrs == ref_lrs.lrs[saved_step:]
    assert_same_weights(ref, resumed)
    ckpt = callbacks[-2]
    assert len(ckpt.best_k_models) == 2  # the resumed run keeps pruning its top-k
    named = [p for p in (tmp_path / "ckpt").glob("*.ckpt") if p.name != "last.ckpt" and "emergency" not in p.name]
    assert sorted(p.name for p in named) == sorted(Path(p).name for p in ckpt.best_k_models)
    # The resumed run saved after the resume (4 candidates for 2 places: pruning went on across the resume);
    # which two survive depends on the losses, so only their names and scores are checked.
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] > saved_step
    for p in named:  # "{epoch}-{step}-{val/loss:.4f}": the metric with a "/" gives its value in the name
        epoch, step, value = p.stem.split("-")
        score = {Path(k).name: float(v) for k, v in ckpt.best_k_models.items()}[p.name]
        assert 0 < float(value) < 10 and abs(float(value) - score) < 1e-4
