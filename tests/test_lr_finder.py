"""The LR finder in real Lightning Trainers: exact restore, re-runs mid-training, accumulation, ratios, schedules."""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import ConfigError, OptimMixin
from lightning_optkit.callbacks import LRFinder
from lightning_optkit.lr_finder import LRFinderResult, RangeTestSettings, find_lr, run_range_test, suggest_all

QUIET = dict(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False)


class Base(L.LightningModule):
    """Classifier 6 -> 3 with BatchNorm and Dropout; counts and records what the test does."""

    def __init__(self, optim: dict[str, Any] | None = None, fail_after: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1))
        self.head = nn.Linear(16, 3)
        self.calls = 0
        self.group_lrs: list[list[float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.calls += 1
        if self.hparams.fail_after is not None and self.calls > self.hparams.fail_after:
            raise RuntimeError("training_step failed on purpose")
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.group_lrs.append([g["lr"] for g in optimizer.param_groups])


class Net(OptimMixin, Base):
    """Base with its optimizer from the ``optim`` config."""


def _data(n: int = 192, batch_size: int = 16, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    train = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    return train, DataLoader(TensorDataset(x[:32], y[:32]), batch_size=16)


ADAMW = {"optimizer": {"name": "adamw", "lr": 1e-3}}
FINDER = dict(num_steps=30, min_lr=1e-5, max_lr=10.0)


def _fit(tmp_path: Path, optim: dict[str, Any], callbacks: list[Callback], max_epochs: int = 2, seed: int = 0,
         logger: Any = False, **trainer_kw: Any) -> tuple[Net, L.Trainer]:
    L.seed_everything(seed, verbose=False)
    model = Net(optim)
    train, val = _data()
    trainer = L.Trainer(max_epochs=max_epochs, logger=logger, callbacks=callbacks, default_root_dir=tmp_path,
                        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                        **{**QUIET, **trainer_kw})
    trainer.fit(model, train, val)
    return model, trainer


def _tensors_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class HookCounter(Callback):
    """Counts every hook a callback gets and carries state in checkpoints."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for opt in trainer.optimizers:  # as gradient-statistics callbacks do
            opt.register_step_post_hook(lambda *args: self._count("optimizer_step_post_hook"))

    def on_before_backward(self, *args: Any) -> None:
        self._count("on_before_backward")

    def on_before_optimizer_step(self, *args: Any) -> None:
        self._count("on_before_optimizer_step")

    def on_train_batch_end(self, *args: Any) -> None:
        self._count("on_train_batch_end")

    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts)}


# -- no trace ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", [None, {"name": "warmup_cosine", "warmup": "10%"}])
def test_a_run_with_the_finder_not_applied_is_bitwise_the_run_without_it(tmp_path, scheduler):
    """Weights, logged metrics, counters and other callbacks' state are those of a run without the test.

    Without a schedule the training data is first set up by the finder at fit start (with one, by
    ``configure_optimizers``): both orders must leave the run untouched.
    """
    optim = {**ADAMW, "scheduler": scheduler} if scheduler else ADAMW
    runs = []
    for name, extra in (("plain", []), ("finder", [LRFinder(apply=False, val_batches=2, epochs=[0, 1], **FINDER)])):
        counter = HookCounter()
        ckpt = ModelCheckpoint(dirpath=tmp_path / name / "ckpt", monitor="val_loss")
        callbacks = [counter, ckpt, EarlyStopping("val_loss", patience=3), *extra]
        model, trainer = _fit(tmp_path / name, optim, callbacks, logger=CSVLogger(tmp_path / name, name="logs"))
        metrics = (tmp_path / name / "logs" / "version_0" / "metrics.csv").read_text()
        runs.append((model, trainer, counter, ckpt, metrics, extra))
    (m1, t1, c1, k1, csv1, _), (m2, t2, c2, k2, csv2, (finder,)) = runs
    assert set(finder.results) == {0, 1} and all(r.num_steps > 5 for r in finder.results.values())
    assert all(not r.applied for r in finder.results.values())
    assert _tensors_equal(m1.state_dict(), m2.state_dict())
    assert csv1 == csv2
    assert t1.global_step == t2.global_step
    assert t1.fit_loop.state_dict() == t2.fit_loop.state_dict()
    assert c1.counts == c2.counts
    assert float(k1.best_model_score) == float(k2.best_model_score)
    assert m1.hparams["optim"] == m2.hparams["optim"]
    # the module's own hooks did run during the test (it trained through the strategy)
    assert len(m2.group_lrs) == len(m1.group_lrs) + sum(r.num_steps for r in finder.results.values())


class Probe(Callback):
    """Runs a range test from inside a hook and records the state just before and after it."""

    def __init__(self, settings: RangeTestSettings, epoch: int = 1) -> None:
        self.settings, self.epoch = settings, epoch
        self.before: dict[str, Any] = {}
        self.after: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.result: LRFinderResult | None = None

    @staticmethod
    def capture(trainer: L.Trainer) -> dict[str, Any]:
        module = trainer.lightning_module
        return {
            "model": {k: v.clone() for k, v in module.state_dict().items()},
            "grads": [None if p.grad is None else p.grad.clone() for p in module.parameters()],
            "opt": copy.deepcopy([o.state_dict() for o in trainer.optimizers]),
            "sched": copy.deepcopy([c.scheduler.state_dict() for c in trainer.lr_scheduler_configs]),
            "rng": (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()),
            "loop": copy.deepcopy(trainer.fit_loop.state_dict()),
            "global_step": trainer.global_step,
            "modes": [m.training for m in module.modules()],
            "callback_metrics": dict(trainer.callback_metrics),
        }

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != self.epoch:
            return
        self.before = self.capture(trainer)
        try:
            self.result = run_range_test(trainer, self.settings)
        except RuntimeError as exc:
            self.error = exc
        self.after = self.capture(trainer)


def _assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert _tensors_equal(a["model"], b["model"])
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(a["grads"], b["grads"]))
    for sa, sb in zip(a["opt"], b["opt"]):
        assert sa["param_groups"] == sb["param_groups"]
        assert sa["state"].keys() == sb["state"].keys()
        for p in sa["state"]:
            for key, value in sa["state"][p].items():
                other = sb["state"][p][key]
                assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    assert a["sched"] == b["sched"]
    assert a["rng"][0] == b["rng"][0] and np.array_equal(a["rng"][1], b["rng"][1]) and torch.equal(a["rng"][2], b["rng"][2])
    assert a["loop"] == b["loop"] and a["global_step"] == b["global_step"] and a["modes"] == b["modes"]
    assert a["callback_metrics"].keys() == b["callback_metrics"].keys()


@pytest.mark.parametrize("snapshot", ["memory", "disk"])
def test_every_tensor_rng_and_counter_is_restored_bitwise_mid_training(tmp_path, snapshot):
    optim = {**ADAMW, "scheduler": {"name": "onecycle"}}
    probe = Probe(RangeTestSettings(snapshot=snapshot, snapshot_dir=str(tmp_path / "snap"), **FINDER))
    _fit(tmp_path, optim, [probe], max_epochs=2)
    assert probe.result is not None and probe.result.num_steps > 5
    assert probe.before["opt"][0]["state"]  # Adam moments existed: the test ran from a trained state
    _assert_same_state(probe.before, probe.after)
    assert not (tmp_path / "snap").exists() or list((tmp_path / "snap").iterdir()) == []


class Arm(Callback):
    """Makes the 8th training_step from now raise (runs before the probe; Disarm runs after it)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Net) -> None:
        if trainer.current_epoch == 1:
            pl_module.hparams.fail_after = pl_module.calls + 7


class Disarm(Callback):
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Net) -> None:
        pl_module.hparams.fail_after = None


def test_a_test_that_raises_still_restores_everything_and_leaves_no_file(tmp_path):
    probe = Probe(RangeTestSettings(snapshot="disk", snapshot_dir=str(tmp_path / "snap"), **FINDER), epoch=1)
    _fit(tmp_path, ADAMW, [Arm(), probe, Disarm()], max_epochs=2)
    assert isinstance(probe.error, RuntimeError) and "on purpose" in str(probe.error)
    _assert_same_state(probe.before, probe.after)
    assert list((tmp_path / "snap").iterdir()) == []


# -- re-runs, accumulation, ratios ----------------------------------------------------------------------------


def test_a_rerun_after_two_epochs_gives_a_full_curve_and_applies_in_place(tmp_path):
    finder = LRFinder(epochs=[2], divergence_threshold=None, **FINDER)
    model, trainer = _fit(tmp_path, ADAMW, [finder], max_epochs=3)
    result = finder.results[2]
    assert result.epoch == 2 and result.num_steps == FINDER["num_steps"] and not result.diverged
    assert all(np.isfinite(result.smoothed[:10]))
    assert result.suggestion is not None and result.applied
    assert model.hparams["optim"]["optimizer"]["lr"] == pytest.approx(result.recommended_lr)
    # the fit's own steps only: 12 batches per epoch, 3 epochs
    assert trainer.global_step == 36
    # training went on with the new LR and the Adam state of the first two epochs
    assert model.group_lrs[-1][0] == pytest.approx(result.recommended_lr)
    assert int(trainer.optimizers[0].state_dict()["state"][0]["step"]) == 36


def test_gradient_accumulation_takes_one_lr_per_optimizer_step(tmp_path):
    probe = Probe(RangeTestSettings(num_steps=10, min_lr=1e-4, max_lr=1e-1, val_batches=0), epoch=0)

    class Counting(Probe):
        def on_train_epoch_start(self, trainer, pl_module):
            self.calls0, self.steps0 = pl_module.calls, len(pl_module.group_lrs)
            super().on_train_epoch_start(trainer, pl_module)
            self.calls1, self.steps1 = pl_module.calls, len(pl_module.group_lrs)

    probe = Counting(probe.settings, epoch=0)
    model, _trainer = _fit(tmp_path, ADAMW, [probe], max_epochs=1, accumulate_grad_batches=3)
    assert probe.result is not None and probe.result.num_steps == 10
    assert probe.calls1 - probe.calls0 == 30  # 3 batches per step
    assert probe.steps1 - probe.steps0 == 10  # one optimizer step (and LR) per 3 batches
    swept = [lrs[0] for lrs in model.group_lrs[probe.steps0: probe.steps1]]
    assert swept == pytest.approx(probe.result.lrs)


def test_param_group_ratios_are_kept_in_the_sweep_and_in_the_written_config(tmp_path):
    optim = {**ADAMW, "param_groups": [{"params": "backbone.*", "lr_scale": 0.1}, {"params": "head.bias", "lr": 2e-3}]}
    finder = LRFinder(**FINDER)
    model, trainer = _fit(tmp_path, optim, [finder], max_epochs=1)
    result = finder.results[0]
    assert result.applied and result.reference == "optimizer.lr"
    sweep = model.group_lrs[: result.num_steps]
    names = [g["name"] for g in trainer.optimizers[0].param_groups]
    for lrs, lr in zip(sweep, result.lrs):
        by_name = dict(zip(names, lrs))
        assert by_name["backbone"] == pytest.approx(0.1 * lr)
        assert by_name["head.bias/no_decay"] == pytest.approx(2.0 * lr)  # 2e-3 / 1e-3: the absolute LR kept its ratio
        assert by_name["default"] == pytest.approx(lr)
    new = model.hparams["optim"]
    factor = result.recommended_lr / 1e-3
    assert new["optimizer"]["lr"] == pytest.approx(result.recommended_lr)
    assert new["param_groups"][0]["lr_scale"] == 0.1
    assert new["param_groups"][1]["lr"] == pytest.approx(2e-3 * factor)
    real = dict(zip(names, model.group_lrs[result.num_steps]))  # the first step of the real fit
    assert real["backbone"] == pytest.approx(0.1 * result.recommended_lr)
    assert real["head.bias/no_decay"] == pytest.approx(2.0 * result.recommended_lr)


class PlainNet(Base):
    """No mixin: its own configure_optimizers with two groups and a StepLR."""

    def configure_optimizers(self):
        opt = torch.optim.SGD([{"params": self.backbone.parameters(), "lr": 0.01},
                               {"params": self.head.parameters(), "lr": 0.1}], lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
        return [opt], [{"scheduler": sched, "interval": "step"}]


def test_without_the_mixin_every_group_is_scaled_with_its_scheduler(tmp_path):
    L.seed_everything(0, verbose=False)
    model = PlainNet()
    finder = LRFinder(**FINDER)
    train, val = _data()
    trainer = L.Trainer(max_epochs=1, logger=False, callbacks=[finder], enable_checkpointing=False,
                        default_root_dir=tmp_path, **QUIET)
    trainer.fit(model, train, val)
    result = finder.results[0]
    assert result.reference == "param_groups[1].lr" and result.applied and result.schedule == "StepLR"
    for lrs, lr in zip(model.group_lrs[: result.num_steps], result.lrs):
        assert lrs == pytest.approx([0.1 * lr, lr])
    first_real = model.group_lrs[result.num_steps]
    assert first_real == pytest.approx([0.1 * result.recommended_lr, result.recommended_lr])
    assert trainer.lr_scheduler_configs[0].scheduler.base_lrs == pytest.approx(first_real)


# -- schedules ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("schedule", "low", "high"), [({"name": "onecycle"}, 1.7, 2.3),
                                                        ({"name": "warmup_cosine", "warmup": "10%"}, 1.8, 2.2),
                                                        ({"name": "constant"}, 1.0, 1.0)])
