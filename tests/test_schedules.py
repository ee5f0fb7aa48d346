"""Schedules against torch's own schedulers and the documented formulas (to 1e-12 relative)."""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch
from torch.optim import lr_scheduler as L

from lightning_optkit.config import ConfigError, TrainingLength, load_config
from lightning_optkit.schedules import ScheduleFn, build_scheduler, resolved_settings

TOTAL = 240
LENGTH = TrainingLength(TOTAL, (24,) * 10)
REL = 1e-12


def _opt(lr: float = 0.1, groups: int = 1, **kw: float) -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr * (i + 1)} for i in range(groups)]
    return torch.optim.SGD(params, lr=lr, **kw)


def _ours(scheduler: dict, lr: float = 0.1, groups: int = 1, length: TrainingLength = LENGTH, **kw: float):
    cfg = load_config({"optimizer": {"name": "sgd", "lr": lr, **kw}, "scheduler": scheduler})
    opt = _opt(lr, groups, **kw)
    entries = build_scheduler(cfg.blocks()[0][1], opt, length)
    return opt, entries


def _trajectory(opt: torch.optim.Optimizer, sched, steps: int, metrics=None) -> list[list[float]]:
    out = []
    for i in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[i])
    return out


def _assert_close(a: list[list[float]], b: list[list[float]]) -> None:
    assert len(a) == len(b)
    for step, (x, y) in enumerate(zip(a, b)):
        for u, v in zip(x, y):
            assert abs(u - v) <= REL * max(abs(v), 1e-300), (step, u, v)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ({"name": "onecycle"}, lambda o: L.OneCycleLR(o, max_lr=[0.1, 0.2], total_steps=TOTAL, cycle_momentum=False)),
        ({"name": "onecycle", "three_phase": True, "pct_start": 0.25, "div_factor": 10, "final_div_factor": 100},
         lambda o: L.OneCycleLR(o, max_lr=[0.1, 0.2], total_steps=TOTAL, cycle_momentum=False, three_phase=True,
                                pct_start=0.25, div_factor=10, final_div_factor=100)),
        ({"name": "onecycle", "anneal_strategy": "linear"},
         lambda o: L.OneCycleLR(o, max_lr=[0.1, 0.2], total_steps=TOTAL, cycle_momentum=False,
                                anneal_strategy="linear")),
        ({"name": "step", "step_size": 17, "gamma": 0.5}, lambda o: L.StepLR(o, 17, 0.5)),
        ({"name": "step", "step_size": "1 epochs", "gamma": 0.7}, lambda o: L.StepLR(o, 24, 0.7)),
        ({"name": "multistep", "milestones": [30, 100, 101, 200], "gamma": 0.3},
         lambda o: L.MultiStepLR(o, [30, 100, 101, 200], 0.3)),
        ({"name": "exponential", "gamma": 0.98}, lambda o: L.ExponentialLR(o, 0.98)),
        ({"name": "warmup_cosine"}, lambda o: L.CosineAnnealingLR(o, T_max=TOTAL - 1)),
        ({"name": "cosine_restarts", "cycle": 20, "cycle_mult": 2},
         lambda o: L.CosineAnnealingWarmRestarts(o, T_0=20, T_mult=2)),
    ],
    ids=["onecycle", "onecycle3", "onecycle-linear", "step", "step-epochs", "multistep", "exponential",
         "cosine", "sgdr"],
)
def test_equals_torch(ours: dict, theirs) -> None:
    opt, entries = _ours(ours, groups=2)
    ref_opt = _opt(0.1, groups=2)
    ref = theirs(ref_opt)
    _assert_close(_trajectory(opt, entries[0]["scheduler"], TOTAL), _trajectory(ref_opt, ref, TOTAL))


def test_cosine_with_floor_equals_torch_eta_min() -> None:
    opt, entries = _ours({"name": "warmup_cosine", "min_lr": 0.001})
    ref_opt = _opt(0.1)
    ref = L.CosineAnnealingLR(ref_opt, T_max=TOTAL - 1, eta_min=0.001)
    _assert_close(_trajectory(opt, entries[0]["scheduler"], TOTAL), _trajectory(ref_opt, ref, TOTAL))


