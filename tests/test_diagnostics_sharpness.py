"""Hessian eigenvalues, Hutchinson trace and the perturbation probe against the exact Hessian."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from lightning_optkit import ConfigError
from lightning_optkit._internal.rng import collect_rng_state as rng_states
from lightning_optkit.diagnostics import hessian_eigenvalues, hessian_trace, perturbation_sharpness


def _tiny_problem(seed: int = 0) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    batches = [(torch.randn(32, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (32,), generator=g))
               for _ in range(2)]
    return net, batches


def _exact_hessian(net: nn.Module, batches: list, loss_fn: nn.Module) -> torch.Tensor:
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    n = sum(b[0].shape[0] for b in batches)

    def loss(flat: torch.Tensor) -> torch.Tensor:
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            size = int(torch.Size(shape).numel())
            params[name] = flat[start:start + size].view(shape)
            start += size
        return sum(loss_fn(functional_call(net, params, (x,)), y) * x.shape[0] / n for x, y in batches)

    return torch.autograd.functional.hessian(loss, flat0)


@pytest.fixture(scope="module")
def exact() -> tuple[nn.Module, list, torch.Tensor]:
    net, batches = _tiny_problem()
    return net, batches, torch.linalg.eigvalsh(_exact_hessian(net, batches, nn.CrossEntropyLoss()))


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalue_within_one_percent(exact, method):
    net, batches, evals = exact
    res = hessian_eigenvalues(net, batches, nn.CrossEntropyLoss(), k=1, iters=300, method=method, tol=1e-4)
    assert res.converged
    assert abs(res.eigenvalues[0] - evals[-1].item()) / evals[-1].item() < 0.01
    assert res.hvps == res.iterations and res.num_params == evals.numel()


def test_top_three_eigenvalues_lanczos(exact):
    net, batches, evals = exact
    res = hessian_eigenvalues(net, batches, nn.CrossEntropyLoss(), k=3, iters=80, return_vectors=True)
    want = evals.flip(0)[:3]
    assert torch.allclose(torch.tensor(res.eigenvalues, dtype=torch.float64), want, rtol=1e-2)
    assert res.eigenvectors is not None and res.eigenvectors.shape == (3, evals.numel())
    exact_vecs = torch.linalg.eigh(_exact_hessian(net, batches, nn.CrossEntropyLoss()))[1]
    cosine = (res.eigenvectors[0].double() @ exact_vecs[:, -1]).abs().item()
    assert cosine > 0.99
    assert res.hvps < evals.numel()  # cheaper than forming the Hessian column by column


def test_trace_within_five_percent(exact):
    net, batches, evals = exact
    res = hessian_trace(net, batches, nn.CrossEntropyLoss(), samples=300, seed=1)
    assert res.samples == 300 and res.hvps == 300
    assert abs(res.trace - evals.sum().item()) / abs(evals.sum().item()) < 0.05
    assert res.stderr > 0


def test_selected_parameters_match_the_sub_hessian(exact):
    net, batches, _ = exact
    full = _exact_hessian(net, batches, nn.CrossEntropyLoss())
    n_first = sum(p.numel() for p in net[0].parameters())
    sub = torch.linalg.eigvalsh(full[n_first:, n_first:])  # the head: parameters of net[2]
    res = hessian_eigenvalues(net, batches, nn.CrossEntropyLoss(), params=["2.*"], iters=60)
    assert res.num_params == sub.numel()
    assert abs(res.eigenvalues[0] - sub[-1].item()) / sub[-1].item() < 0.01


class _Stateful(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.bn(self.lin(x)).relu()))


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _rng_equal(a: dict, b: dict) -> bool:
    return (a["python"] == b["python"] and torch.equal(a["torch"], b["torch"])
            and all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a["numpy"], b["numpy"])))


@pytest.mark.parametrize("probe", ["eig", "trace", "perturb", "eig_train_mode"])
def test_everything_is_restored_bitwise(probe):
    torch.manual_seed(3)
    net = _Stateful()
    net.train()
    net.head.train(False)  # mixed modes must come back as they were
    net.lin.bias.requires_grad_(False)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    net(x)  # moves the batch-norm statistics away from their initial values
    state = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    random.random(), np.random.rand(), torch.rand(1)
    rng = rng_states()
    loss = nn.CrossEntropyLoss()
    if probe == "eig":
        hessian_eigenvalues(net, (x, y), loss, k=2, iters=10)
    elif probe == "eig_train_mode":
        hessian_eigenvalues(net, (x, y), loss, k=1, iters=5, method="power", train_mode=True)
    elif probe == "trace":
        hessian_trace(net, [(x, y), (x[:8], y[:8])], loss, samples=5, params=[net.lin.bias, net.head.weight])
    else:
        perturbation_sharpness(net, (x, y), loss, sigma=0.5, samples=4)
    assert _state_equal(state, net.state_dict())
    assert [m.training for m in net.modules()] == modes
    assert net.lin.bias.requires_grad is False and all(p.grad is None for p in net.parameters())
    assert _rng_equal(rng, rng_states())


def test_perturbation_probe_grows_with_sigma_and_matches_first_order(exact):
    net, batches, _ = exact
    small = perturbation_sharpness(net, batches, nn.CrossEntropyLoss(), sigma=1e-3, samples=200, relative=False)
    big = perturbation_sharpness(net, batches, nn.CrossEntropyLoss(), sigma=1e-2, samples=200, relative=False)
    assert 0 < small.ratio < big.ratio
    # first order: L(w + e) - L(w) = g . e with e ~ N(0, sigma^2 I), so std(L) = sigma * ||g||
    n = sum(x.shape[0] for x, _ in batches)
    loss = sum(nn.functional.cross_entropy(net(x), y) * x.shape[0] / n for x, y in batches)
    grad_norm = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(net.parameters()))]).norm().item()
    assert abs(small.std / 1e-3 - grad_norm) / grad_norm < 0.15
    assert abs(small.base_loss - loss.item()) < 1e-9


def test_bad_arguments_raise_config_errors(exact):
    net, batches, _ = exact
    with pytest.raises(ConfigError, match=r"hessian_eigenvalues.method"):
        hessian_eigenvalues(net, batches, nn.CrossEntropyLoss(), method="arnoldi")
    with pytest.raises(ConfigError, match=r"hessian_eigenvalues.k"):
        hessian_eigenvalues(net, batches, nn.CrossEntropyLoss(), k=0)
    with pytest.raises(ConfigError, match=r"params"):
        hessian_trace(net, batches, nn.CrossEntropyLoss(), params=["nothing.*"])
    with pytest.raises(ConfigError, match=r"perturbation_sharpness.samples"):
        perturbation_sharpness(net, batches, nn.CrossEntropyLoss(), samples=1)


def test_preconditioned_eigenvalue_matches_the_scaled_hessian(exact):
    net, batches, _ = exact
    full = _exact_hessian(net, batches, nn.CrossEntropyLoss())
    pre = torch.linspace(0.05, 2.0, full.shape[0], dtype=torch.float64)
    d = pre.rsqrt()
    want = torch.linalg.eigvalsh(d[:, None] * full * d[None, :])[-1].item()
    res = hessian_eigenvalues(net, batches, nn.CrossEntropyLoss(), preconditioner=pre, iters=150, tol=1e-4)
    assert abs(res.eigenvalues[0] - want) / want < 0.01
    with pytest.raises(ConfigError, match=r"preconditioner"):
        hessian_eigenvalues(net, batches, nn.CrossEntropyLoss(), preconditioner=-pre)


def test_a_dataloader_is_cut_to_max_batches_and_k_is_bounded(exact):
    net, batches, _ = exact
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    res = hessian_eigenvalues(net, loader, nn.CrossEntropyLoss(), max_batches=3, iters=50)
    assert res.num_samples == 48 and res.converged
    with pytest.raises(ConfigError, match=r"hessian_eigenvalues\.k"):
        hessian_eigenvalues(nn.Linear(2, 1).double(), (x[:, :2], y[:, None].double()), nn.MSELoss(), k=4)