def test_the_schedule_aware_peak_has_the_suggestions_mean_lr_below_the_margin(tmp_path, schedule, low, high):
    finder = LRFinder(apply=False, **FINDER)
    _fit(tmp_path, {**ADAMW, "scheduler": schedule}, [finder], max_epochs=3)
    result = finder.results[0]
    assert result.schedule == schedule["name"]
    assert low <= result.peak_factor <= high
    mean_lr_peak = result.suggestion * result.peak_factor
    if result.margin_lr is None or mean_lr_peak <= result.margin_lr:
        assert result.recommended_lr == pytest.approx(mean_lr_peak)
    else:  # never above the safety margin below the rise of the loss
        assert result.recommended_lr == pytest.approx(max(result.margin_lr, result.suggestion))
    low_lr, high_lr = result.interval
    assert low_lr <= result.suggestion <= high_lr
    peak_low, peak_high = result.recommended_interval  # the same range for the LR to configure
    assert peak_low <= result.recommended_lr <= peak_high and math.log10(peak_high / peak_low) >= 0.3


def test_applying_at_fit_start_is_exactly_a_fit_started_with_the_written_config(tmp_path):
    optim = {**ADAMW, "param_groups": [{"params": "backbone.*", "lr_scale": 0.5}],
             "scheduler": {"name": "warmup_cosine", "warmup": "10%"}}
    finder, counter = LRFinder(**FINDER), HookCounter()
    tuned, trainer = _fit(tmp_path / "a", optim, [counter, finder], max_epochs=2)
    written = tuned.hparams["optim"]
    assert written["optimizer"]["lr"] == finder.results[0].recommended_lr != 1e-3
    fresh, _ = _fit(tmp_path / "b", written, [], max_epochs=2)
    assert _tensors_equal(tuned.state_dict(), fresh.state_dict())
    # the optimizer object was kept: a hook another callback put on it at fit start saw every real step
    assert counter.counts["optimizer_step_post_hook"] == trainer.global_step == 24


