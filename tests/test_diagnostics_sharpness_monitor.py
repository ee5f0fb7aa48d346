"""SharpnessMonitor with real Trainers: the stability edge, divergence flagged first, no effect on the run."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import ConfigError
from lightning_optkit.diagnostics import SharpnessMonitor
from lightning_optkit.diagnostics._edge import stability_edge

_TRAINER = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
            "enable_model_summary": False, "accelerator": "cpu", "devices": 1}


def _regression_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g) * torch.tensor([2.0, 1.0, 0.5, 0.5, 0.2])
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0], [3.0]]) + 0.1 * torch.randn(64, 1, generator=g)
    return x, y


def _exact_lambda_max(x: torch.Tensor) -> float:
    a = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    return torch.linalg.eigvalsh(2 * a.T @ a / len(x))[-1].item()  # Hessian of MSELoss w.r.t. (W, b)


class LinReg(L.LightningModule):
    """Least squares: the Hessian is constant, so SGD diverges exactly when lr > edge."""

    def __init__(self, lr: float, momentum: float = 0.0, adam: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(5, 1)
        self.loss_fn = nn.MSELoss()
        self.lr, self.momentum, self.adam = lr, momentum, adam
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.losses.append(loss.item())  # test-only sync: the test needs every step's loss
        if not math.isfinite(self.losses[-1]):
            self.trainer.should_stop = True
        return loss

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        if self.adam:
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


def _fit(module: L.LightningModule, monitor: SharpnessMonitor | None, steps: int, **kw) -> None:
    x, y = _regression_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=64)  # full batch: the loss is the probed loss
    cbs = [monitor] if monitor is not None else []
    L.Trainer(max_steps=steps, callbacks=cbs, **{**_TRAINER, **kw}).fit(module, loader)


def _first_nonfinite(losses: list[float]) -> int | None:
    return next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)


@pytest.mark.parametrize(("momentum", "edge_factor"), [(0.0, 2.0), (0.9, 3.8)])
def test_above_the_edge_diverges_and_is_flagged_first(momentum, edge_factor):
    lam = _exact_lambda_max(_regression_data()[0])
    monitor = SharpnessMonitor(every_n_epochs=None, every_n_steps=50, iters=10)
    module = LinReg(lr=1.3 * edge_factor / lam, momentum=momentum)
    with pytest.warns(UserWarning, match=r"above the stability edge"):
        _fit(module, monitor, steps=600)
    bad = _first_nonfinite(module.losses)
    assert bad is not None, "training above the edge must diverge"
    assert monitor.flagged and monitor.first_flag_step is not None and monitor.first_flag_step < bad
    first = monitor.history[0]
    assert first["step"] == 0 and abs(first["lambda_max"] - lam) / lam < 0.01
    assert first["edge_kind"] == ("sgd" if momentum == 0 else "heavy_ball")
    assert first["ratio"] == pytest.approx(1.3, rel=0.01)


@pytest.mark.parametrize(("momentum", "edge_factor"), [(0.0, 2.0), (0.9, 3.8)])
def test_below_the_edge_converges_and_is_not_flagged(momentum, edge_factor):
    lam = _exact_lambda_max(_regression_data()[0])
    monitor = SharpnessMonitor(every_n_epochs=None, every_n_steps=100, iters=10)
    module = LinReg(lr=0.8 * edge_factor / lam, momentum=momentum)  # with momentum: above 2/lr, still stable
    _fit(module, monitor, steps=300)
    assert _first_nonfinite(module.losses) is None and module.losses[-1] < 0.1 * module.losses[0]
    assert not monitor.flagged and len(monitor.history) == 4  # start, steps 100, 200, 300
    assert all(h["ratio"] == pytest.approx(0.8, rel=0.01) for h in monitor.history)


class DropoutNet(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 1))
        self.loss_fn = nn.MSELoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _fit_dropout(monitor: SharpnessMonitor | None, tmp_path: Path) -> DropoutNet:
    L.seed_everything(7)
    x, y = _regression_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3))
    module = DropoutNet()
    logger = CSVLogger(tmp_path, name="run") if monitor is not None else False
    trainer = L.Trainer(max_epochs=3, callbacks=[monitor] if monitor else [], log_every_n_steps=1,
                        **{**_TRAINER, "logger": logger})
    trainer.fit(module, loader)
    return module


def test_the_monitor_leaves_the_training_run_bitwise_unchanged_and_logs(tmp_path):
    plain = _fit_dropout(None, tmp_path)
    monitor = SharpnessMonitor(every_n_epochs=1, every_n_steps=5, iters=8)
    watched = _fit_dropout(monitor, tmp_path)
    for (name, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name
    # Adam: the raw eigenvalue is logged, the preconditioned one once Adam has state, and compared with 38/lr
    assert monitor.history[0]["lambda_max_preconditioned"] is None and monitor.history[0]["ratio"] is None
    later = monitor.history[-1]
    assert later["edge_kind"] == "adam_preconditioned" and later["edge"] == pytest.approx(3.8 / (0.1 * 1e-2))
    assert later["lambda_max_preconditioned"] > 0 and later["ratio"] is not None
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).read_text().splitlines()))
    logged = [float(r["sharpness/lambda_max"]) for r in rows if r.get("sharpness/lambda_max")]
    assert logged == pytest.approx([h["lambda_max"] for h in monitor.history])


def test_state_dict_round_trip_and_bad_arguments():
    monitor = SharpnessMonitor()
    monitor.history = [{"step": 3, "lambda_max": 2.0}]
    monitor.flagged, monitor.first_flag_step = True, 3
    other = SharpnessMonitor()
    other.load_state_dict(monitor.state_dict())
    assert other.history == monitor.history and other.flagged and other.first_flag_step == 3
    with pytest.raises(ConfigError, match=r"SharpnessMonitor.iters"):
        SharpnessMonitor(iters=1)
    with pytest.raises(ConfigError, match=r"SharpnessMonitor.tolerance"):
        SharpnessMonitor(tolerance=-0.1)
    with pytest.raises(ConfigError, match=r"SharpnessMonitor.every_n_epochs"):
        SharpnessMonitor(every_n_epochs=0)


def test_stability_edges_match_the_update_matrix():
    """The edge is where the spectral radius of the 2x2 momentum update matrix crosses 1."""
    p = [nn.Parameter(torch.zeros(1))]
    for opt in (torch.optim.SGD(p, lr=0.1), torch.optim.SGD(p, lr=0.1, momentum=0.5),
                torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
                torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.3)):
        edge = stability_edge(opt).value
        g = opt.param_groups[0]

        def radius(lam: float, lr: float = g["lr"], b: float = g["momentum"], d: float = g["dampening"],
                   nesterov: bool = g["nesterov"]) -> float:
            if nesterov:
                m = torch.tensor([[1 - lr * lam * (1 + b), -lr * b * b], [lam, b]], dtype=torch.float64)
            else:
                m = torch.tensor([[1 - lr * (1 - d) * lam, -lr * b], [(1 - d) * lam, b]], dtype=torch.float64)
            return torch.linalg.eigvals(m).abs().max().item()

        assert radius(edge * 0.999) < 1.0 < radius(edge * 1.001)
    assert stability_edge(torch.optim.SGD(p, lr=0.1, weight_decay=0.5)).value == pytest.approx(19.5)
