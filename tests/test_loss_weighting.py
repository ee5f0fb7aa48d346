"""Adaptive task weights of the ``weighted_sum`` loss: each rule against a hand computation, config
errors, no host sync in the rules, and a bitwise resume with a real Trainer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import ConfigError, OptimMixin, load_config
from lightning_optkit.losses import UncertaintyWeightedLoss, WeightedSumLoss, build_loss
from lightning_optkit.losses._weighting import DWAWeighting, InverseStdWeighting, rank_mean

FAST_TRAINER = dict(accelerator="cpu", devices=1, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False)


def _sum(weighting: str, **options: Any) -> WeightedSumLoss:
    loss = build_loss({"name": "weighted_sum", "losses": [{"name": "mse", "label": "a"},
                                                         {"name": "mse", "label": "b"}],
                       "weighting": weighting, **options})
    assert isinstance(loss, WeightedSumLoss)
    return loss


def _step(loss: WeightedSumLoss, a: float, b: float) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.tensor([a, b], requires_grad=True)
    total = loss.forward_tasks([values[0], values[1]])
    return total, loss.weights


def test_inverse_std_matches_hand_computation_with_a_wrapping_window() -> None:
    loss = _sum("inverse_std", window=2)
    steps = [(1.0, 10.0), (3.0, 10.0), (3.0, 30.0)]
    for i, (a, b) in enumerate(steps):
        total, weights = _step(loss, a, b)
        window = steps[max(0, i - 1): i + 1]  # the last two values, this step included
        stds = []
        for task in range(2):
            vals = [s[task] for s in window]
            mean = sum(vals) / len(vals)
            stds.append(math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals)))
        raw = [1 / (1 + s) for s in stds]
        expected = [2 * r / sum(raw) for r in raw]
        assert weights.tolist() == pytest.approx(expected, rel=1e-6)
        assert float(total.detach()) == pytest.approx(expected[0] * a + expected[1] * b, rel=1e-6)
    assert [round(v, 6) for v in loss.last_weights["b"].reshape(1).tolist()] == [round(expected[1], 6)]


def test_dwa_matches_hand_computation_over_periods() -> None:
    loss = _sum("dwa", window=2, temperature=2.0)
    steps = [(4.0, 8.0), (2.0, 8.0), (2.0, 6.0), (1.0, 6.0), (1.0, 1.0)]
    used = []
    for a, b in steps:
        values = torch.tensor([a, b], requires_grad=True)
        before = loss.weights.tolist()
        total = loss.forward_tasks(values)
        assert float(total.detach()) == pytest.approx(before[0] * a + before[1] * b, rel=1e-6)
        used.append(before)
    # periods: mean(4,2)=3, mean(8,8)=8 ; mean(2,1)=1.5, mean(6,6)=6 -> r = (0.5, 0.75), from step 5 on
    r = [1.5 / 3.0, 6.0 / 8.0]
    e = [math.exp(v / 2.0) for v in r]
    expected = [2 * v / sum(e) for v in e]
    assert used[:4] == [[1.0, 1.0]] * 4
    assert used[4] == pytest.approx(expected, rel=1e-6)
    assert loss.weights.tolist() == pytest.approx(expected, rel=1e-6)  # period 3 is not complete


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(3, 2, bias=False)
        self.head_a = nn.Linear(2, 1)
        self.head_b = nn.Linear(2, 1)

    def losses(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.trunk(x)
        return [self.head_a(h).pow(2).mean(), 100 * self.head_b(h).pow(2).mean()]


def test_gradnorm_matches_hand_computation() -> None:
    torch.manual_seed(0)
    model, x = _Shared(), torch.randn(5, 3)
    loss = _sum("gradnorm", alpha=0.5, shared_params="trunk.*")
    loss.bind(model)
    total = loss.forward_tasks(model.losses(x))  # step 1: L(0) recorded, ratios 1
    total.backward()
    w = loss.weighting.task_weights
    with torch.no_grad():
        w.copy_(torch.tensor([3.0, 1.0]))  # as if the optimizer moved them: renormalised to (1.5, 0.5)
    model.zero_grad()
    w.grad = None
    values = model.losses(x * 0.5)
    total = loss.forward_tasks(values)
    # hand computation
    wn = torch.tensor([1.5, 0.5])
    norms = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(v, [model.trunk.weight],
                                                                          retain_graph=True)]).norm()
                         for v in values])
    g = wn * norms
    first = torch.stack([t.detach() for t in model.losses(x)])
    ratio = torch.stack([v.detach() for v in values]) / first
    target = g.mean() * (ratio / ratio.mean()) ** 0.5
    grad_w = torch.sign(g - target) * norms
    assert float(total.detach()) == pytest.approx(float(1.5 * values[0] + 0.5 * values[1]), rel=1e-6)
    ref_model_grads = torch.autograd.grad(1.5 * values[0] + 0.5 * values[1], list(model.parameters()),
                                          retain_graph=True)
    total.backward()
    assert torch.allclose(w.grad, grad_w, rtol=1e-5)
    for p, ref in zip(model.parameters(), ref_model_grads):
        assert torch.allclose(p.grad, ref, rtol=1e-5, atol=1e-7)
    assert loss.weights.tolist() == pytest.approx([1.5, 0.5])


def test_gradnorm_balances_the_weighted_terms_with_coefs() -> None:
    """G_i = coef_i * w_i * ||grad L_i||: the gradient norm of the term actually in the loss (Chen 2018)."""
    torch.manual_seed(0)
    model, x = _Shared(), torch.randn(5, 3)
    loss = build_loss({"name": "weighted_sum", "losses": [{"name": "mse", "label": "a", "coef": 2.0},
                                                         {"name": "mse", "label": "b", "coef": 0.05}],
                       "weighting": "gradnorm", "alpha": 0.5, "shared_params": "trunk.*"})
    loss.bind(model)
    loss.forward_tasks(model.losses(x)).backward()  # step 1: L(0) recorded
    w = loss.weighting.task_weights
    with torch.no_grad():
        w.copy_(torch.tensor([1.0, 3.0]))  # renormalised to (0.5, 1.5)
    model.zero_grad()
    w.grad = None
    values = model.losses(x * 0.5)
    total = loss.forward_tasks(values)
    wn, coef = torch.tensor([0.5, 1.5]), torch.tensor([2.0, 0.05])
    norms = torch.stack([torch.autograd.grad(v, model.trunk.weight, retain_graph=True)[0].norm() for v in values])
    g = coef * wn * norms  # by hand: the weighted terms' gradient norms
    first = torch.stack([t.detach() for t in model.losses(x)])
    ratio = torch.stack([v.detach() for v in values]) / first
    target = g.mean() * (ratio / ratio.mean()) ** 0.5
    expected_grad = torch.sign(g - target) * coef * norms
    without_coef = torch.sign(wn * norms - (wn * norms).mean() * (ratio / ratio.mean()) ** 0.5) * norms
    assert not torch.allclose(expected_grad, without_coef, rtol=1e-3)  # the case tells the two apart
    assert float(total.detach()) == pytest.approx(float(2.0 * 0.5 * values[0] + 0.05 * 1.5 * values[1]), rel=1e-6)
    total.backward()
    assert torch.allclose(w.grad, expected_grad, rtol=1e-5)


_RANK_LOSSES = [[(1.0, 10.0), (3.0, 10.0), (3.0, 30.0), (2.0, 5.0)],   # rank 0's per-step task losses
                [(5.0, 2.0), (1.0, 6.0), (7.0, 10.0), (2.0, 1.0)]]    # rank 1's


def _ddp_rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from lightning_optkit.losses._weighting import DWAWeighting, InverseStdWeighting, rank_mean

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        rules = [InverseStdWeighting(2, window=2), DWAWeighting(2, window=1, temperature=2.0)]
        for step in _RANK_LOSSES[rank]:
            weights = [rule(torch.tensor(step, requires_grad=True))[0] for rule in rules]
        mean = rank_mean(torch.tensor(_RANK_LOSSES[rank][0]))
        torch.save({"weights": [w.detach() for w in weights], "mean": mean}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_rank_mean_is_a_no_op_in_one_process() -> None:
    values = torch.tensor([1.0, 2.0])
    assert not torch.distributed.is_initialized() and rank_mean(values) is values


def test_inverse_std_and_dwa_record_the_mean_over_ranks_under_ddp(tmp_path: Path) -> None:
    """Two gloo processes with different losses end with the same weights: those of the averaged losses."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert got[0]["mean"].tolist() == got[1]["mean"].tolist() == [3.0, 6.0]
    rules = [InverseStdWeighting(2, window=2), DWAWeighting(2, window=1, temperature=2.0)]
    for a, b in zip(*_RANK_LOSSES):
        mean = [(x + y) / 2 for x, y in zip(a, b)]
        expected = [rule(torch.tensor(mean, requires_grad=True))[0].detach() for rule in rules]
    for rank in range(2):
        for w, e in zip(got[rank]["weights"], expected):
            assert torch.allclose(w, e, rtol=1e-6)
    assert not torch.allclose(expected[0], torch.ones(2))  # the weights did adapt


