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
from lightning_optkit.diagnostics._edge import edge_preconditioner, stability_edge, step_scales, stepped_params

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


class TwoGroups(L.LightningModule):
    """Least squares on two orthogonal features, each weight in its own parameter group.

    Feature ``a`` lives on the even rows (scale 10), feature ``b`` on the odd ones (scale 1), so the
    Hessian of the MSE is exactly ``diag(100, 1)``: SGD on group g is stable iff ``lr_g * h_g < 2``.
    """

    def __init__(self, lr_a: float, lr_b: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
        self.loss_fn = nn.MSELoss()
        self.lr_a, self.lr_b = lr_a, lr_b
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x[:, :1]) + self.b(x[:, 1:])

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        loss = self.loss_fn(self(batch[0]), batch[1])
        self.losses.append(loss.item())  # test-only sync
        if not math.isfinite(self.losses[-1]):
            self.trainer.should_stop = True
        return loss

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD([{"params": self.a.parameters(), "lr": self.lr_a},
                                {"params": self.b.parameters(), "lr": self.lr_b}], lr=self.lr_b)


def _two_group_data() -> DataLoader:
    x = torch.zeros(64, 2)
    x[0::2, 0], x[1::2, 1] = 10.0, 1.0
    y = x @ torch.tensor([[0.5], [-1.0]])
    return DataLoader(TensorDataset(x, y), batch_size=64)


@pytest.mark.parametrize(("lr_a", "lr_b", "diverges"), [(0.01, 1.0, False), (1.0, 0.01, True)])
def test_per_group_learning_rates_scale_the_compared_sharpness(lr_a, lr_b, diverges):
    """Sharp direction (curvature 100) in the small-LR group: stable, not flagged, although the raw
    lambda_max (100) is far above the largest group's edge 2 / 1.0; in the large-LR group: flagged."""
    monitor = SharpnessMonitor(every_n_epochs=None, every_n_steps=20, iters=4)
    module = TwoGroups(lr_a, lr_b)
    L.Trainer(max_steps=40, callbacks=[monitor], **_TRAINER).fit(module, _two_group_data())
    assert (_first_nonfinite(module.losses) is not None or module.losses[-1] > module.losses[0]) == diverges
    first = monitor.history[0]
    assert first["lambda_max"] == pytest.approx(100.0, rel=1e-3) and first["edge"] == pytest.approx(2.0)
    assert first["lambda_max_preconditioned"] == pytest.approx(100.0 if diverges else 1.0, rel=1e-3)
    assert monitor.flagged == diverges


def test_per_group_edges_use_each_groups_momentum_and_fold_d_into_adam():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))
    sgd = torch.optim.SGD([{"params": [a], "lr": 0.1, "momentum": 0.9}, {"params": [b], "lr": 0.1}], lr=0.1)
    edge = stability_edge(sgd)  # group a: 38, group b: 20 -> b bounds, a's steps count 20/38 of b's
    assert edge.value == pytest.approx(20.0) and edge.kind == "sgd" and edge.preconditioned
    assert step_scales(sgd, [a, b]).tolist() == pytest.approx([20 / 38] * 2 + [1.0] * 3)
    adam = torch.optim.Adam([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-2}])
    (a.sum() + 2 * b.sum()).backward()
    adam.step()
    assert stability_edge(adam).value == pytest.approx(38 / 1e-2)
    pre = edge_preconditioner(adam, [a, b])  # (sqrt(v_hat) + eps) / D with D = 0.1 for a, 1 for b
    assert pre.tolist() == pytest.approx([(1 + 1e-8) / 0.1] * 2 + [2 + 1e-8] * 3)
    single = torch.optim.SGD([a, b], lr=0.1)
    assert not stability_edge(single).preconditioned and step_scales(single, [a, b]).tolist() == [1.0] * 5
    frozen = torch.optim.SGD([{"params": [a], "lr": 0.0}, {"params": [b], "lr": 0.1}], lr=0.1)
    stepped = stepped_params(frozen, [a, b])  # a does not move: it leaves the compared Hessian
    assert stability_edge(frozen).preconditioned and len(stepped) == 1 and stepped[0] is b


class FullDataNet(L.LightningModule):
    """A small tanh network whose training step uses the whole data set (so the trajectory does not
    depend on the loader's order), while the monitor probes the loader's first batches."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
        self.loss_fn = nn.MSELoss()
        self.register_buffer("x", x)
        self.register_buffer("y", y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        return self.loss_fn(self(self.x), self.y) + 0.0 * batch[0].sum()

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _resume_fit(root: Path, shuffle_seed: int, ckpt: str | None) -> SharpnessMonitor:
    from lightning.pytorch.callbacks import ModelCheckpoint

    x, y = _regression_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(shuffle_seed))
    monitor = SharpnessMonitor(every_n_epochs=None, every_n_steps=3, num_batches=1, iters=6)
    saver = ModelCheckpoint(dirpath=root, every_n_train_steps=3, save_top_k=-1, filename="{step}")
    trainer = L.Trainer(max_steps=8, accumulate_grad_batches=2, callbacks=[monitor, saver],
                        **{**_TRAINER, "enable_checkpointing": True})
    trainer.fit(FullDataNet(x, y), loader, ckpt_path=ckpt)
    return monitor


def test_resume_mid_epoch_with_accumulation_gives_the_uninterrupted_history(tmp_path):
    whole = _resume_fit(tmp_path / "a", 3, None)
    assert [h["step"] for h in whole.history] == [0, 3, 6]
    # a new process: the loader's shuffle generator is not where it was when the first run started
    resumed = _resume_fit(tmp_path / "b", 4, str(tmp_path / "a" / "step=3.ckpt"))
    assert [h["step"] for h in resumed.history] == [0, 3, 6]  # step 3 not checked again after resuming
    assert [h["lambda_max"] for h in resumed.history] == pytest.approx([h["lambda_max"] for h in whole.history],
                                                                      rel=1e-6)
