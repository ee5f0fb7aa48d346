"""TrainingDoctor's capacity verdict, convergence state and UNDERFITTING code on constructed real runs
(a model too small, one too large for its data, a healthy one, a stalled one), and its outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import ConfigError
from lightning_optkit.callbacks import TrainingDoctor
from lightning_optkit.callbacks._verdicts import capacity_verdict, convergence_state


def _blobs(n: int, seed: int, noise: float = 1.0, random_labels: bool = False) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 16, generator=torch.Generator().manual_seed(123)) * 2.0
    y = torch.randint(0, 4, (n,), generator=g)
    x = centers[y] + noise * torch.randn(n, 16, generator=g)
    if random_labels:
        y = torch.randint(0, 4, (n,), generator=g)
    return TensorDataset(x, y)


class Classifier(L.LightningModule):
    """Logs train_acc / val_acc (epoch means) and val_loss, as a typical classification module does."""

    def __init__(self, sizes: list[int], opt: str, lr: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
        self.net = nn.Sequential(*layers)
        self.opt, self.lr = opt, lr

    def _step(self, batch: Any, split: str) -> torch.Tensor:
        x, y = batch
        out = self.net(x)
        loss = nn.functional.cross_entropy(out, y)
        self.log(f"{split}_acc", (out.argmax(1) == y).float().mean(), on_step=False, on_epoch=True)
        if split == "val":
            self.log("val_loss", loss)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        cls = torch.optim.Adam if self.opt == "adam" else torch.optim.SGD
        return cls(self.parameters(), lr=self.lr)


RUNS: dict[str, dict[str, Any]] = {
    # one hidden unit for 4 classes in 16 dimensions
    "too_small": dict(sizes=[16, 1, 4], opt="adam", lr=1e-2, train=(512, 0, 2.0, False), epochs=30),
    # a wide MLP on 48 samples whose labels carry no signal: it memorizes them
    "too_large": dict(sizes=[16, 256, 256, 4], opt="adam", lr=3e-3, train=(48, 3, 3.0, True), epochs=40),
    "healthy": dict(sizes=[16, 64, 64, 4], opt="adam", lr=1e-3, train=(512, 0, 1.0, False), epochs=8),
    "stalled": dict(sizes=[16, 64, 64, 4], opt="sgd", lr=1e-5, train=(512, 0, 1.0, False), epochs=8),
}
EXPECTED = {  # capacity verdict, allowed convergence states, codes that must be there, codes that must not
    "too_small": ("underfitting", {"converged", "converging slowly"}, {"UNDERFITTING"}, {"OVERFITTING"}),
    "too_large": ("overfitting", {"converged", "converging slowly", "converging fast"}, set(), {"UNDERFITTING"}),
    "healthy": ("good fit", {"converged", "converging slowly", "converging fast"}, set(),
                {"UNDERFITTING", "OVERFITTING", "LOSS_NOT_DECREASING"}),
    "stalled": ("underfitting", {"stalled"}, {"LOSS_NOT_DECREASING"}, {"UNDERFITTING", "OVERFITTING"}),
}


def _fit(name: str, root: Path, logger: Any = False, **doctor_kw: Any) -> TrainingDoctor:
    spec = RUNS[name]
    torch.manual_seed(0)
    model = Classifier(spec["sizes"], spec["opt"], spec["lr"])
    n, seed, noise, random_labels = spec["train"]
    train = DataLoader(_blobs(n, seed, noise, random_labels), batch_size=16 if n < 100 else 32, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    val = DataLoader(_blobs(256, 1, noise), batch_size=64)
    doctor = TrainingDoctor(check_every_n_steps=50, max_warnings=0, **doctor_kw)
    trainer = L.Trainer(max_epochs=spec["epochs"], accelerator="cpu", devices=1, logger=logger,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=root, callbacks=[doctor])
    trainer.fit(model, train, val)
    return doctor


@pytest.mark.parametrize("name", list(RUNS))
def test_constructed_runs_get_the_right_verdicts_and_no_wrong_ones(name: str, tmp_path: Path) -> None:
    doctor = _fit(name, tmp_path)
    verdict, states, must, must_not = EXPECTED[name]
    assert doctor.capacity is not None and doctor.capacity.metric == "accuracy"
    assert (doctor.capacity.train_key, doctor.capacity.val_key) == ("train_acc", "val_acc")
    assert doctor.capacity.verdict == verdict, doctor.capacity
    assert doctor.convergence is not None and doctor.convergence.state in states, doctor.convergence
    assert must <= set(doctor.codes) and not (must_not & set(doctor.codes)), [d.line() for d in doctor.diagnoses]
    if name == "healthy":
        assert doctor.codes == []


def test_loss_scores_when_no_accuracy_is_logged_and_thresholds_are_configurable(tmp_path: Path) -> None:
    doctor = _fit("too_small", tmp_path, capacity_keys="loss", thresholds={"capacity_loss_low": 0.7})
    assert doctor.capacity is not None and doctor.capacity.metric == "loss" and not doctor.capacity.informational
    assert doctor.capacity.verdict == "underfitting" and "UNDERFITTING" in doctor.codes
    # the same run, with "poor" meaning below 0.3: no longer underfitting
    lenient = _fit("too_small", tmp_path / "b", capacity_keys="loss", thresholds={"capacity_loss_low": 0.3})
    assert lenient.capacity is not None and lenient.capacity.verdict != "underfitting"
    assert "UNDERFITTING" not in lenient.codes


def test_verdicts_reach_json_console_and_tensorboard(tmp_path: Path) -> None:
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    doctor = _fit("too_small", tmp_path, logger=logger)
    report = json.loads((Path(logger.log_dir) / "doctor.json").read_text())
    assert report["capacity"]["verdict"] == "underfitting" and report["capacity"]["metric"] == "accuracy"
    assert report["convergence"]["state"] == doctor.convergence.state  # type: ignore[union-attr]
    assert "capacity: underfitting" in doctor.table() and "**convergence**" in doctor.markdown()
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    text = events.Tensors("doctor/summary/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "UNDERFITTING" in text and "**capacity**: underfitting" in text


def test_rules_on_known_values() -> None:
    assert capacity_verdict(0.95, 0.6, metric="accuracy").verdict == "overfitting"
    assert capacity_verdict(0.5, 0.4, metric="accuracy").verdict == "underfitting"
    assert capacity_verdict(0.8, 0.78, metric="accuracy").verdict == "good fit"
    assert capacity_verdict(0.85, 0.75, metric="accuracy").verdict == "inconclusive"
    assert capacity_verdict(0.95, 0.6, metric="accuracy", low=0.5).verdict == "inconclusive"
    flat = [1.0] * 10 + [0.5] * 90
    assert convergence_state(flat).state == "converged"  # type: ignore[union-attr]
    rising = [1.0 - 0.001 * t for t in range(50)] + [0.95 + 0.01 * t for t in range(50)]
    assert convergence_state(rising).state == "worsening"  # type: ignore[union-attr]
    slow = [1.0 - 0.0002 * t for t in range(100)]  # 0.4% per window of 20
    assert convergence_state(slow).state == "stalled"  # type: ignore[union-attr]
    assert convergence_state(slow, converged=0.003).state == "converging slowly"  # type: ignore[union-attr]
    assert convergence_state([1.0] * 9) is None


def test_bad_capacity_keys_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="capacity_keys"):
        TrainingDoctor(capacity_keys="accuracy")
    with pytest.raises(ConfigError, match="capacity_low"):
        TrainingDoctor(thresholds={"capacity_low": -1})


def test_docstring_examples_run() -> None:
    import doctest

    from lightning_optkit.callbacks import _verdicts

    result = doctest.testmod(_verdicts)
    assert result.attempted > 0 and result.failed == 0


class _LeastSquares(L.LightningModule):
    """Full-batch least squares: a constant Hessian, so SGD diverges exactly above lr = 2 / lambda_max."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer, self.loss_fn, self.lr = nn.Linear(5, 1), nn.MSELoss(), lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.loss_fn(self(batch[0]), batch[1])

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def test_sgd_above_the_edge_diverges_and_the_doctor_says_so_first() -> None:
    from lightning_optkit.diagnostics import SharpnessMonitor

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g) * torch.tensor([2.0, 1.0, 0.5, 0.5, 0.2])
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0], [3.0]])
    a = torch.cat([x, torch.ones(64, 1)], 1).double()
    lam = float(torch.linalg.eigvalsh(2 * a.T @ a / 64)[-1])  # the exact Hessian of the MSE
    doctor = TrainingDoctor(check_every_n_steps=10, max_warnings=10, filename=None)
    monitor = SharpnessMonitor(every_n_epochs=None, every_n_steps=100, iters=10)
    trainer = L.Trainer(max_steps=300, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[doctor, monitor])
    with pytest.warns(RuntimeWarning) as warned:
        trainer.fit(_LeastSquares(lr=1.3 * 2 / lam), DataLoader(TensorDataset(x, y), batch_size=64))
    codes = [m for w in warned for m in ("ABOVE_STABILITY_EDGE", "NONFINITE_LOSS") if f"[{m}]" in str(w.message)]
    assert codes == ["ABOVE_STABILITY_EDGE", "NONFINITE_LOSS"]  # warned about the edge before the loss blew up
    edge = next(d for d in doctor.diagnoses if d.code == "ABOVE_STABILITY_EDGE")
    nonfinite = next(d for d in doctor.diagnoses if d.code == "NONFINITE_LOSS")
    assert edge.first_step == 0 < nonfinite.first_step
    assert edge.evidence["edge_kind"] == "sgd" and edge.evidence["worst_ratio"] == pytest.approx(1.3, rel=0.01)