def test_gradnorm_unbound_or_matching_nothing_says_what_to_do() -> None:
    loss = _sum("gradnorm", shared_params="trunk.*")
    with pytest.raises(RuntimeError, match="bind"):
        loss.forward_tasks(torch.tensor([1.0, 2.0], requires_grad=True))
    loss = _sum("gradnorm", shared_params="backbone.*")
    model = _Shared()
    loss.bind(model)
    with pytest.raises(ValueError, match="shared_params"):
        loss.forward_tasks(model.losses(torch.randn(2, 3)))


def test_uncertainty_key_matches_the_existing_uncertainty_loss() -> None:
    mine = _sum("uncertainty", init_log_var=0.3)
    theirs = build_loss({"name": "uncertainty", "losses": ["mse", "mse"], "init_log_var": 0.3})
    assert isinstance(theirs, UncertaintyWeightedLoss)  # the old spelling still builds the old class
    values = torch.tensor([2.0, 5.0])
    assert torch.allclose(mine.forward_tasks(values), theirs(values))
    assert [n for n, _ in mine.named_parameters()] == ["weighting.log_vars"]
    assert mine.weights.tolist() == pytest.approx([math.exp(-0.3)] * 2)


def test_eval_mode_uses_the_weights_without_updating() -> None:
    loss = _sum("inverse_std", window=4)
    _step(loss, 1.0, 5.0)
    _step(loss, 2.0, 9.0)
    state = {k: v.clone() for k, v in loss.state_dict().items()}
    loss.eval()
    total = loss.forward_tasks(torch.tensor([7.0, 1.0], requires_grad=True))
    w = state["weighting.weights"]
    assert float(total.detach()) == pytest.approx(float(w[0] * 7.0 + w[1] * 1.0))
    assert all(torch.equal(state[k], v) for k, v in loss.state_dict().items())