def test_onecycle_cycles_momentum_like_torch() -> None:
    cfg = load_config({"optimizer": {"name": "adamw", "lr": 0.01}, "scheduler": {"name": "onecycle"}})
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    o1, o2 = torch.optim.AdamW([p1], lr=0.01), torch.optim.AdamW([p2], lr=0.01)
    s1 = build_scheduler(cfg.blocks()[0][1], o1, LENGTH)[0]["scheduler"]
    s2 = L.OneCycleLR(o2, max_lr=0.01, total_steps=TOTAL)
    for _ in range(TOTAL):
        b1, b2 = o1.param_groups[0]["betas"][0], o2.param_groups[0]["betas"][0]
        assert abs(b1 - b2) <= REL * b2
        o1.step(), o2.step(), s1.step(), s2.step()


def test_plateau_after_warmup_equals_torch() -> None:
    warm = 10
    opt, entries = _ours({"name": "plateau", "monitor": "val_loss", "warmup": warm, "patience": 2,
                          "factor": 0.5, "cooldown": 1, "min_lr": 0.002}, groups=2)
    plateau = entries[0]["scheduler"]
    stepper = entries[1]["scheduler"]
    assert entries[0]["interval"] == "epoch" and entries[1]["interval"] == "step"
    # warm-up: linear from 0, per optimizer step, metrics ignored meanwhile
    seen = []
    for s in range(warm):
        seen.append(opt.param_groups[0]["lr"])
        assert math.isclose(seen[-1], 0.1 * s / warm, rel_tol=REL, abs_tol=1e-15)
        plateau.step(1.0)  # ignored during warm-up
        stepper.step()
    assert plateau.num_bad_epochs == 0 and opt.param_groups[0]["lr"] == 0.1
    metrics = [1.0, 0.9, 0.95, 0.96, 0.97, 0.97, 0.8, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.9, 0.9, 0.9] * 3
    ref_opt = _opt(0.1, groups=2)
    ref = L.ReduceLROnPlateau(ref_opt, patience=2, factor=0.5, cooldown=1, min_lr=[0.002, 0.004])
    _assert_close(_trajectory(opt, plateau, len(metrics), metrics), _trajectory(ref_opt, ref, len(metrics), metrics))
    # warm-up stepping after the warm-up never touches the LR again
    before = [g["lr"] for g in opt.param_groups]
    stepper.step()
    assert [g["lr"] for g in opt.param_groups] == before


def test_warmup_cosine_documented_formula() -> None:
    warm, floor = 24, 0.05
    opt, entries = _ours({"name": "warmup_cosine", "warmup": "1 epochs", "min_lr_ratio": floor})
    lrs = [x[0] for x in _trajectory(opt, entries[0]["scheduler"], TOTAL + 5)]
    n = TOTAL - warm
    for s, lr in enumerate(lrs):
        if s < warm:
            expected = s / warm
        else:
            p = min((s - warm) / (n - 1), 1.0)
            expected = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
        assert math.isclose(lr, 0.1 * expected, rel_tol=REL, abs_tol=1e-18), s
    assert lrs[warm] == pytest.approx(0.1) and lrs[TOTAL - 1] == pytest.approx(0.1 * floor, rel=REL)
    assert lrs[TOTAL - 2] > lrs[TOTAL - 1]