def test_a_test_that_diverges_at_once_restores_and_says_why(tmp_path):
    finder = LRFinder(min_lr=1e6, max_lr=1e9, num_steps=20)
    optim = {"optimizer": {"name": "sgd", "lr": 0.01}}
    with pytest.warns(UserWarning, match="no suggestion"):
        model, trainer = _fit(tmp_path, optim, [finder], max_epochs=1)
    result = finder.results[0]
    assert result.diverged and result.diverged_at <= 6 and result.suggestion is None and not result.applied
    assert "diverged" in result.message and "no suggestion" in result.message
    assert result.status == "diverged_at_once" and result.interval is None and "lower min_lr" in result.advice
    assert all(v is None for v in result.suggestions.values()) and result.recommended_lr is None
    assert model.hparams["optim"]["optimizer"]["lr"] == 0.01
    assert model.group_lrs[result.num_steps] == [0.01]  # the real fit's first step: the LR as configured
    assert all(torch.isfinite(p).all() for p in model.parameters())


# -- errors ---------------------------------------------------------------------------------------------------


class TwoOptimizers(Net):
    """Manual optimization with two optimizers (a GAN-like layout)."""

    def __init__(self) -> None:
        super().__init__({"optimizers": [{"params": "backbone.*", "optimizer": {"name": "adam", "lr": 1e-3}},
                                         {"params": "head.*", "optimizer": {"name": "sgd", "lr": 0.05}}]})
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        for opt in self.optimizers():
            opt.zero_grad()
        self.manual_backward(loss)
        for opt in self.optimizers():
            opt.step()
        return loss.detach()


