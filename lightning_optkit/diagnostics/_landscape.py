"""Loss landscape along filter-normalized random directions (Li, Xu, Taylor, Studer and Goldstein, NeurIPS 2018).

A random Gaussian direction ``d`` has a scale unrelated to the weights, so plots of different
networks (or of one network before and after training) are not comparable. Filter normalization
fixes it: for every filter ``i`` (a row of a linear weight, an output channel of a convolution),
``d_i <- d_i / ||d_i|| * ||theta_i||``, so a step of 1 along ``d`` moves every filter by its own norm.
As in the paper, one-dimensional parameters (biases, normalization scales and shifts) get a zero
direction unless ``include_1d=True`` (then they are normalized as one filter each).

The loss is evaluated on a grid ``theta + a d1 (+ b d2)`` over fixed batches, in eval mode, and the
model is restored bit for bit afterwards.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._internal.io import atomic_write_figure
from ..config import ConfigError
from ._hessian import Forward, LossFn, probing

__all__ = ["LossLandscape", "filter_normalized_direction", "loss_landscape"]


@dataclass
class LossLandscape:
    """Losses on a 1-D line or a 2-D grid around the weights.

    Attributes:
        alphas: coordinates along the first direction; ``betas`` along the second (2-D only).
        losses: shape ``(len(alphas),)`` or ``(len(alphas), len(betas))`` (``losses[i, j]`` at
            ``alphas[i], betas[j]``).
        base_loss: the loss at the weights themselves.
        directions: the filter-normalized directions, one list of tensors (parameter-shaped) each.
        names: the parameters they cover. ``seconds`` and ``evaluations`` (grid points): the cost.
    """

    alphas: np.ndarray
    betas: np.ndarray | None
    losses: np.ndarray
    base_loss: float
    dims: int
    seconds: float
    evaluations: int
    names: list[str] = field(default_factory=list)
    directions: list[list[torch.Tensor]] = field(default_factory=list)

    def plot(self, path: str | os.PathLike[str] | None = None, title: str | None = None, log_scale: bool = False) -> Any:
        """A matplotlib Figure (line for 1-D, filled contour for 2-D); saved as PNG atomically when ``path`` is given.

        Uses the Agg canvas directly, so no pyplot state and no display are involved.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        values = np.log10(np.maximum(self.losses, 1e-12)) if log_scale else self.losses
        label = "log10 loss" if log_scale else "loss"
        if self.dims == 1:
            ax.plot(self.alphas, values, marker=".")
            ax.set_xlabel("alpha (filter-normalized direction)")
            ax.set_ylabel(label)
        else:
            grid = ax.contourf(self.alphas, self.betas, values.T, levels=30, cmap="viridis")
            ax.contour(self.alphas, self.betas, values.T, levels=15, colors="white", linewidths=0.4)
            fig.colorbar(grid, ax=ax, label=label)
            ax.set_xlabel("alpha")
            ax.set_ylabel("beta")
        ax.set_title(title or f"loss landscape ({self.dims}-D, filter-normalized)")
        if path is not None:
            atomic_write_figure(path, fig)
        return fig


def filter_normalized_direction(params: list[torch.Tensor], generator: torch.Generator,
                                include_1d: bool = False) -> list[torch.Tensor]:
    """A Gaussian direction with every filter rescaled to the norm of the matching filter of ``params``.

    Example:
        >>> w = [torch.randn(4, 3), torch.randn(4)]
        >>> d = filter_normalized_direction(w, torch.Generator().manual_seed(0))
        >>> torch.allclose(d[0].norm(dim=1), w[0].norm(dim=1)), bool((d[1] == 0).all())
        (True, True)
    """
    out = []
    for p in params:
        d = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.device, p.dtype)
        if p.ndim <= 1:
            if not include_1d:
                out.append(torch.zeros_like(p))
                continue
            out.append(d * (p.detach().norm() / d.norm().clamp_min(1e-12)))
            continue
        flat_d, flat_p = d.reshape(d.shape[0], -1), p.detach().reshape(p.shape[0], -1)
        scale = flat_p.norm(dim=1, keepdim=True) / flat_d.norm(dim=1, keepdim=True).clamp_min(1e-12)
        out.append((flat_d * scale).reshape(p.shape))
    return out


def _grid(dims: int, steps: int, span: tuple[float, float]) -> tuple[np.ndarray, np.ndarray | None]:
    alphas = np.linspace(span[0], span[1], steps)
    return alphas, (alphas.copy() if dims == 2 else None)


def loss_landscape(
    model: nn.Module, data: Any, loss_fn: LossFn, dims: int = 1, steps: int = 21,
    span: tuple[float, float] = (-1.0, 1.0), params: Iterable[Any] | None = None, include_1d: bool = False,
    max_batches: int | None = 4, seed: int = 0, forward: Forward | None = None, train_mode: bool = False,
) -> LossLandscape:
    """Evaluate the loss along one or two filter-normalized random directions around the current weights.

    Args:
        dims: 1 (a line, ``steps`` evaluations) or 2 (a grid, ``steps**2`` evaluations).
        steps: points per axis (>= 3). ``span``: the coordinate range of each axis.
        include_1d: also perturb biases and normalization parameters (zero direction by default).
        seed: seeds a private generator for the directions; the global RNGs are not drawn from.
        Other arguments as in :func:`hessian_eigenvalues`.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        >>> land = loss_landscape(net, (x, y), torch.nn.CrossEntropyLoss(), dims=2, steps=5)
        >>> land.losses.shape, bool(abs(land.losses[2, 2] - land.base_loss) < 1e-6)
        ((5, 5), True)
    """
    from .._internal.checks import check_int

    if dims not in (1, 2):
        raise ConfigError("loss_landscape.dims", dims, "1 or 2")
    steps = int(check_int("loss_landscape", "steps", steps, minimum=3) or 3)
    if len(span) != 2 or not span[0] < span[1]:
        raise ConfigError("loss_landscape.span", span, "(low, high) with low < high")
    alphas, betas = _grid(dims, steps, span)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    with probing(model, data, loss_fn, params, forward, max_batches, train_mode, grad=False) as (probe, originals):
        base = [originals[id(p)] for p in probe.params]
        directions = [filter_normalized_direction(base, gen, include_1d) for _ in range(dims)]
        base_loss = probe.loss()
        coords = [(a, b) for a in alphas for b in (betas if betas is not None else [0.0])]
        losses = []
        for a, b in coords:
            for i, p in enumerate(probe.params):
                step = base[i] + a * directions[0][i]
                p.copy_(step + b * directions[1][i] if dims == 2 else step)
            losses.append(probe.loss())
    shape = (steps, steps) if dims == 2 else (steps,)
    return LossLandscape(alphas, betas, np.asarray(losses).reshape(shape), base_loss, dims,
                         time.perf_counter() - t0, len(coords), probe.names, directions)