class _NoSync(TorchFunctionMode):
    """Fails on any tensor-to-host read (the calls that would sync a GPU stream)."""

    BANNED = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
              torch.Tensor.__int__, torch.Tensor.numpy}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.BANNED:
            raise AssertionError(f"host sync via {func.__name__}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("weighting", ["inverse_std", "dwa", "gradnorm", "uncertainty"])
def test_rules_never_read_values_on_the_host(weighting: str) -> None:
    model = _Shared()
    options = {"shared_params": "trunk.*"} if weighting == "gradnorm" else {}
    loss = _sum(weighting, **options)
    loss.bind(model)
    x = torch.randn(4, 3)
    with _NoSync():
        for _ in range(3):
            loss.forward_tasks(model.losses(x)).backward()
    with pytest.raises(AssertionError, match="host sync"), _NoSync():
        float(x.sum())  # the guard itself works


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"weighting": "inverse_sdt"}, "loss.weighting"),
        ({"weighting": "dwa", "temperature": -1.0}, "loss.temperature"),
        ({"weighting": "dwa", "window": 0}, "loss.window"),
        ({"weighting": "gradnorm"}, "loss.shared_params"),
        ({"weighting": "gradnorm", "shared_params": "x.*", "alpha": -0.5}, "loss.alpha"),
        ({"weighting": "fixed", "temperature": 2.0}, "loss.temperature"),
        ({"weighting": "inverse_std", "init_log_var": 0.0}, "loss.init_log_var"),
    ],
)
def test_bad_weighting_config_names_the_key(options: dict[str, Any], path: str) -> None:
    cfg = {"optimizer": {"name": "sgd", "lr": 0.1},
           "loss": {"name": "weighted_sum", "losses": ["mse", "l1"], **options}}
    with pytest.raises(ConfigError) as err:
        load_config(cfg)  # caught at load time, before anything is built
    assert err.value.path == path
    if path == "loss.weighting":
        assert "inverse_std" in err.value.suggestions


# -- a real Trainer: two tasks whose losses differ 100x in scale ------------------------------------------