def test_below_the_edge_no_sharpness_diagnosis() -> None:
    from lightning_optkit.diagnostics import SharpnessMonitor

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0], [3.0]])
    a = torch.cat([x, torch.ones(64, 1)], 1).double()
    lam = float(torch.linalg.eigvalsh(2 * a.T @ a / 64)[-1])  # the exact Hessian of the MSE
    doctor = TrainingDoctor(check_every_n_steps=10, max_warnings=0, filename=None)
    monitor = SharpnessMonitor(every_n_epochs=None, every_n_steps=50, iters=10)
    trainer = L.Trainer(max_steps=100, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[doctor, monitor])
    # 0.8 of the edge: an edge 25% too low would already flag it
    trainer.fit(_LeastSquares(lr=0.8 * 2 / lam), DataLoader(TensorDataset(x, y), batch_size=64))
    assert len(monitor.history) == 3 and not monitor.flagged
    assert all(h["ratio"] == pytest.approx(0.8, rel=0.01) for h in monitor.history)
    assert "ABOVE_STABILITY_EDGE" not in doctor.codes


class _NoisyRegression(L.LightningModule):
    """Linear regression on targets with unit noise: at convergence the loss sits at its noise floor (~1),
    not near 0, so ``1 - loss / initial`` stays far below any accuracy-like threshold."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=0.05)


def _noisy(n: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[0.6], [-0.4], [0.3], [0.2]]) + torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=n)  # full batch: the training loss settles exactly


@pytest.mark.parametrize("thresholds", [None, {"capacity_loss_low": 0.7}])
def test_a_converged_regression_at_its_noise_floor_is_not_underfitting(thresholds: Any, tmp_path: Path) -> None:
    doctor = TrainingDoctor(check_every_n_steps=50, max_warnings=0, filename=None, thresholds=thresholds)
    trainer = L.Trainer(max_epochs=150, check_val_every_n_epoch=10, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path, callbacks=[doctor])
    trainer.fit(_NoisyRegression(), _noisy(512, 0), _noisy(512, 1))
    cap, conv = doctor.capacity, doctor.convergence
    assert cap is not None and cap.metric == "loss" and conv is not None and conv.state == "converged", (cap, conv)
    assert cap.verdict == "underfitting" and cap.train < 0.7  # by the accuracy thresholds: loss only halved
    if thresholds is None:  # reported, but only as information
        assert "UNDERFITTING" not in doctor.codes and cap.informational and "information only" in cap.message
        assert "capacity: underfitting" in doctor.table()
    else:  # the user set a loss threshold: the verdict acts
        assert not cap.informational and "UNDERFITTING" in doctor.codes
