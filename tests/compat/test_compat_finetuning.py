"""Fine-tuning with param groups added during training (Lightning's BaseFinetuning), every schedule kind."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from compat_helpers import FAST, MilestonesFinetuning, PlainNet, PortedNet, assert_same_weights, loader
from lightning.pytorch.callbacks import BackboneFinetuning

EPOCHS = 5


def _optim(scheduler: dict, name: str = "adam") -> dict:
    return {"optimizer": {"name": name, "lr": 0.01}, "no_weight_decay": "none", "scheduler": scheduler}


def _fit(model: L.LightningModule, callbacks: list, tmp_path, epochs: int = EPOCHS) -> L.Trainer:
    torch.manual_seed(1)
    trainer = L.Trainer(max_epochs=epochs, callbacks=callbacks, default_root_dir=str(tmp_path), **FAST)
    trainer.fit(model, loader(), loader(seed=1))
    return trainer


def _pair(tmp_path, ours: dict, theirs, callback, interval: str = "epoch") -> tuple[PlainNet, PortedNet]:
    torch.manual_seed(0)
    plain = PlainNet(scheduler=theirs, interval=interval)
    _fit(plain, [callback()], tmp_path / "plain")
    torch.manual_seed(0)
    ported = PortedNet(_optim(ours))
    _fit(ported, [callback()], tmp_path / "ported")
    return plain, ported


@pytest.mark.parametrize("callback", [
    lambda: BackboneFinetuning(unfreeze_backbone_at_epoch=2, backbone_initial_ratio_lr=0.1),
    lambda: MilestonesFinetuning((2, 4)),
], ids=["BackboneFinetuning", "MilestonesFinetuning"])
def test_finetuning_equals_torch_multisteplr_bit_for_bit(tmp_path, callback) -> None:
    """The milestones coincide with the unfreezing epochs, as in Lightning's fine-tuning example."""
    plain, ported = _pair(tmp_path, {"name": "multistep", "milestones": ["2 epochs", "4 epochs"], "gamma": 0.1, "interval": "epoch"},
                          lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [2, 4], gamma=0.1), callback)
    assert len(plain.lrs[-1]) > 1  # groups were added
    assert ported.lrs == plain.lrs  # every group's LR at every step, bit for bit
    assert_same_weights(plain, ported)


def test_finetuning_equals_torch_steplr_per_step(tmp_path) -> None:
    plain, ported = _pair(tmp_path, {"name": "step", "step_size": 7, "gamma": 0.5, "interval": "step"},
                          lambda o: torch.optim.lr_scheduler.StepLR(o, 7, gamma=0.5),
                          lambda: BackboneFinetuning(unfreeze_backbone_at_epoch=1), interval="step")
    assert len(plain.lrs[-1]) == 2 and ported.lrs == plain.lrs
    assert_same_weights(plain, ported)


KINDS = [
    {"name": "constant"},
    {"name": "warmup_cosine", "warmup": 3},
    {"name": "cosine_restarts", "cycle": 7},
    {"name": "linear", "warmup": 2},
    {"name": "polynomial", "power": 2.0},
    {"name": "inverse_sqrt", "warmup": 3},
    {"name": "wsd", "warmup": 2, "decay": 10},
    {"name": "step", "step_size": 5, "gamma": 0.5},
    {"name": "multistep", "milestones": [8, 20], "gamma": 0.5},
    {"name": "exponential", "gamma": 0.97},
    {"name": "onecycle"},
    {"name": "plateau", "monitor": "val/loss", "patience": 0, "factor": 0.5, "warmup": 10},
]


@pytest.mark.parametrize("scheduler", KINDS, ids=[k["name"] for k in KINDS])
def test_added_groups_follow_every_schedule(tmp_path, scheduler) -> None:
    """A group added at an epoch start keeps its LR, then moves by its peers' factor (momentum too)."""
    torch.manual_seed(0)
    model = PortedNet(_optim(scheduler))
    _fit(model, [MilestonesFinetuning((1, 3))], tmp_path)
    per_epoch = len(model.lrs) // EPOCHS
    first = per_epoch  # the first step of epoch 1 uses the LR the group was added with
    assert [len(r) for r in model.lrs] == [1] * per_epoch + [2] * 2 * per_epoch + [3] * 2 * per_epoch
    assert model.lrs[first][1] == model.lrs[first][0] / 10  # unfreeze_and_add_param_group's default
    for step in range(first, len(model.lrs)):
        head, added = model.lrs[step][0], model.lrs[step][1]
        assert math.isclose(added, head / 10, rel_tol=1e-12, abs_tol=1e-30), (step, head, added)
    third = 3 * per_epoch
    for step in range(third, len(model.lrs)):
        head, added = model.lrs[step][0], model.lrs[step][2]
        ratio = model.lrs[third][2] / model.lrs[third][0]
        assert math.isclose(added, head * ratio, rel_tol=1e-12, abs_tol=1e-30), (step, head, added)
    if scheduler["name"] == "onecycle":  # momentum (Adam's beta1) cycles in the added groups too
        assert all(len(set(b)) == 1 for b in model.betas[first:])  # from the added group's first update on
        assert len({b[0] for b in model.betas}) > 3