class TwoTask(OptimMixin, L.LightningModule):
    def __init__(self, optim: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.trunk = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.head_a = nn.Linear(8, 1)
        self.head_b = nn.Linear(8, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, ya, yb = batch
        h = self.trunk(x)
        return self.loss_fn.forward_tasks([(self.head_a(h), ya), (self.head_b(h), yb)])


def _two_task_loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=g)
    ya = x[:, :1].sin()
    yb = 10 * (x[:, 1:2] * x[:, 2:3])
    return DataLoader(TensorDataset(x, ya, yb), batch_size=8)


def _optim(weighting: str) -> dict:
    loss: dict[str, Any] = {"name": "weighted_sum", "weighting": weighting,
                            "losses": [{"name": "mse", "label": "a"}, {"name": "mse", "label": "b"}]}
    if weighting == "gradnorm":
        loss["shared_params"] = "trunk.*"
    if weighting in ("inverse_std", "dwa"):
        loss["window"] = 4
    return {"optimizer": {"name": "adam", "lr": 0.01}, "loss": loss}


def _fit(weighting: str, epochs: int, root: Path, ckpt: str | None = None) -> tuple[TwoTask, L.Trainer]:
    torch.manual_seed(0)
    model = TwoTask(_optim(weighting))
    kwargs = {**FAST_TRAINER, "logger": L.pytorch.loggers.CSVLogger(root), "log_every_n_steps": 2}
    trainer = L.Trainer(max_epochs=epochs, default_root_dir=root, **kwargs)
    trainer.fit(model, _two_task_loader(), ckpt_path=ckpt, weights_only=True)
    return model, trainer


class _NoSyncTwoTask(TwoTask):
    """The loss, its weighting rule and its ``log_dict`` of the weights run under the host-sync guard."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, ya, yb = batch
        h = self.trunk(x)
        items = [(self.head_a(h), ya), (self.head_b(h), yb)]
        with _NoSync():
            return self.loss_fn.forward_tasks(items)


@pytest.mark.parametrize("weighting", ["inverse_std", "dwa", "uncertainty"])
def test_logging_the_weights_in_a_trainer_never_reads_the_host(weighting: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _NoSyncTwoTask(_optim(weighting))
    trainer = L.Trainer(max_epochs=2, logger=L.pytorch.loggers.CSVLogger(tmp_path), log_every_n_steps=3,
                        **FAST_TRAINER)
    trainer.fit(model, _two_task_loader())
    rows = (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()
    assert "loss_weight/a" in rows[0] and len(rows) - 1 == 12 // 3  # the weights did reach the logger


@pytest.mark.parametrize("weighting", ["inverse_std", "dwa", "gradnorm", "uncertainty"])
def test_resume_is_bitwise_and_weights_are_logged(weighting: str, tmp_path: Path) -> None:
    straight, trainer = _fit(weighting, 4, tmp_path / "straight")
    assert {"loss_weight/a", "loss_weight/b"} <= set(trainer.logged_metrics)
    metrics = (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()
    assert "loss_weight/a" in metrics[0] and len(metrics) - 1 == 24 // 2  # every 2nd of 24 steps
    _, first = _fit(weighting, 2, tmp_path / "first")
    ckpt = tmp_path / "half.ckpt"
    first.save_checkpoint(ckpt)
    resumed, _ = _fit(weighting, 4, tmp_path / "resumed", ckpt=str(ckpt))
    a, b = straight.state_dict(), resumed.state_dict()
    assert any(k.startswith("loss_fn.weighting.") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(straight.loss_fn.weights, torch.ones(2))  # the weights did adapt


def test_docstring_examples_run() -> None:
    import doctest

    from lightning_optkit.losses import _composite, _weighting

    for module in (_weighting, _composite):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0


def test_shared_arguments_path_with_coefs_and_adaptive_weights() -> None:
    loss = build_loss({"name": "weighted_sum", "weighting": "inverse_std", "window": 3,
                       "losses": [{"name": "mse"}, {"name": "l1", "coef": 0.5}]})
    assert list(loss.state_dict()) == ["weighting.history", "weighting.count", "weighting.weights"]
    x, y = torch.tensor([1.0, 3.0], requires_grad=True), torch.zeros(2)
    total = loss(x, y)  # one step: std 0, weights 1
    assert float(total.detach()) == pytest.approx(5.0 + 0.5 * 2.0)
    total = loss(2 * x, y)  # mse 5 -> 20 (std 7.5), l1 2 -> 4 (std 1)
    raw = [1 / 8.5, 1 / 2.0]
    w = [2 * r / sum(raw) for r in raw]
    assert float(total.detach()) == pytest.approx(w[0] * 20.0 + 0.5 * w[1] * 4.0, rel=1e-6)
    total.backward()
    assert x.grad is not None
