"""NonFiniteGuard on real Trainers: NaN/inf injected into a batch, into a weight and through an LR spike."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import ConfigError
from lightning_optkit.callbacks import NonFiniteError, NonFiniteGuard

POLICIES = ["skip", "reduce_lr", "rollback", "stop", "raise"]


class Net(L.LightningModule):
    def __init__(self, opt: str = "sgd", lr: float = 0.05, fused: bool = False) -> None:
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 1)
        self.opt, self.lr, self.fused = opt, lr, fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.blocks(x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.opt == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=self.lr, fused=self.fused or None)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def data(n: int = 256, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True).tanh()), batch_size=batch_size)


def fit(tmp_path: Path, guard: NonFiniteGuard, *extra: Callback, model: L.LightningModule | None = None,
        **kw: Any) -> tuple[L.Trainer, L.LightningModule]:
    torch.manual_seed(0)
    model = model if model is not None else Net()
    kw.setdefault("max_steps", 30)
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    t = L.Trainer(accelerator="cpu", devices=1, callbacks=[guard, *extra], default_root_dir=str(tmp_path),
                  enable_progress_bar=False, enable_model_summary=False, **kw)
    t.fit(model, data())
    return t, model


def finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class NanBatch(Callback):
    """Puts a NaN (or inf) into the input batch at the given steps."""

    def __init__(self, *steps: int, value: float = float("nan")) -> None:
        self.steps, self.value = set(steps), value

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step in self.steps:
            batch[0][0, 0] = self.value


class NanWeight(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.blocks[0].weight[0, 0] = float("nan")


class LRSpike(Callback):
    """Multiplies every LR by ``factor`` for one optimizer step."""

    def __init__(self, step: int, factor: float = 1e6) -> None:
        self.step, self.factor = step, factor

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            for g in trainer.optimizers[0].param_groups:
                g["lr"] *= self.factor

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step - 1 == self.step:
            for g in trainer.optimizers[0].param_groups:
                g["lr"] /= self.factor


# -- every policy, every injection -------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("inject", ["batch", "weight", "lr_spike"])
def test_policies_recover(tmp_path: Path, policy: str, inject: str) -> None:
    injector = {"batch": NanBatch(12), "weight": NanWeight(12), "lr_spike": LRSpike(12)}[inject]
    guard = NonFiniteGuard(policy, snapshot_every_n_steps=5, spike_warmup=8, max_consecutive=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    if policy == "raise":
        with pytest.raises(NonFiniteError) as info:
            fit(tmp_path, guard, injector, ckpt, enable_checkpointing=True)
        assert info.value.event is not None and info.value.event.step >= 12
        assert "HINT" in str(info.value)
        return
    t, model = fit(tmp_path, guard, injector, ckpt, enable_checkpointing=True)
    assert finite(model)
    assert guard.n_events >= 1 and guard.events[0].step in (12, 13)
    kinds = set(guard.events[0].kinds)
    if inject == "batch":
        assert kinds == {"nonfinite_loss", "nonfinite_grad"}
    elif inject == "weight":
        assert "nonfinite_params" in kinds and "blocks.0" in guard.events[0].where
    else:
        assert kinds & {"loss_spike", "nonfinite_loss"}
    if policy == "stop":
        assert guard.stopped and t.global_step < 30
        last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
        assert last["global_step"] == t.global_step  # the checkpoint callback saved after the stop
        assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    else:
        assert t.global_step == 30 and not guard.stopped  # training continued to the end
    if policy == "reduce_lr":
        assert guard.lr_scale == 0.5
        assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.025)
    if policy == "rollback":
        assert guard.rollbacks >= 1
    if (inject == "weight" and policy != "rollback") or (inject == "lr_spike" and policy in ("skip", "reduce_lr")):
        # skipping cannot repair broken weights: the snapshot was restored (at once for non-finite weights,
        # after max_consecutive flagged steps for finite but ruined ones)
        assert guard.restores == 1


def test_raise_leaves_finite_weights(tmp_path: Path) -> None:
    model = Net()
    with pytest.raises(NonFiniteError, match=r"step 7 .*nonfinite loss"):
        fit(tmp_path, NonFiniteGuard("raise"), NanBatch(7), model=model)
    assert finite(model)


# -- exact semantics ---------------------------------------------------------------------------------


class Recorder(Callback):
    """Deep copies of weights and optimizer state just before and just after one optimizer step."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.before: Any = None
        self.after: Any = None

    @staticmethod
    def grab(trainer: Any, pl_module: Any) -> Any:
        return copy.deepcopy(pl_module.state_dict()), copy.deepcopy(trainer.optimizers[0].state_dict())

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            self.before = self.grab(trainer, pl_module)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step - 1 == self.step:
            self.after = self.grab(trainer, pl_module)