def test_several_optimizers_need_a_named_target(tmp_path):
    train, _val = _data()
    with pytest.raises(ConfigError, match=r"optimizer: missing; expected the index of the optimizer to test: "
                                          r"configure_optimizers returned 2 \(0: Adam, 1: SGD\)"):
        find_lr(TwoOptimizers(), train, num_steps=10, trainer_kwargs=dict(QUIET, max_epochs=1))
    L.seed_everything(0, verbose=False)
    model = TwoOptimizers()
    result = find_lr(model, train, optimizer=1, update_config=True, trainer_kwargs=dict(QUIET, max_epochs=1), **FINDER)
    assert result.reference == "optimizers.1.optimizer.lr" and result.num_steps >= 5
    assert result.recommended_lr is not None and result.applied
    assert model.hparams["optim"]["optimizers"][0]["optimizer"]["lr"] == 1e-3
    assert model.hparams["optim"]["optimizers"][1]["optimizer"]["lr"] == pytest.approx(result.recommended_lr)


def test_lbfgs_and_bad_arguments_are_clear_errors(tmp_path):
    train, _val = _data()
    lbfgs = Net({"optimizer": {"name": "lbfgs", "lr": 0.1}})
    with pytest.raises(ConfigError, match="LBFGS re-evaluates the loss"):
        find_lr(lbfgs, train, num_steps=10, trainer_kwargs=dict(QUIET, max_epochs=1))
    with pytest.raises(ConfigError, match=r"epochs: got \[-1\]; expected a non-empty list of epoch indices >= 0"):
        LRFinder(epochs=[-1])
    with pytest.raises(ConfigError, match="Did you mean 'valley'"):
        LRFinder(rule="valey")
    with pytest.raises(ConfigError, match="update_config"):
        find_lr(PlainNet(), train, update_config=True)
    with pytest.raises(ConfigError, match="val_batches"):
        find_lr(Net(ADAMW), train, val_batches=2, num_steps=10, trainer_kwargs=dict(QUIET, max_epochs=1))


