"""TrainingDoctor's rules as pure functions over recorded series and schedule facts (no Trainer)."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError

import pytest
import torch
from torch import nn

from lightning_optkit.callbacks import CODES, DEFAULT_THRESHOLDS, Diagnosis, TrainingDoctor
from lightning_optkit.callbacks._doctor_recorder import Series
from lightning_optkit.callbacks._doctor_rules import (
    nonfinite,
    overfitting,
    schedules_at_end,
    schedules_at_start,
    zero_gradients,
)
from lightning_optkit.callbacks._doctor_schedule import (
    ScheduleFacts,
    ScheduleFn,
    describe_schedule,
    schedule_facts,
)

TH = dict(DEFAULT_THRESHOLDS)


class _Config:
    """The four fields of Lightning's ``LRSchedulerConfig`` that the facts read."""

    def __init__(self, scheduler: object, interval: str = "step", monitor: str | None = None) -> None:
        self.scheduler, self.interval, self.frequency, self.monitor = scheduler, interval, 1, monitor


def _series(losses: list[float], lr: float = 1e-3) -> Series:
    s = Series()
    for i, v in enumerate(losses):
        s.add(i, v, 1.0, lr, [])
    return s


def test_public_face_exports_the_result_type_and_codes() -> None:
    assert set(CODES) >= {"NONFINITE_LOSS", "UNDERFITTING"} and Diagnosis.__name__ == "Diagnosis"


def test_nonfinite_finds_the_first_bad_step_and_counts_all() -> None:
    f = nonfinite(_series([1.0] * 10 + [math.nan] * 3))
    assert f is not None and f.code == "NONFINITE_LOSS" and (f.first, f.last) == (10, 12)
    assert f.evidence["nonfinite_steps"] == 3 and nonfinite(_series([1.0] * 10)) is None


def test_zero_gradients_waits_for_enough_steps() -> None:
    assert zero_gradients({"w": False, "b": True}, 5, [0, 4], TH) is None
    f = zero_gradients({"w": False, "b": True}, 50, [0, 49], TH)
    assert f is not None and f.evidence["parameters"] == ["w"] and f.last == 49


def test_overfitting_actions_add_replace_drop() -> None:
    val = [(10, 0, 1.0, 0.9), (20, 1, 0.8, 0.6), (30, 2, 0.9, 0.4), (40, 3, 1.1, 0.2)]
    action, found = overfitting(val, "val_loss", TH, None)
    assert action == "add" and found.code == "OVERFITTING" and found.first == 20  # type: ignore[union-attr]
    old = found.diagnosis()  # type: ignore[union-attr]
    action, replaced = overfitting([*val, (50, 4, 0.85, 0.1)], "val_loss", TH, old)
    assert action == "replace" and isinstance(replaced, Diagnosis) and replaced.evidence["val_peak"] == 1.1
    assert overfitting([*val, (50, 4, 0.7, 0.1)], "val_loss", TH, old) == ("drop", None)
    assert overfitting(val[:2], "val_loss", TH, None) == ("keep", None)


def test_facts_of_real_torch_schedulers() -> None:
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    cosine = describe_schedule(_Config(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40), "epoch"))
    assert (cosine.kind, cosine.horizon, cosine.interval, cosine.stepped) == ("CosineAnnealingLR", 40, "epoch", True)
    plateau = describe_schedule(_Config(torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=3), "epoch", "val_loss"))
    assert plateau.plateau and plateau.patience == 3 and plateau.start_lrs == (0.1,) and not plateau.stepped
    with pytest.raises(FrozenInstanceError):  # frozen: the rules return new facts instead of editing them
        plateau.mismatch = True  # type: ignore[misc]


def test_interval_mismatch_marks_the_schedule_and_silences_the_end_rules() -> None:
    facts = [ScheduleFacts("CosineAnnealingLR", "epoch", horizon=1000)]
    found, marked = schedules_at_start(facts, 1000, 10, TH)
    assert [f.code for f in found] == ["SCHEDULE_INTERVAL_MISMATCH"] and marked[0].mismatch
    assert not facts[0].mismatch  # the input is left as it was
    flat = _series([1.0 / (i + 1) for i in range(50)], lr=0.1)
    assert [f.code for f in schedules_at_end(flat, TH, facts, 1000, {}, set())] == ["LR_NEVER_DECAYS"]
    assert schedules_at_end(flat, TH, marked, 1000, {}, set()) == []


def test_plateau_that_never_fired_on_a_real_scheduler() -> None:
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=10)
    for _ in range(5):
        sched.step(1.0)
    facts = [describe_schedule(_Config(sched, "epoch", "val_loss"))]
    found = schedules_at_end(_series([1.0] * 20, lr=0.1), TH, facts, None, {"val_loss": [1.0] * 5}, set())
    assert [f.code for f in found] == ["PLATEAU_NEVER_FIRES"] and found[0].evidence["checks"] == 5
    assert schedules_at_end(_series([1.0] * 20, lr=0.1), TH, facts, None, {}, {"PLATEAU_NEVER_FIRES"}) == []


def test_doctor_schedules_accept_mappings() -> None:
    d = TrainingDoctor()
    d.schedules = [{"kind": "LambdaLR", "interval": "step", "fn": {"kind": "cosine", "warmup": 5, "total": 50}}]
    (facts,) = d.schedules
    assert isinstance(facts, ScheduleFacts) and facts == ScheduleFacts("LambdaLR", "step", fn=ScheduleFn("cosine", 5, 50))
    assert schedule_facts(facts) is facts
