"""The shared gradient-statistics cache and GradNormMonitor, on real Trainers and real TensorBoard files."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import grad_norm
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import ConfigError
from lightning_optkit.callbacks import AutoClip, GradNormMonitor
from lightning_optkit.callbacks._grad_stats import GradStats, Grouping, current_stats, grad_stats


class Net(L.LightningModule):
    """``blocks`` (a Sequential: Linear, Tanh, Linear) and ``head``; SGD by default."""

    def __init__(self, lr: float = 0.1, opt: str = "sgd") -> None:
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 1)
        self.lr, self.opt = lr, opt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.blocks(x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.opt == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def data(n: int = 64, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True).tanh()), batch_size=batch_size)


def trainer(tmp_path: Path, callbacks: list[Callback], logger: Any = False, **kw: Any) -> L.Trainer:
    kw.setdefault("max_epochs", 1)
    return L.Trainer(accelerator="cpu", devices=1, logger=logger, callbacks=callbacks, default_root_dir=str(tmp_path),
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kw)


class Reference(Callback):
    """Records, per optimizer step, Lightning's own per-parameter norms and torch's total norm."""

    def __init__(self, norm_type: float = 2.0) -> None:
        self.norm_type = norm_type
        self.per_step: dict[int, dict[str, float]] = {}

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        norms = {k.split("/", 1)[1]: float(v) for k, v in grad_norm(pl_module, self.norm_type).items() if "/" in k}
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        norms["total"] = float(torch.nn.utils.get_total_norm(grads, self.norm_type))
        self.per_step[trainer.global_step] = norms


def scalars(log_dir: str) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


# -- the cache -------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_type", [1.0, 2.0, math.inf])
def test_stats_match_torch(norm_type: float) -> None:
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2, 2, 2))]
    for p in params:
        p.grad = torch.randn_like(p)
    stats = GradStats.from_params(params, ["a.weight", "a.bias", "b.weight"])
    expected = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type)
    assert torch.allclose(stats.total(norm_type), expected)
    for got, p in zip(stats.norms(norm_type).tolist(), params):
        assert got == pytest.approx(float(torch.linalg.vector_norm(p.grad, norm_type)), rel=1e-6)
    names, groups = stats.group_norms(Grouping(1, owner="t"), norm_type)
    assert names == ["a", "b"]
    a_ref = torch.nn.utils.get_total_norm([params[0].grad, params[1].grad], norm_type)
    assert groups[0].item() == pytest.approx(a_ref.item(), rel=1e-6)


def test_stats_mixed_dtypes_keep_registration_order() -> None:
    params = [nn.Parameter(torch.ones(4, dtype=torch.float64)), nn.Parameter(torch.ones(9)),
              nn.Parameter(torch.ones(1, dtype=torch.float64))]
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, float(i + 1))
    stats = GradStats.from_params(params, ["x", "y", "z"])
    assert len(stats.buckets) == 2
    assert stats.norms(2).tolist() == pytest.approx([2.0, 6.0, 3.0])
    assert stats.norms(2).dtype == torch.float32


def test_stats_nonfinite_flags_and_position() -> None:
    params = [nn.Parameter(torch.zeros(2)) for _ in range(4)]
    grads = [torch.ones(2), torch.tensor([1.0, float("nan")]), torch.ones(2), torch.tensor([float("inf"), 0.0])]
    for p, g in zip(params, grads):
        p.grad = g
    stats = GradStats.from_params(params, ["a", "b", "c", "d"])
    assert not bool(stats.finite())
    assert stats.nonfinite_at().tolist() == [1, 3]
    for p in params:
        p.grad = torch.ones(2)
    clean = GradStats.from_params(params, ["a", "b", "c", "d"])
    assert bool(clean.finite()) and clean.nonfinite_at().tolist() == [-1, -1]


def test_grouping_rules() -> None:
    auto = Grouping("auto", owner="t")
    assert auto.group_of("encoder.layers.11.self_attn.in_proj_weight") == "encoder.layers.11"
    assert auto.group_of("head.weight") == "head"
    assert auto.group_of("scale") == "scale"
    assert Grouping(2, owner="t").group_of("encoder.layers.0.linear1.weight") == "encoder.layers"
    rx = Grouping({"attn": [r"self_attn", r"\.attn\."], "ff": r"linear[12]"}, owner="t")
    assert [rx.group_of(n) for n in ("l.0.self_attn.w", "l.0.linear2.b", "embed.weight")] == ["attn", "ff", "other"]
    assert rx.assign(["embed.w", "l.0.self_attn.w", "l.1.self_attn.w"]) == (["other", "attn"], [0, 1, 1])


@pytest.mark.parametrize(("spec", "match"), [
    ("bogus", "expected 'auto', a depth"), (0, "depth of at least 1"), ({"g": "("}, "valid regular expression"),
    ({}, "non-empty mapping"), (1.5, "expected 'auto'"),
])
def test_grouping_errors(spec: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Grouping(spec, owner="GradNormMonitor.groups")


class SameStats(Callback):
    """Checks that every reader of a step gets the very same statistics object."""

    def __init__(self) -> None:
        self.ids: list[tuple[int, int]] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        a, b = grad_stats(trainer, optimizer), grad_stats(trainer, optimizer)
        assert a is b
        assert "autoclip" in a.extras  # AutoClip ran first and shared its threshold
        self.ids.append((id(a), a.step))


def test_cache_computed_once_and_shared(tmp_path: Path) -> None:
    same = SameStats()
    t = trainer(tmp_path, [AutoClip(), GradNormMonitor(log_every_n_steps=1), same], max_steps=5)
    t.fit(Net(), data())
    assert [s for _, s in same.ids] == list(range(5))
    assert len({i for i, _ in same.ids}) >= 2  # a new object each step


def test_cache_is_the_accumulated_unclipped_gradient(tmp_path: Path) -> None:
    ref = Reference()
    mon = GradNormMonitor(log_every_n_steps=1, detail_every_n_steps=1, per_param=True)
    seen: dict[int, float] = {}

    class Grab(Callback):
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if "grad_norm/total" in mon.last:
                seen[trainer.global_step - 1] = mon.last["grad_norm/total"]
            mon.last = {}

    t = trainer(tmp_path, [mon, ref, Grab()], accumulate_grad_batches=2, max_steps=4)
    t.fit(Net(), data())
    assert sorted(seen) == [0, 1, 2, 3]  # one value per optimizer step, not per batch
    for step, value in seen.items():
        assert value == pytest.approx(ref.per_step[step]["total"], rel=1e-5)


# -- GradNormMonitor --------------------------------------------------------------------------------


def test_monitor_tensorboard_cadences_and_values(tmp_path: Path) -> None:
    ref = Reference()
    mon = GradNormMonitor(log_every_n_steps=2, detail_every_n_steps=4, per_param=True, param_norms=True,
                          histogram_every_n_steps=4)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    t = trainer(tmp_path, [mon, ref], logger=logger, max_steps=8)
    t.fit(Net(), data())
    got = scalars(logger.log_dir)
    assert sorted(got["grad_norm/total"]) == [1, 3, 5, 7]
    for step in (1, 3, 5, 7):
        assert got["grad_norm/total"][step] == pytest.approx(ref.per_step[step]["total"], rel=1e-5)
    for group in ("blocks.0", "blocks.2", "head"):
        assert sorted(got[f"grad_norm/{group}"]) == [3, 7]
        assert sorted(got[f"param_norm/{group}"]) == [3, 7]
        assert sorted(got[f"update_ratio/{group}"]) == [3, 7]
    for name in ("blocks.0.weight", "blocks.2.bias", "head.weight"):
        assert got[f"grad_norm/param/{name}"][3] == pytest.approx(ref.per_step[3][name], rel=1e-5)
    g0 = math.sqrt(ref.per_step[3]["blocks.0.weight"] ** 2 + ref.per_step[3]["blocks.0.bias"] ** 2)
    assert got["grad_norm/blocks.0"][3] == pytest.approx(g0, rel=1e-5)
    acc = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0})
    acc.Reload()
    assert {"grad_norm_hist/blocks.0", "grad_norm_hist/head"} <= set(acc.Tags()["histograms"])


def test_update_ratio_is_the_applied_update(tmp_path: Path) -> None:
    """With plain SGD the update is lr * grad, so the ratio is lr * |g| / |w_after| per group."""
    mon = GradNormMonitor(log_every_n_steps=1, detail_every_n_steps=1, param_norms=True)
    ref = Reference()
    net = Net(lr=0.05)
    t = trainer(tmp_path, [mon, ref], max_steps=3)
    t.fit(net, data())
    head_norm = float(torch.linalg.vector_norm(torch.cat([p.detach().flatten() for p in net.head.parameters()])))
    g = math.sqrt(ref.per_step[2]["head.weight"] ** 2 + ref.per_step[2]["head.bias"] ** 2)
    assert mon.last["param_norm/head"] == pytest.approx(head_norm, rel=1e-5)
    assert mon.last["update_ratio/head"] == pytest.approx(0.05 * g / head_norm, rel=1e-4)


@pytest.mark.parametrize("norm_type", [1, "inf"])
def test_monitor_norm_types_csv(tmp_path: Path, norm_type: Any) -> None:
    nt = math.inf if norm_type == "inf" else float(norm_type)
    ref = Reference(nt)
    mon = GradNormMonitor(norm_type=norm_type, groups=None)
    logger = CSVLogger(str(tmp_path), name="csv")
    t = trainer(tmp_path, [mon, ref], logger=logger, max_steps=3, log_every_n_steps=1)
    t.fit(Net(), data())
    with open(Path(logger.log_dir) / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    values = {int(r["step"]): float(r["grad_norm/total"]) for r in rows if r.get("grad_norm/total")}
    assert sorted(values) == [0, 1, 2]
    for step, value in values.items():
        assert value == pytest.approx(ref.per_step[step]["total"], rel=1e-5)


def test_monitor_does_nothing_on_quiet_steps(tmp_path: Path) -> None:
    """Off-cadence steps compute nothing: no statistics object is even created for them."""
    made: list[int] = []

    class Count(Callback):  # runs after the monitor in the same hook
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            if current_stats(trainer, optimizer) is not None:
                made.append(trainer.global_step)

    mon = GradNormMonitor(log_every_n_steps=3, detail_every_n_steps=6)
    t = trainer(tmp_path, [mon, Count()], max_steps=7)
    t.fit(Net(), data())
    assert made == [2, 5]
    assert mon.steps_logged == 2


def test_two_monitors_coexist_and_state_roundtrip(tmp_path: Path) -> None:
    a = GradNormMonitor(log_every_n_steps=1)
    b = GradNormMonitor(norm_type="inf", prefix="grad_inf", log_every_n_steps=1)
    assert a.state_key != b.state_key
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    t = trainer(tmp_path, [a, b], logger=logger, max_steps=2)
    t.fit(Net(), data())
    tags = scalars(logger.log_dir)
    assert "grad_norm/total" in tags and "grad_inf/total" in tags
    assert tags["grad_inf/total"][1] <= tags["grad_norm/total"][1]
    path = tmp_path / "m.ckpt"
    t.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    c = GradNormMonitor(norm_type="inf", prefix="grad_inf")
    c.load_state_dict(ckpt["callbacks"][b.state_key])
    assert c.steps_logged == 2 and c.last == b.last


def test_monitor_without_logger_warns(tmp_path: Path) -> None:
    mon = GradNormMonitor(log_every_n_steps=1)
    with pytest.warns(UserWarning, match="no logger"):
        trainer(tmp_path, [mon], max_steps=2).fit(Net(), data())
    assert "grad_norm/total" in mon.last


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"norm_type": 3}, r"GradNormMonitor.norm_type: got 3; expected one of 1, 2, 'inf'"),
    ({"log_every_n_steps": 0}, r"GradNormMonitor.log_every_n_steps: got 0; expected an integer >= 1"),
    ({"prefix": "a/b"}, r"GradNormMonitor.prefix"),
    ({"groups": None, "param_norms": True}, r"param_norms=True"),
    ({"histogram_every_n_steps": -1}, r"histogram_every_n_steps"),
])
def test_monitor_argument_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        GradNormMonitor(**kwargs)


def test_public_import() -> None:
    import lightning_optkit.callbacks as cb

    assert cb.GradNormMonitor is GradNormMonitor
    assert "GradNormMonitor" in dir(cb)


def test_norms_are_unscaled_under_fp16_gradscaler(tmp_path: Path) -> None:
    """A fused optimizer unscales inside step(), so Lightning hands the hook scaled gradients: the cache divides."""
    from lightning.pytorch.plugins import MixedPrecision

    seen: list[tuple[float, float]] = []
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    class Scaled(Callback):
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            raw = float(torch.nn.utils.get_total_norm(grads))
            seen.append((raw / float(scaler.get_scale()), float(grad_stats(trainer, optimizer).total(2.0))))

    class FusedNet(Net):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1, fused=True)

    trainer(tmp_path, [Scaled()], max_steps=3, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)]).fit(
        FusedNet(), data())
    assert len(seen) == 3
    for unscaled, cached in seen:
        assert cached == pytest.approx(unscaled, rel=1e-4)