# -- find_lr, AMP, checkpoints ------------------------------------------------------------------------------------


def test_find_lr_leaves_model_rng_and_trainer_as_they_were(tmp_path):
    L.seed_everything(0, verbose=False)
    model = Net({**ADAMW, "scheduler": {"name": "warmup_cosine", "warmup": "10%"}})
    train, val = _data()
    counter = HookCounter()
    trainer = L.Trainer(max_epochs=2, logger=CSVLogger(tmp_path, name="logs"), callbacks=[counter],
                        enable_checkpointing=False, default_root_dir=tmp_path, **QUIET)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    result = find_lr(model, train, val, trainer=trainer, val_batches=2, update_config=True, **FINDER)
    assert torch.equal(rng, torch.get_rng_state())
    assert _tensors_equal(weights, model.state_dict())
    assert result.val_losses is not None and len(result.val_losses) == result.num_steps
    assert model.hparams["optim"]["optimizer"]["lr"] == pytest.approx(result.recommended_lr)
    # validation-aware mode: the rules read the held-out curve, not the training one
    from lightning_optkit.lr_finder._rules import rules_curve

    held_out = rules_curve(result.lrs, result.losses, result.val_losses, diverged_at=result.diverged_at)
    assert held_out.losses.tolist() == pytest.approx(result.val_losses)
    assert result.suggestions == suggest_all(held_out)
    assert counter.counts == {} and not (tmp_path / "logs").exists()
    assert trainer.callbacks[0] is counter
    trainer.fit(model, train, val)  # the same trainer trains next, with the written LR
    assert trainer.global_step == 24 and counter.counts["on_train_batch_end"] == 24
    assert model.group_lrs[-1][0] < result.recommended_lr  # the cosine decayed from the written peak