def _ratios(lrs: list[list[float]], start: int, index: int) -> list[float]:
    return [r[index] / r[0] for r in lrs[start:]]


def test_lr_finder_at_the_unfreeze_epoch_scales_the_added_group_with_its_peers(tmp_path) -> None:
    from lightning_optkit.callbacks import LRFinder

    torch.manual_seed(0)
    model = PortedNet(_optim({"name": "warmup_cosine", "warmup": 4, "min_lr_ratio": 0.01}))
    finder = LRFinder(epochs=[2], num_steps=20, min_lr=1e-4, max_lr=1.0, verbose=False)
    _fit(model, [MilestonesFinetuning((2, 4)), finder], tmp_path)
    per_epoch = len(model.lrs) // EPOCHS
    result = finder.results[2]
    assert result.applied and result.recommended_lr is not None
    ratios = _ratios(model.lrs, 2 * per_epoch, 1)
    assert all(math.isclose(r, ratios[0], rel_tol=1e-12) for r in ratios)
    torch.manual_seed(0)
    plain = PortedNet(_optim({"name": "warmup_cosine", "warmup": 4, "min_lr_ratio": 0.01}))
    _fit(plain, [MilestonesFinetuning((2, 4))], tmp_path / "plain")
    scale = result.recommended_lr / 0.01
    for ours, theirs in zip(model.lrs[2 * per_epoch:], plain.lrs[2 * per_epoch:]):
        for a, b in zip(ours, theirs):  # every group: the schedule's LR times the finder's factor
            assert math.isclose(a, b * scale, rel_tol=1e-9), (a, b, scale)


def test_nonfinite_reduce_lr_after_the_addition_halves_every_group(tmp_path) -> None:
    from compat_helpers import NaNBatch

    from lightning_optkit.callbacks import NonFiniteGuard

    sched = {"name": "multistep", "milestones": [15], "gamma": 0.5}
    torch.manual_seed(0)
    ref = PortedNet(_optim(sched))
    _fit(ref, [MilestonesFinetuning((1, 3)), NonFiniteGuard("reduce_lr", detect_spikes=False, event_log=None)],
         tmp_path / "ref")
    torch.manual_seed(0)
    model = PortedNet(_optim(sched))
    guard = NonFiniteGuard("reduce_lr", detect_spikes=False, event_log=None)
    nan_at = 9  # epoch 1, after the first group was added
    _fit(model, [MilestonesFinetuning((1, 3)), NaNBatch(nan_at), guard], tmp_path / "nan")
    assert guard.lr_scale == 0.5
    for step in range(nan_at + 1, len(model.lrs)):
        for a, b in zip(model.lrs[step], ref.lrs[step]):
            assert math.isclose(a, 0.5 * b, rel_tol=1e-12), (step, a, b)


@pytest.mark.parametrize("scheduler", KINDS, ids=[k["name"] for k in KINDS])
def test_backbone_finetuning_sets_the_backbone_lr_each_epoch_under_every_schedule(tmp_path, scheduler) -> None:
    """BackboneFinetuning sets the backbone's LR at each epoch start; the schedule moves it with its peers."""
    torch.manual_seed(0)
    model = PortedNet(_optim(scheduler))
    _fit(model, [BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 1.5,
                                    backbone_initial_ratio_lr=0.1)], tmp_path)
    per_epoch = len(model.lrs) // EPOCHS
    starts = [e * per_epoch for e in range(1, EPOCHS)]
    assert model.lrs[starts[0]][1] == model.lrs[starts[0]][0] * 0.1
    for prev, start in zip(starts, starts[1:]):  # BackboneFinetuning's rule: x1.5 per epoch, at most the head's
        head, backbone = model.lrs[start][0], model.lrs[start][1]
        assert backbone == min(1.5 * model.lrs[prev][1], head), (start, backbone, head)
    for start in starts:  # within an epoch the backbone keeps its ratio to the head
        ratio = model.lrs[start][1] / model.lrs[start][0]
        for step in range(start, start + per_epoch):
            head, backbone = model.lrs[step]
            assert math.isclose(backbone, head * ratio, rel_tol=1e-12, abs_tol=1e-30), (step, head, backbone)