def same_state(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("fused", [False, True])
def test_skip_leaves_weights_and_optimizer_state_untouched(tmp_path: Path, fused: bool) -> None:
    rec = Recorder(9)
    guard = NonFiniteGuard("skip")
    t, model = fit(tmp_path, guard, NanBatch(9), rec, model=Net("adamw", 1e-2, fused=fused), max_steps=12)
    assert guard._skip_mode == ("found_inf" if fused else "host")
    assert same_state(rec.before, rec.after)  # weights, moments and Adam's step count
    assert guard.skipped_steps == 1 and t.global_step == 12  # the step still counts, once
    state = t.optimizers[0].state_dict()["state"][0]
    assert float(state["step"]) == 11  # 12 steps, one skipped


class SnapshotWatch(Callback):
    """Copies the state whenever the guard takes a snapshot; checks a rollback restores it bitwise."""

    def __init__(self, guard: NonFiniteGuard) -> None:
        self.guard = guard
        self.copies: dict[int, Any] = {}
        self.checked = 0
        self.rollbacks = 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        g = self.guard
        if g.rollbacks > self.rollbacks:
            self.rollbacks = g.rollbacks
            assert same_state(Recorder.grab(trainer, pl_module), self.copies[g.snapshot_step])
            self.checked += 1
        elif g.snapshot_step is not None and g.snapshot_step == trainer.global_step - 1:
            self.copies[g.snapshot_step] = Recorder.grab(trainer, pl_module)


def test_rollback_restores_snapshot_bitwise(tmp_path: Path) -> None:
    guard = NonFiniteGuard("rollback", snapshot_every_n_steps=4)
    watch = SnapshotWatch(guard)
    t, model = fit(tmp_path, guard, NanBatch(10, 21), watch, model=Net("adamw", 1e-2))
    assert guard.rollbacks == 2 and watch.checked == 2
    assert [e.actions for e in guard.events] == [["skip", "rollback"], ["skip", "rollback"]]
    assert guard.snapshot_bytes > 0 and t.global_step == 30 and finite(model)


def test_escalates_to_stop_after_consecutive_events(tmp_path: Path) -> None:
    guard = NonFiniteGuard("skip", max_consecutive=3)
    t, model = fit(tmp_path, guard, NanBatch(*range(5, 15)))
    assert guard.stopped and guard.n_events == 3 and t.global_step == 8
    assert guard.events[-1].actions == ["skip", "stop"] and "3 flagged steps in a row" in guard.events[-1].detail
    assert finite(model)


def test_reduce_lr_cooldown_and_schedule_composition(tmp_path: Path, regression_net: Any,
                                                    make_regression_loader: Any) -> None:
    optim = {"optimizer": {"name": "sgd", "lr": 0.1}, "scheduler": {"name": "warmup_cosine", "warmup": 4}}

    class LRs(Callback):
        def __init__(self) -> None:
            self.lrs: list[float] = []

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            self.lrs.append(optimizer.param_groups[0]["lr"])

    def run(*extra: Callback, guard: NonFiniteGuard) -> list[float]:
        lrs = LRs()
        torch.manual_seed(0)
        t = L.Trainer(accelerator="cpu", max_epochs=5, callbacks=[guard, *extra, lrs], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(tmp_path))
        t.fit(regression_net(optim), make_regression_loader(64, 4))  # 16 steps per epoch, 80 in all
        return lrs.lrs

    clean = run(guard=NonFiniteGuard("reduce_lr"))
    guard = NonFiniteGuard("reduce_lr", cooldown=20)
    hit = run(NanBatch(10, 15, 40), guard=guard)
    # step 10 reduces; step 15 is inside the cooldown; step 40 reduces again
    assert [e.actions for e in guard.events] == [["skip", "reduce_lr"], ["skip"], ["skip", "reduce_lr"]]
    for step in range(len(clean)):
        factor = 1.0 if step <= 10 else 0.5 if step <= 40 else 0.25
        assert hit[step] == pytest.approx(clean[step] * factor, rel=1e-9, abs=1e-15), step


def test_reduce_lr_survives_resume(tmp_path: Path, regression_net: Any, make_regression_loader: Any) -> None:
    optim = {"optimizer": {"name": "sgd", "lr": 0.1}, "scheduler": {"name": "warmup_cosine", "warmup": 4}}

    def trainer(guard: NonFiniteGuard, *extra: Callback, steps: int) -> L.Trainer:
        return L.Trainer(accelerator="cpu", max_steps=steps, callbacks=[guard, *extra], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                         enable_checkpointing=False)

    straight = regression_net(optim)
    t0 = trainer(NonFiniteGuard("reduce_lr"), NanBatch(5), steps=32)  # 16 steps per epoch
    t0.fit(straight, make_regression_loader(64, 4))
    class StopAt(Callback):  # same schedule length, interrupted at the end of the first epoch
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            trainer.should_stop = trainer.global_step == 16

    first, g1 = regression_net(optim), NonFiniteGuard("reduce_lr")
    t1 = trainer(g1, NanBatch(5), StopAt(), steps=32)
    t1.fit(first, make_regression_loader(64, 4))
    t1.save_checkpoint(tmp_path / "mid.ckpt")
    g2 = NonFiniteGuard("reduce_lr")
    t2 = trainer(g2, steps=32)
    resumed = regression_net(optim)
    t2.fit(resumed, make_regression_loader(64, 4), ckpt_path=tmp_path / "mid.ckpt")
    assert g2.lr_scale == 0.5 and g2.n_events == 1 and g2.events[0].step == 5
    # the reduction lives in the optimizer's and the scheduler's state: the resumed LR is the straight run's
    assert t2.optimizers[0].param_groups[0]["lr"] == t0.optimizers[0].param_groups[0]["lr"]
    assert t2.lr_scheduler_configs[0].scheduler.base_lrs == [0.05]


# -- detection ---------------------------------------------------------------------------------------


class LossSpike(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            batch[1].mul_(100.0)


def test_spike_detected_after_warmup_only(tmp_path: Path) -> None:
    guard = NonFiniteGuard("skip", spike_warmup=20)
    fit(tmp_path, guard, LossSpike(5), LossSpike(40), max_steps=60)
    assert [(e.step, e.kinds) for e in guard.events] == [(40, ["loss_spike"])]
    event = guard.events[0]
    assert event.loss_median is not None and event.loss > 2 * event.loss_median


def test_clean_run_has_no_events(tmp_path: Path) -> None:
    guard = NonFiniteGuard()
    fit(tmp_path, guard, max_steps=96, model=Net("adamw", 3e-3))
    assert guard.n_events == 0 and guard.skipped_steps == 0


def test_accumulation_one_event_per_optimizer_step(tmp_path: Path) -> None:
    class NanMicroBatch(Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == 7:  # second micro-batch of optimizer step 3
                batch[0][0, 0] = float("nan")

    guard = NonFiniteGuard("skip")
    t, _ = fit(tmp_path, guard, NanMicroBatch(), accumulate_grad_batches=2, max_steps=8)
    assert [(e.step, e.batch_idx) for e in guard.events] == [(3, 7)]
    assert guard.skipped_steps == 1 and t.global_step == 8


class SqrtNet(Net):
    """A finite loss whose backward is non-finite inside ``blocks.2`` (sqrt at 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.blocks[0](x))
        h = self.blocks[2](h)
        h = torch.sqrt(torch.relu(h) * (self.trainer.global_step != 6) + 0.0)  # exact zeros at step 6
        return self.head(h)


def test_names_the_module_where_backward_goes_nonfinite(tmp_path: Path) -> None:
    guard = NonFiniteGuard("skip")
    fit(tmp_path, guard, model=SqrtNet(), max_steps=10)
    (event,) = guard.events
    assert event.kinds == ["nonfinite_grad"] and event.step == 6
    assert "during backward" in event.where and "blocks.2" in event.where


def test_event_log_and_logged_metrics(tmp_path: Path) -> None:
    logger = CSVLogger(str(tmp_path), name="csv")
    guard = NonFiniteGuard("reduce_lr")
    t, _ = fit(tmp_path, guard, NanBatch(3, value=float("inf")), logger=logger, log_every_n_steps=1, max_steps=6)
    doc = json.loads((Path(logger.log_dir) / "nonfinite_events.json").read_text())
    assert doc["policy"] == "reduce_lr" and doc["n_events"] == 1 and doc["lr_scale"] == 0.5
    (event,) = doc["events"]
    # inf in the input saturates tanh: the loss stays finite, the gradient does not
    assert event["step"] == 3 and event["actions"] == ["skip", "reduce_lr"] and event["kinds"] == ["nonfinite_grad"]
    assert event["grad_norm"] in ("NaN", "Infinity")
    logger.save()
    with open(Path(logger.log_dir) / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("nonfinite/events")]
    assert rows and float(rows[0]["nonfinite/lr_scale"]) == 0.5


def test_state_dict_roundtrip(tmp_path: Path) -> None:
    guard = NonFiniteGuard("reduce_lr")
    t, _ = fit(tmp_path, guard, NanBatch(4, 9), max_steps=12)
    t.save_checkpoint(tmp_path / "g.ckpt")
    state = torch.load(tmp_path / "g.ckpt", weights_only=True)["callbacks"][guard.state_key]
    other = NonFiniteGuard("reduce_lr")
    other.load_state_dict(state)
    assert [e.step for e in other.events] == [4, 9]
    # the second event falls in the default 100-step cooldown
    assert (other.n_events, other.lr_scale, other.skipped_steps, other.last_reduction_step) == (2, 0.5, 2, 4)
    assert torch.equal(torch.nan_to_num(other._window, nan=-1.0), torch.nan_to_num(guard._window, nan=-1.0))
    assert NonFiniteGuard("skip").state_key != NonFiniteGuard("rollback").state_key


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"policy": "skp"}, r"NonFiniteGuard.policy: got 'skp'; expected one of 'skip'.*Did you mean 'skip'"),
    ({"lr_factor": 1.5}, r"NonFiniteGuard.lr_factor: got 1.5; expected a finite number in \(0, 1\)"),
    ({"spike_window": 2}, r"spike_window: got 2; expected an integer >= 8"),
    ({"max_consecutive": 0}, r"max_consecutive"),
    ({"event_log": "a/b.json"}, r"event_log.*file name"),
    ({"spike_ratio": 0.5}, r"spike_ratio"),
])
def test_argument_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        NonFiniteGuard(**kwargs)


def test_fp16_gradscaler_no_double_counting(tmp_path: Path) -> None:
    """With a GradScaler the scaler skips non-finite steps itself: the guard records the NaN loss as an
    event but does not skip (or count) the step a second time, and the scaler still lowers its scale."""
    from lightning.pytorch.plugins import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    guard = NonFiniteGuard("skip", detect_spikes=False)
    t, model = fit(tmp_path, guard, NanBatch(5), max_steps=12,
                   plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert guard._skip_mode == "scaler"
    assert [(e.step, e.kinds) for e in guard.events] == [(5, ["nonfinite_loss"])]
    assert guard.skipped_steps == 0 and scaler.get_scale() == 2.0**15 and t.global_step == 12
    assert finite(model)


def test_reduce_lr_scales_a_torch_schedule_floor(tmp_path: Path) -> None:
    """The guard's LR reduction is the finder's LR scaling: a torch ``CosineAnnealingLR``'s floor
    (``eta_min``) is scaled too, so the whole schedule runs at half its LRs after the event."""

    class CosineNet(Net):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30, eta_min=0.02)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    class LRs(Callback):
        def __init__(self) -> None:
            self.lrs: list[float] = []

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            self.lrs.append(optimizer.param_groups[0]["lr"])

    clean, hit = LRs(), LRs()
    fit(tmp_path, NonFiniteGuard("reduce_lr"), clean, model=CosineNet())
    guard = NonFiniteGuard("reduce_lr")
    fit(tmp_path, guard, NanBatch(10), hit, model=CosineNet())
    assert [e.actions for e in guard.events] == [["skip", "reduce_lr"]]
    assert len(hit.lrs) == len(clean.lrs) == 30
    for step in range(11, 30):
        assert hit.lrs[step] == pytest.approx(clean.lrs[step] * 0.5, rel=1e-9), step