def test_bf16_mixed_precision_on_cpu(tmp_path):
    probe = Probe(RangeTestSettings(num_steps=12, min_lr=1e-4, max_lr=1.0), epoch=1)
    _fit(tmp_path, ADAMW, [probe], max_epochs=2, precision="bf16-mixed")
    assert probe.result is not None and probe.result.num_steps >= 6
    _assert_same_state(probe.before, probe.after)


def test_results_travel_in_checkpoints_and_a_resumed_fit_does_not_test_again(tmp_path):
    finder = LRFinder(**FINDER)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _fit(tmp_path, ADAMW, [finder, ckpt], max_epochs=1)
    lr = finder.results[0].recommended_lr
    data = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert data["hyper_parameters"]["optim"]["optimizer"]["lr"] == pytest.approx(lr)
    assert data["optkit"]["optim_config"]["optimizer"]["lr"] == pytest.approx(lr)
    resumed = LRFinder(**FINDER)
    L.seed_everything(0, verbose=False)
    model = Net.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    train, val = _data()
    trainer = L.Trainer(max_epochs=2, logger=False, callbacks=[resumed], enable_checkpointing=False,
                        default_root_dir=tmp_path, **QUIET)
    trainer.fit(model, train, val, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert list(resumed.results) == [0] and resumed.results[0].recommended_lr == pytest.approx(lr)
    assert model.calls == 12  # only the second epoch's batches: no new test


# -- the command ----------------------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    import argparse

    from lightning_optkit.lr_finder import _cli

    parser = argparse.ArgumentParser(prog="optkit")
    _cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_optkit_lr_find_example_digits_writes_png_and_tensorboard(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "plots" / "lr.png"
    code = _cli(["lr-find", "--example", "digits", "--num-steps", "40", "--min-lr", "1e-5",
                 "--set", "scheduler.name=onecycle", "--set", "scheduler.warmup=0", "--set", "scheduler.min_lr_ratio=",
                 "--out", str(out), "--log-dir", str(tmp_path / "tb")])
    printed = capsys.readouterr().out
    assert code == 0
    assert "guarded" in printed and "steepest" in printed and "<- default" in printed and "schedule 'onecycle': peak" in printed
    assert "suggested: optimizer.lr = " in printed and "--set optimizer.lr=" in printed
    assert "interval: " in printed and "confidence" in printed
    assert "interval for optimizer.lr (onecycle peak): " in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["lr.png"]  # no temporary file left
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0})
    acc.Reload()
    assert acc.Tags()["images"] == ["lr_find"]


def test_optkit_lr_find_reports_config_mistakes_as_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"scheduler\.name"):
        _cli(["lr-find", "--example", "digits", "--set", "scheduler.name=cosinus", "--out", str(tmp_path / "x.png")])
    with pytest.raises(ConfigError, match="--model"):
        _cli(["lr-find", "--out", str(tmp_path / "x.png")])
