"""loss_landscape: filter normalization, exact values on a quadratic, restoration, the PNG plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_optkit import ConfigError
from lightning_optkit.diagnostics import loss_landscape
from lightning_optkit.diagnostics._landscape import filter_normalized_direction


def _least_squares() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x = torch.randn(48, 4, generator=g, dtype=torch.float64)
    y = torch.randn(48, 2, generator=g, dtype=torch.float64)
    return nn.Linear(4, 2, bias=False).double(), (x, y)


def test_a_quadratic_loss_gives_the_exact_parabola():
    net, (x, y) = _least_squares()
    land = loss_landscape(net, (x, y), nn.MSELoss(), dims=1, steps=9, span=(-2.0, 2.0))
    d = land.directions[0][0]
    w = net.weight.detach()
    for a, value in zip(land.alphas, land.losses):
        expected = nn.functional.mse_loss(x @ (w + a * d).T, y).item()
        assert value == pytest.approx(expected, rel=1e-12)
    assert land.losses[4] == pytest.approx(land.base_loss) and land.evaluations == 9
    assert land.names == ["weight"]
    # a parabola: constant second differences, h^2 times the curvature 2 mean((x d^T)^2) along d
    h = float(land.alphas[1] - land.alphas[0])
    second = np.diff(np.asarray(land.losses, dtype=np.float64), n=2)
    curvature = 2 * (x @ d.T).pow(2).mean().item()
    assert second == pytest.approx(np.full(7, h * h * curvature), rel=1e-9)


def test_filter_normalization_matches_each_filter_norm():
    conv = nn.Conv2d(3, 5, 3)
    d = filter_normalized_direction([conv.weight, conv.bias], torch.Generator().manual_seed(1))
    assert torch.allclose(d[0].flatten(1).norm(dim=1), conv.weight.detach().flatten(1).norm(dim=1))
    assert bool((d[1] == 0).all())  # biases are not moved unless include_1d
    d1 = filter_normalized_direction([conv.bias], torch.Generator().manual_seed(1), include_1d=True)
    assert d1[0].norm().item() == pytest.approx(conv.bias.norm().item())


def test_two_dimensional_grid_restores_the_model_and_plots(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 2))
    x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    land = loss_landscape(net, (x, y), nn.CrossEntropyLoss(), dims=2, steps=7, seed=3)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert net.training and torch.equal(rng, torch.get_rng_state())
    assert land.losses.shape == (7, 7) and land.betas is not None
    assert land.losses[3, 3] == pytest.approx(land.base_loss)
    assert land.losses[0, 0] > land.base_loss or land.losses[-1, -1] > land.base_loss
    again = loss_landscape(net, (x, y), nn.CrossEntropyLoss(), dims=2, steps=7, seed=3)
    assert np.array_equal(again.losses, land.losses)  # seeded directions
    png = tmp_path / "plots" / "landscape.png"
    fig = land.plot(png, log_scale=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.axes
    line = loss_landscape(net, (x, y), nn.CrossEntropyLoss(), steps=5)
    line.plot(tmp_path / "line.png")
    assert (tmp_path / "line.png").stat().st_size > 0


def test_bad_arguments():
    net, data = _least_squares()
    with pytest.raises(ConfigError, match=r"loss_landscape.dims"):
        loss_landscape(net, data, nn.MSELoss(), dims=3)
    with pytest.raises(ConfigError, match=r"loss_landscape.span"):
        loss_landscape(net, data, nn.MSELoss(), span=(1.0, -1.0))
    with pytest.raises(ConfigError, match=r"loss_landscape.steps"):
        loss_landscape(net, data, nn.MSELoss(), steps=2)
