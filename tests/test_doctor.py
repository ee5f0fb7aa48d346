"""TrainingDoctor: the doctor suite (broken and healthy real runs), its outputs, and its rules on known series."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from lightning_optkit import ConfigError
from lightning_optkit.callbacks import CODES, DEFAULT_THRESHOLDS, TrainingDoctor


def _suite() -> Any:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "doctor_suite.py"
    spec = importlib.util.spec_from_file_location("_bench_doctor_suite", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


SUITE = _suite()


@pytest.mark.parametrize("name", [c.name for c in SUITE.CASES])
def test_doctor_suite(tmp_path: Path, name: str) -> None:
    """Every broken run gets its own code; every healthy run gets none (the suite of benchmarks/doctor_suite.py)."""
    case = next(c for c in SUITE.CASES if c.name == name)
    SUITE.SEED[0] = 0
    codes, doctor = SUITE.run_case(case, str(tmp_path))
    if case.expected is None:
        assert codes == [], [d.line() for d in doctor.diagnoses]
    else:
        assert case.expected in codes
        d = next(d for d in doctor.diagnoses if d.code == case.expected)
        assert d.severity == CODES[d.code][0] and d.remedy and d.evidence
        assert 0 <= d.first_step <= d.last_step


def test_every_code_has_a_broken_run() -> None:
    assert {c.expected for c in SUITE.CASES if c.expected} == set(CODES)
    assert sum(c.expected is None for c in SUITE.CASES) >= 4


def test_outputs_json_tensorboard_console_and_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    case = next(c for c in SUITE.CASES if c.name == "zero_gradients")
    model, train, _, kw = case.build()
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    doctor = TrainingDoctor(check_every_n_steps=10)
    trainer = L.Trainer(accelerator="cpu", logger=logger, callbacks=[doctor], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **kw)
    lightning_log = logging.getLogger("lightning.pytorch")  # does not propagate to the root logger
    lightning_log.addHandler(caplog.handler)
    try:
        with pytest.warns(RuntimeWarning, match=r"\[ZERO_GRADIENTS\]") as warned:
            trainer.fit(model, train)
    finally:
        lightning_log.removeHandler(caplog.handler)
    assert sum("ZERO_GRADIENTS" in str(w.message) for w in warned) == 1  # once, when first found
    assert "TrainingDoctor: 1 finding(s)" in caplog.text and "net.extra.weight" in caplog.text
    report = json.loads((Path(logger.log_dir) / "doctor.json").read_text())
    assert report["codes"] == ["ZERO_GRADIENTS"]
    (d,) = report["diagnoses"]
    assert d["evidence"]["parameters"] == ["net.extra.weight", "net.extra.bias"] and d["severity"] == "warning"
    assert d["first_step"] == 0 and d["last_step"] == 31
    acc = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    assert "doctor/summary/text_summary" in tags and "doctor/ZERO_GRADIENTS/text_summary" in tags
    text = acc.Tensors("doctor/summary/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "| ZERO_GRADIENTS | warning |" in text


def test_warnings_are_rate_limited(tmp_path: Path) -> None:
    doctor = TrainingDoctor(max_warnings=1)
    for step in range(60):
        loss = 2.0 if step < 50 else math.nan
        doctor.series.add(step, loss, 1.0, 1e-3, [])
    doctor.ever_grad = {"w": False}
    doctor.optimizer_steps = 60

    class T:  # the two attributes _emit_new reads, for a doctor outside a Trainer
        loggers: list[Any] = []
        global_step = 60

    doctor._run_rules(end=True)
    with pytest.warns(RuntimeWarning) as warned:
        doctor._emit_new(T())
    assert len(warned) == 1 and set(doctor.warned) == {"NONFINITE_LOSS", "ZERO_GRADIENTS"}


# -- the rules on known series --------------------------------------------------------------------


def doctor_with(losses: list[float], lr: list[float] | None = None, groups: list[list[float]] | None = None,
                names: list[str] | None = None) -> TrainingDoctor:
    d = TrainingDoctor()
    for i, loss in enumerate(losses):
        d.series.add(i, loss, 1.0, (lr[i] if lr else 1e-3), groups[i] if groups else [])
    d.group_names = names or []
    d.optimizer_steps = len(losses)
    return d


def test_rule_not_decreasing_and_healthy_decrease() -> None:
    g = torch.Generator().manual_seed(0)
    noise = (0.02 * torch.randn(200, generator=g)).tolist()
    assert doctor_with([1.0 + n for n in noise]).diagnose()[0].code == "LOSS_NOT_DECREASING"
    assert doctor_with([math.exp(-i / 50) + 0.1 * n for i, n in enumerate(noise)]).diagnose() == []


def test_rule_diverging_and_nonfinite() -> None:
    curve = [1.0 / (1 + i / 10) if i < 80 else 0.11 * 1.05 ** (i - 80) for i in range(200)]
    (d,) = doctor_with(curve).diagnose()
    assert d.code == "LOSS_DIVERGING" and 70 <= d.evidence["best_step"] <= 85
    (d,) = doctor_with(curve[:120] + [math.inf] + [math.nan] * 10).diagnose()
    assert d.code == "NONFINITE_LOSS" and d.first_step == 120 and d.evidence["nonfinite_steps"] == 11


def test_rule_gradient_depth_profile() -> None:
    names = [f"layers.{i}" for i in range(6)]
    vanish = [[10.0 ** (i - 8) for i in range(6)]] * 60
    explode = [[10.0 ** (3 - i) for i in range(6)]] * 60
    flat = [[1.0 + 0.1 * i for i in range(6)]] * 60
    losses = [1.0 / (1 + i / 5) for i in range(60)]
    assert doctor_with(losses, groups=vanish, names=names).diagnose()[0].code == "VANISHING_GRADIENTS"
    assert doctor_with(losses, groups=explode, names=names).diagnose()[0].code == "EXPLODING_GRADIENTS"
    assert doctor_with(losses, groups=flat, names=names).diagnose() == []


def test_rule_warmup_from_the_lr_curve() -> None:
    lr = [min(1.0, i / 150) for i in range(200)]
    losses = [1.0 / (1 + i / 10) for i in range(200)]
    d = doctor_with(losses, lr=lr)
    d.schedules = [{"kind": "LambdaLR", "interval": "step"}]
    assert "WARMUP_TOO_LONG" in [x.code for x in d.diagnose()]


def test_overfitting_rule() -> None:
    d = doctor_with([1.0 / (1 + i / 10) for i in range(100)])
    d.val_key = "val_loss"
    d.val = [(10, 0, 1.0, 0.9), (20, 1, 0.8, 0.6), (30, 2, 0.9, 0.4), (40, 3, 1.1, 0.2)]
    (x,) = d.diagnose()
    assert x.code == "OVERFITTING" and x.evidence["val_min_epoch"] == 1 and x.first_step == 20


def test_overfitting_finding_quotes_the_last_validation_at_the_end() -> None:
    """A rise that later validations undo: the end-of-fit table must not quote the stale value as "now"."""
    d = doctor_with([1.0 / (1 + i / 10) for i in range(100)])
    d.val_key = "val_loss"
    d.val = [(10, 0, 1.0, 0.9), (20, 1, 0.8, 0.6), (30, 2, 0.85, 0.4), (40, 3, 0.897, 0.2)]
    (x,) = d.diagnose()
    assert "is now 0.897" in x.message
    d.val += [(50, 4, 0.85, 0.15), (60, 5, 0.83, 0.1)]  # back down, still above the minimum 0.8
    (x,) = d.diagnose()
    assert x.code == "OVERFITTING" and x.evidence["val_now"] == 0.83 and x.evidence["val_peak"] == 0.897
    assert "is now 0.83" in x.message and "is now 0.897" not in x.message
    assert "0.897" in d.table() and "is now 0.83" in d.table()


def test_overfitting_finding_goes_at_a_new_validation_minimum() -> None:
    d = doctor_with([1.0 / (1 + i / 10) for i in range(100)])
    d.val_key = "val_loss"
    d.val = [(10, 0, 1.0, 0.9), (20, 1, 0.8, 0.6), (30, 2, 0.85, 0.4), (40, 3, 0.897, 0.2)]
    assert [x.code for x in d.diagnose()] == ["OVERFITTING"]
    d.val += [(50, 4, 0.79, 0.15)]  # lower than ever: the rise did not last
    assert d.diagnose() == [] and "OVERFITTING" not in d.table()
    d.val += [(60, 5, 0.8, 0.1)]  # one value just above the new minimum: nothing to report either
    assert d.diagnose() == []


def test_ignore_and_thresholds() -> None:
    d = TrainingDoctor(ignore=["LOSS_NOT_DECREASING"], thresholds={"not_decreasing": 0.5})
    assert d.thresholds["not_decreasing"] == 0.5
    for i in range(200):
        d.series.add(i, 1.0, 1.0, 1e-3, [])
    assert d.diagnose() == []


def test_state_dict_roundtrip(tmp_path: Path) -> None:
    case = next(c for c in SUITE.CASES if c.name == "zero_gradients")
    model, train, _, kw = case.build()
    doctor = TrainingDoctor()
    t = L.Trainer(accelerator="cpu", logger=False, callbacks=[doctor], enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path), **kw)
    t.fit(model, train)
    t.save_checkpoint(tmp_path / "d.ckpt")
    state = torch.load(tmp_path / "d.ckpt", weights_only=True)["callbacks"][doctor.state_key]
    other = TrainingDoctor()
    other.load_state_dict(state)
    assert other.codes == doctor.codes == ["ZERO_GRADIENTS"]
    assert other.series.loss == doctor.series.loss and other.ever_grad == doctor.ever_grad


def test_history_is_bounded() -> None:
    d = TrainingDoctor()
    d.series.limit = 100
    for i in range(1000):
        d.series.add(i, 1.0, 1.0, 1.0, [])
    assert len(d.series.steps) <= 101 and d.series.stride == 16
    assert d.series.steps[:3] == [0, 16, 32]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"thresholds": {"oscilation": 0.3}},
     r"TrainingDoctor.thresholds.oscilation: got 0.3; expected one of .*Did you mean 'oscillation'"),
    ({"thresholds": {"oscillation": -1}}, r"a positive number"),
    ({"ignore": ["LOSS_DIVERGNG"]}, r"TrainingDoctor.ignore: got 'LOSS_DIVERGNG'.*Did you mean 'LOSS_DIVERGING'"),
    ({"check_every_n_steps": 0}, r"check_every_n_steps"),
    ({"groups": "layers"}, r"TrainingDoctor.groups"),
    ({"filename": "x/doctor.json"}, r"TrainingDoctor.filename"),
])
def test_argument_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainingDoctor(**kwargs)


def test_thresholds_documented() -> None:
    assert set(DEFAULT_THRESHOLDS) >= {"oscillation", "explode_depth", "vanish_depth", "overfit_rise"}
    assert all(CODES[c][0] in ("error", "warning") for c in CODES)


def test_doctor_with_frozen_and_unused_layers_reports_only_trainable(tmp_path: Path) -> None:
    """Frozen parameters (requires_grad=False) are never 'zero gradients'."""
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    net[0].requires_grad_(False)
    model = SUITE.Model(net, "cls", SUITE.adam(1e-3))
    doctor = TrainingDoctor()
    L.Trainer(accelerator="cpu", max_epochs=2, logger=False, callbacks=[doctor], enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=str(tmp_path)).fit(model, SUITE.loader(SUITE.blobs()))
    assert set(doctor.ever_grad) == {"net.2.weight", "net.2.bias"} and doctor.codes == []


def test_planned_steps_follow_a_gradient_accumulation_schedule(tmp_path: Path) -> None:
    """The doctor's planned length counts each epoch with its own accumulation (8 + 2 + 2 optimizer steps),
    the count the mixin uses, not Lightning's ``estimated_stepping_batches`` (first epoch's value for all: 24)."""
    from lightning.pytorch.callbacks import GradientAccumulationScheduler
    from torch.utils.data import DataLoader, TensorDataset

    class Net(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=4)
    doctor = TrainingDoctor()
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, default_root_dir=str(tmp_path),
                        callbacks=[doctor, GradientAccumulationScheduler({0: 1, 1: 4})], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Net(), data)
    assert trainer.global_step == 12
    assert (doctor.planned_steps, doctor.planned_epochs) == (12, 3)
    report = json.loads((tmp_path / doctor.filename).read_text())
    assert report["planned_steps"] == 12
