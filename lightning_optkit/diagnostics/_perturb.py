"""The random-perturbation sharpness probe: how much the loss moves under small random weight noise.

A flat minimum keeps its loss when the weights are jittered; a sharp one does not. The probe adds
Gaussian noise to the selected parameters ``samples`` times, evaluates the loss over fixed batches
each time, and reports the ratio of the standard deviation of those losses to their mean (the
tuning guide's number) together with the mean increase over the unperturbed loss. No gradients are
needed, so it costs ``samples + 1`` forward passes per batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._hessian import Forward, LossFn, probing

__all__ = ["PerturbationResult", "perturbation_sharpness"]


@dataclass
class PerturbationResult:
    """Losses under random weight perturbations.

    Attributes:
        ratio: ``std / mean`` of the perturbed losses (the guide's sharpness number).
        mean, std: of the perturbed losses; ``base_loss``: the unperturbed loss.
        increase: ``mean - base_loss``, which for small isotropic noise is about ``sigma^2 tr(H) / 2``.
        sigma, relative, samples, seconds: how it was computed; ``losses``: every perturbed loss.
    """

    ratio: float
    mean: float
    std: float
    base_loss: float
    increase: float
    sigma: float
    relative: bool
    samples: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def perturbation_sharpness(
    model: nn.Module, data: Any, loss_fn: LossFn, sigma: float = 0.01, samples: int = 20, relative: bool = True,
    params: Iterable[Any] | None = None, max_batches: int | None = 4, seed: int = 0,
    forward: Forward | None = None, train_mode: bool = False,
) -> PerturbationResult:
    """Loss std / mean under random perturbations of the weights (the model is restored exactly).

    Args:
        sigma: the size of the noise. With ``relative`` (default) each parameter tensor ``w`` gets a
            Gaussian direction rescaled to norm ``sigma * ||w||`` (scale-invariant, like the filter
            normalization of Li et al. 2018, per tensor); otherwise i.i.d. ``N(0, sigma^2)`` noise.
        samples: number of perturbations (>= 2).
        seed: seeds a private generator; the global RNGs are not drawn from.
        Other arguments as in :func:`hessian_eigenvalues`.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> x, y = torch.randn(64, 3), torch.randn(64, 1)
        >>> net = torch.nn.Linear(3, 1)
        >>> res = perturbation_sharpness(net, (x, y), torch.nn.MSELoss(), sigma=0.05, samples=10)
        >>> res.samples, res.ratio > 0, len(res.losses)
        (10, True, 10)
    """
    from .._internal.checks import check_int, check_number

    sigma = float(check_number("perturbation_sharpness", "sigma", sigma, 0.0) or 0.01)
    samples = int(check_int("perturbation_sharpness", "samples", samples, minimum=2) or 2)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    with probing(model, data, loss_fn, params, forward, max_batches, train_mode, grad=False) as (probe, originals):
        base = probe.loss()
        losses = []
        for _ in range(samples):
            for p in probe.params:
                w0 = originals[id(p)]
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype)
                noise = noise * (sigma * w0.norm() / noise.norm().clamp_min(1e-12)) if relative else noise * sigma
                p.copy_(w0 + noise)
            losses.append(probe.loss())
    t = torch.tensor(losses, dtype=torch.float64)
    mean, std = float(t.mean()), float(t.std())
    return PerturbationResult(std / mean if mean != 0 else float("inf"), mean, std, base, mean - base, sigma,
                              bool(relative), samples, time.perf_counter() - t0, losses)