@pytest.mark.parametrize(
    ("spec", "checks"),
    [
        ({"name": "constant", "warmup": 10, "warmup_start": 0.1}, {0: 0.1, 5: 0.55, 10: 1.0, 239: 1.0}),
        ({"name": "linear", "warmup": 40}, {40: 1.0, 139.5: None, 239: 0.0}),
        ({"name": "polynomial", "power": 2.0, "min_lr_ratio": 0.1}, {0: 1.0, 239: 0.1}),
        ({"name": "inverse_sqrt", "warmup": 16}, {16: 1.0, 64: math.sqrt(16 / 64)}),
        ({"name": "wsd", "warmup": 20, "decay": "10%", "decay_shape": "sqrt"}, {20: 1.0, 215: 1.0, 239: 0.0}),
    ],
)
def test_other_schedules_shape(spec: dict, checks: dict) -> None:
    opt, entries = _ours(spec)
    lrs = [x[0] / 0.1 for x in _trajectory(opt, entries[0]["scheduler"], TOTAL)]
    for step, expected in checks.items():
        if expected is not None:
            assert lrs[int(step)] == pytest.approx(expected, rel=1e-12, abs=1e-15), step


def test_linear_midpoint_and_monotone() -> None:
    opt, entries = _ours({"name": "linear"})
    lrs = [x[0] for x in _trajectory(opt, entries[0]["scheduler"], TOTAL)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == 0.0 and lrs[0] == 0.1


def test_schedule_fn_is_picklable_and_state_dict_is_weights_only() -> None:
    opt, entries = _ours({"name": "onecycle"}, kw=None) if False else _ours({"name": "multistep", "milestones": [5, 9]})
    sched = entries[0]["scheduler"]
    for _ in range(7):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2, entries2 = _ours({"name": "multistep", "milestones": [5, 9]})
    entries2[0]["scheduler"].load_state_dict(state)
    assert entries2[0]["scheduler"].last_epoch == 7
    assert pickle.loads(pickle.dumps(ScheduleFn("warmup_cosine", 10, 2)))(5) == ScheduleFn("warmup_cosine", 10, 2)(5)


def test_plateau_state_dict_roundtrip_weights_only() -> None:
    opt, entries = _ours({"name": "plateau", "monitor": "val_loss", "warmup": 3, "patience": 0})
    plateau, stepper = entries[0]["scheduler"], entries[1]["scheduler"]
    for _ in range(3):
        stepper.step()
    for m in (1.0, 2.0, 3.0):
        plateau.step(m)
    buf = io.BytesIO()
    torch.save(plateau.state_dict(), buf)
    buf.seek(0)
    opt2, entries2 = _ours({"name": "plateau", "monitor": "val_loss", "warmup": 3, "patience": 0})
    entries2[0]["scheduler"].load_state_dict(torch.load(buf, weights_only=True))
    p2 = entries2[0]["scheduler"]
    assert (p2.optimizer_steps, p2.num_bad_epochs, p2.best, p2.plateau_lrs) == (
        plateau.optimizer_steps, plateau.num_bad_epochs, plateau.best, plateau.plateau_lrs)


def test_epoch_interval_counts_epochs() -> None:
    opt, entries = _ours({"name": "step", "interval": "epoch", "step_size": "3 epochs", "gamma": 0.5})
    assert entries[0]["interval"] == "epoch"
    lrs = [x[0] for x in _trajectory(opt, entries[0]["scheduler"], 10)]
    assert lrs == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.025] * 3 + [0.0125])


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ({"name": "warmup_cosine", "warmup": 240}, "scheduler.warmup"),
        ({"name": "warmup_cosine", "warmup": "10 epochs"}, "scheduler.warmup"),
        ({"name": "wsd", "decay": 500}, "scheduler.decay"),
        ({"name": "multistep", "warmup": 50, "milestones": [10, 60]}, "scheduler.milestones"),
        ({"name": "multistep", "milestones": [60, 10]}, "scheduler.milestones"),
        ({"name": "step", "step_size": 0}, "scheduler.step_size"),
    ],
)
def test_resolution_errors(spec: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _ours(spec)


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ({"name": "onecycle", "warmup": 10}, "scheduler.warmup"),
        ({"name": "plateau"}, "scheduler.monitor"),
        ({"name": "warmup_cosine", "monitor": "val_loss"}, "scheduler.monitor"),
        ({"name": "warmup_cosin"}, "scheduler.name"),
        ({"name": "step"}, "scheduler.step_size"),
        ({"name": "step", "step_size": 3, "gama": 0.5}, "scheduler.gama"),
        ({"name": "exponential", "gamma": 1.5}, "scheduler.gamma"),
        ({"name": "onecycle", "min_lr": 1e-5}, "scheduler.min_lr"),
        ({"name": "warmup_cosine", "min_lr": 1.0}, "scheduler.min_lr"),
        ({"name": "step", "step_size": 5, "interval": "epoch"}, "scheduler.step_size"),
        ({"name": "torch.optim.lr_scheduler.StepLR", "step_sise": 5}, "scheduler.step_sise"),
        ({"name": "torch.optim.lr_scheduler.StepLR", "step_size": 5, "warmup": 3}, "scheduler.warmup"),
        ({"name": "torch.nn.Linear"}, "scheduler.name"),
    ],
)
def test_load_time_errors(spec: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        load_config({"optimizer": {"name": "sgd", "lr": 0.1}, "scheduler": spec})
    if spec["name"] == "warmup_cosin" or key.endswith(".gama"):
        assert "Did you mean" in str(info.value)


def test_dotted_path_scheduler() -> None:
    opt, entries = _ours({"name": "torch.optim.lr_scheduler.StepLR", "step_size": 5, "gamma": 0.5})
    assert isinstance(entries[0]["scheduler"], L.StepLR) and entries[0]["interval"] == "step"


def test_resolved_settings_report() -> None:
    cfg = load_config({"optimizer": {"name": "sgd", "lr": 0.1},
                       "scheduler": {"name": "wsd", "warmup": "5%", "decay": "1 epochs", "min_lr": 0.01}})
    r = resolved_settings(cfg.blocks()[0][1], LENGTH)
    assert (r["warmup"], r["params"]["decay_steps"], r["floor"]) == (12, 24, pytest.approx(0.1))


@pytest.mark.parametrize("scheduler", [{"name": "warmup_cosine", "warmup": 10}, {"name": "onecycle"},
                                       {"name": "multistep", "milestones": [30, 100], "gamma": 0.3}],
                         ids=["cosine", "onecycle", "multistep"])
def test_a_group_added_mid_run_resumes_exactly_from_the_state_dict(scheduler: dict) -> None:
    """What a resumed fit does: configure_optimizers builds one group, the fine-tuning callback puts the
    added one back, then the optimizer and scheduler states load; the LRs continue as in the first run."""
    opt, entries = _ours(scheduler)
    sched = entries[0]["scheduler"]
    _trajectory(opt, sched, 20)
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": opt.param_groups[0]["lr"] / 10})
    _trajectory(opt, sched, 40)
    opt_state, sched_state = copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict())
    torch.save(sched_state, buf := io.BytesIO())
    buf.seek(0)
    sched_state = torch.load(buf, weights_only=True)

    opt2, entries2 = _ours(scheduler)
    sched2 = entries2[0]["scheduler"]
    opt2.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.0})
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(sched_state)
    ahead = _trajectory(opt, sched, TOTAL - 60)
    assert _trajectory(opt2, sched2, TOTAL - 60) == ahead
    assert all(math.isclose(b / a, ahead[0][1] / ahead[0][0], rel_tol=1e-12) for a, b in ahead if a > 0)


def test_a_state_saved_before_groups_were_followed_still_loads() -> None:
    opt, entries = _ours({"name": "warmup_cosine", "warmup": 10})
    sched = entries[0]["scheduler"]
    _trajectory(opt, sched, 15)
    state = {k: v for k, v in sched.state_dict().items() if k not in ("anchor_steps", "anchor_factors")}
    opt2, entries2 = _ours({"name": "warmup_cosine", "warmup": 10})
    opt2.load_state_dict(opt.state_dict())
    entries2[0]["scheduler"].load_state_dict(state)
    assert _trajectory(opt2, entries2[0]["scheduler"], 30) == _trajectory(opt, sched, 30)
