"""Sharpness probes on Hessian-vector products: top eigenvalues, the trace, random perturbations.

All three work on a **fixed list of batches** (the loss is the sample-weighted mean over them) and
never form the Hessian: each Hessian-vector product (HVP) is one double backward pass per batch
(``torch.autograd.grad`` with ``create_graph=True``, then the gradient of ``g . v``), so its cost is
about two to three training steps per batch. Costs are reported in HVPs and seconds.

By default the model is evaluated in **eval mode** (dropout off, batch-norm running statistics), so
the loss is a deterministic function of the weights, which power iteration and Lanczos need; pass
``train_mode=True`` for the training-mode loss. Either way, parameters, buffers, modes and the
Python, NumPy and torch RNG states are restored bit for bit afterwards (see :mod:`._state`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from ._state import preserved

__all__ = ["HessianEigenvalues", "HessianTrace", "LossProbe", "hessian_eigenvalues", "hessian_trace"]

LossFn = Callable[[Any, Any], torch.Tensor]
Forward = Callable[[nn.Module, Any], tuple[Any, Any]]


@dataclass
class HessianEigenvalues:
    """Top Hessian eigenvalues (largest first) and what they cost.

    Attributes:
        eigenvalues: the ``k`` largest eigenvalues (Lanczos: algebraically largest; power iteration:
            largest in magnitude, in the order found).
        eigenvectors: ``(k, num_params)`` unit vectors over the selected parameters (flattened in
            ``named_parameters`` order) when ``return_vectors=True``.
        hvps: Hessian-vector products used; each is one double backward per batch.
        seconds: wall time of the estimate.
        converged: whether every eigenvalue met the tolerance before ``iters`` ran out.
        method, iterations, num_params, num_samples: how it was computed.
    """

    eigenvalues: list[float]
    hvps: int
    seconds: float
    converged: bool
    method: str
    iterations: int
    num_params: int
    num_samples: int
    eigenvectors: torch.Tensor | None = None


@dataclass
class HessianTrace:
    """Hutchinson's estimate of the Hessian trace: ``mean(z^T H z)`` over ``samples`` Rademacher ``z``."""

    trace: float
    stderr: float
    samples: int
    hvps: int
    seconds: float
    num_params: int
    estimates: list[float] = field(default_factory=list)


class LossProbe:
    """The mean loss over fixed batches as a function of selected parameters, with HVPs on it.

    Args:
        model: the module whose loss is probed.
        batches: the batches; each is ``(inputs, targets, ...)`` unless ``forward`` says otherwise.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` (e.g. ``nn.CrossEntropyLoss()``).
        params: the parameters to differentiate: ``None`` for every parameter that requires grad, or
            an iterable of parameters or of name globs (``"head.*"``).
        forward: ``forward(model, batch) -> (outputs, targets)``; default ``(model(batch[0]), batch[1])``.
        preconditioner: a flat positive diagonal ``P`` over the selected parameters; :meth:`hvp` then
            applies ``P^-1/2 H P^-1/2``, whose eigenvalues are those of ``P^-1 H`` (the preconditioned
            sharpness of an adaptive optimizer).
    """

    def __init__(self, model: nn.Module, batches: Sequence[Any], loss_fn: LossFn,
                 params: Iterable[Any] | None = None, forward: Forward | None = None,
                 preconditioner: torch.Tensor | None = None) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.forward = forward or _default_forward
        self.names, self.params = select_params(model, params)
        for p in self.params:
            p.requires_grad_(True)  # the callers run inside preserved(), which restores the flags
        device = self.params[0].device
        self.batches = [_to_device(b, device) for b in batches]
        sizes = [_batch_size(b) for b in self.batches]
        self.num_samples = sum(sizes)
        self.weights = [s / self.num_samples for s in sizes]
        self.num_params = sum(p.numel() for p in self.params)
        self.scale: torch.Tensor | None = None
        if preconditioner is not None:
            pre = preconditioner.detach().reshape(-1).to(device=device, dtype=self.params[0].dtype)
            if pre.numel() != self.num_params or not bool((pre > 0).all()):
                raise ConfigError("preconditioner", f"tensor of {pre.numel()} values",
                                  f"{self.num_params} positive values, one per selected parameter entry")
            self.scale = pre.rsqrt()
        self.hvps = 0

    def loss(self) -> float:
        """The weighted mean loss over the batches at the current weights."""
        with torch.no_grad():
            total = sum(w * self._batch_loss(b).double() for b, w in zip(self.batches, self.weights))
        return float(total)  # type: ignore[arg-type]

    def _batch_loss(self, batch: Any) -> torch.Tensor:
        outputs, targets = self.forward(self.model, batch)
        return self.loss_fn(outputs, targets)

    def hvp(self, vec: torch.Tensor) -> torch.Tensor:
        """``H @ vec`` (or ``P^-1/2 H P^-1/2 @ vec``) for a flat vector over the selected parameters."""
        if self.scale is not None:
            vec = vec * self.scale
        pieces = _unflatten(vec, self.params)
        out = torch.zeros_like(vec)
        for batch, weight in zip(self.batches, self.weights):
            loss = self._batch_loss(batch)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
            dot = sum((g * v).sum() for g, v in zip(grads, pieces) if g is not None)
            if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
                continue  # the loss is linear in these parameters: zero curvature
            hv = torch.autograd.grad(dot, self.params, allow_unused=True)
            out.add_(_flatten(hv, self.params), alpha=weight)
        self.hvps += 1
        return (out * self.scale if self.scale is not None else out).detach()


def _default_forward(model: nn.Module, batch: Any) -> tuple[Any, Any]:
    return model(batch[0]), batch[1]


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values())) if isinstance(batch, dict) else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.ndim else 1


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch) if isinstance(batch, list) else tuple(
            _to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def select_params(model: nn.Module, params: Iterable[Any] | None) -> tuple[list[str], list[nn.Parameter]]:
    """Names and parameters chosen by ``params`` (None: all trainable; else parameters or name globs)."""
    named = list(model.named_parameters())
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
    else:
        wanted = list(params)
        if all(isinstance(w, str) for w in wanted):
            chosen = [(n, p) for n, p in named if any(fnmatch.fnmatchcase(n, g) for g in wanted)]
        else:
            ids = {id(w) for w in wanted}
            chosen = [(n, p) for n, p in named if id(p) in ids]
    if not chosen:
        raise ConfigError("params", params, "parameters of the model (None for all trainable ones, or name globs)",
                          hint="names are those of model.named_parameters(), e.g. 'head.*'")
    return [n for n, _ in chosen], [p for _, p in chosen]


def _flatten(tensors: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(tensors, like)])


def _unflatten(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, start = [], 0
    for p in like:
        out.append(vec[start:start + p.numel()].view_as(p))
        start += p.numel()
    return out


@contextlib.contextmanager
def probing(model: nn.Module, data: Any, loss_fn: Any, params: Any, forward: Any, max_batches: int | None,
            train_mode: bool, *, grad: bool, preconditioner: Any = None) -> Iterator[tuple[LossProbe, dict[int, Any]]]:
    """A :class:`LossProbe` on fixed batches, with the model's state put back afterwards (:func:`preserved`).

    Yields the probe and the parameters' saved originals by ``id``. ``grad``: Hessian-vector products
    need autograd (also inside an inference-mode caller); loss-only probes run under ``no_grad``.
    """
    with contextlib.ExitStack() as stack:
        snap = stack.enter_context(preserved(model))
        if grad:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
        else:
            stack.enter_context(torch.no_grad())
        model.train(train_mode)
        probe = LossProbe(model, fixed_batches(data, max_batches), loss_fn, params, forward, preconditioner)
        yield probe, {id(p): saved for p, saved, _ in snap.params}


def fixed_batches(data: Any, max_batches: int | None = None) -> list[Any]:
    """The batches to probe: one batch ``(x, y, ...)``, a list of batches, or the first ``max_batches`` of a loader."""
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], torch.Tensor):
        return [tuple(data)]
    if isinstance(data, dict):
        return [data]
    out = []
    for batch in data:
        out.append(batch)
        if max_batches is not None and len(out) >= max_batches:
            break
    if not out:
        raise ConfigError("data", type(data).__name__, "a batch (x, y), a list of batches or a non-empty loader")
    return out


def _rand_unit(n: int, seed: int, like: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=gen, dtype=torch.float64).to(device=like.device, dtype=like.dtype)
    return v / v.norm()


def _lanczos(probe: LossProbe, k: int, iters: int, tol: float, seed: int) -> tuple[list[float], torch.Tensor, bool, int]:
    """Lanczos with full reorthogonalization; stops when the top-k Ritz residuals are below ``tol``."""
    n = probe.num_params
    basis = [_rand_unit(n, seed, probe.params[0])]
    alphas: list[float] = []
    betas: list[float] = []
    theta = vecs = torch.zeros(0, dtype=torch.float64)
    converged = False
    for _it in range(min(iters, n)):
        w = probe.hvp(basis[-1])
        alphas.append(float(w @ basis[-1]))
        q = torch.stack(basis)
        for _ in range(2):  # twice is enough (Kahan's "twice is enough")
            w = w - q.T @ (q @ w)
        beta = float(w.norm())
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        theta, vecs = torch.linalg.eigh(t)
        top = min(k, len(alphas))
        resid = beta * vecs[-1, -top:].abs()
        scale = theta[-top:].abs().clamp_min(1e-12)
        if beta <= 1e-10 * max(1.0, float(theta.abs().max())) or (top == k and bool((resid <= tol * scale).all())):
            converged = top == k
            break
        betas.append(beta)
        basis.append(w / beta)
    top = min(k, theta.numel())
    ritz = (torch.stack(basis[:theta.numel()]).T.double() @ vecs[:, -top:].to(basis[0].device)).T.flip(0)
    return theta[-top:].flip(0).tolist(), ritz, converged, len(alphas)


def _power(probe: LossProbe, k: int, iters: int, tol: float, seed: int) -> tuple[list[float], torch.Tensor, bool, int]:
    """Power iteration with deflation: eigenvalues of largest magnitude, one after the other."""
    found: list[float] = []
    vectors: list[torch.Tensor] = []
    converged, used = True, 0
    for i in range(k):
        v = _rand_unit(probe.num_params, seed + i, probe.params[0])
        lam, done = 0.0, False
        for _ in range(iters):
            w = probe.hvp(v)
            used += 1
            for lam_j, u in zip(found, vectors):
                w = w - lam_j * (u @ v) * u
            new = float(w @ v)
            norm = w.norm()
            if float(norm) == 0.0:
                lam, done = 0.0, True
                break
            v = w / norm
            if abs(new - lam) <= tol * max(abs(new), 1e-12):
                lam, done = new, True
                break
            lam = new
        found.append(lam)
        vectors.append(v)
        converged = converged and done
    return found, torch.stack(vectors).double(), converged, used


def hessian_eigenvalues(
    model: nn.Module, data: Any, loss_fn: LossFn, k: int = 1, iters: int = 100, params: Iterable[Any] | None = None,
    method: str = "lanczos", tol: float = 1e-3, max_batches: int | None = 4, seed: int = 0,
    forward: Forward | None = None, train_mode: bool = False, return_vectors: bool = False,
    preconditioner: torch.Tensor | None = None,
) -> HessianEigenvalues:
    """The ``k`` largest eigenvalues of the Hessian of the loss over a fixed set of batches.

    Args:
        model: any ``nn.Module`` (a LightningModule included).
        data: one batch ``(x, y)``, a list of batches, or a DataLoader (its first ``max_batches``).
        loss_fn: ``loss_fn(outputs, targets)``, e.g. ``nn.CrossEntropyLoss()``.
        k: how many eigenvalues.
        iters: the most HVPs per eigenvalue (power) or in total (Lanczos).
        params: ``None`` for all trainable parameters, or parameters / name globs to restrict to.
        method: ``"lanczos"`` (full reorthogonalization; stops when the top-k Ritz residuals
            ``|beta_m s_mi|`` fall below ``tol * |theta_i|``) or ``"power"`` (with deflation; stops when
            successive estimates differ by less than ``tol`` relative; finds the largest magnitudes).
        tol: relative tolerance.
        max_batches: cap on the batches taken from a loader.
        seed: seeds the start vectors (a private generator: the global RNGs are not drawn from).
        forward: ``forward(model, batch) -> (outputs, targets)`` for other batch layouts.
        train_mode: evaluate in training mode (dropout on) instead of eval mode.
        return_vectors: keep the eigenvectors in the result.
        preconditioner: a flat positive diagonal ``P`` (one value per selected parameter entry): the
            eigenvalues are then those of ``P^-1 H``, computed on the symmetric ``P^-1/2 H P^-1/2``
            (for Adam, ``P = sqrt(v_hat) + eps``: the preconditioned sharpness).

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> x, y = torch.randn(64, 3), torch.randn(64, 1)
        >>> net = torch.nn.Linear(3, 1, bias=False)
        >>> res = hessian_eigenvalues(net, (x, y), torch.nn.MSELoss(), k=1)
        >>> exact = torch.linalg.eigvalsh(2 * x.T @ x / 64)[-1].item()
        >>> abs(res.eigenvalues[0] - exact) / exact < 1e-3, res.hvps <= 3
        (True, True)
    """
    from .._internal.checks import check_choice, check_int, check_number

    k = int(check_int("hessian_eigenvalues", "k", k) or 1)
    iters = int(check_int("hessian_eigenvalues", "iters", iters) or 1)
    method = check_choice("hessian_eigenvalues", "method", method, ("lanczos", "power"))
    tol = float(check_number("hessian_eigenvalues", "tol", tol, 0.0, 1.0) or 1e-3)
    t0 = time.perf_counter()
    with probing(model, data, loss_fn, params, forward, max_batches, train_mode, grad=True,
                 preconditioner=preconditioner) as (probe, _):
        if k > probe.num_params:
            raise ConfigError("hessian_eigenvalues.k", k, f"at most the number of parameters ({probe.num_params})")
        run = _lanczos if method == "lanczos" else _power
        values, vectors, converged, used = run(probe, k, iters, tol, seed)
    return HessianEigenvalues(values, probe.hvps, time.perf_counter() - t0, converged, method, used,
                              probe.num_params, probe.num_samples, vectors.float() if return_vectors else None)


def hessian_trace(
    model: nn.Module, data: Any, loss_fn: LossFn, samples: int = 100, params: Iterable[Any] | None = None,
    max_batches: int | None = 4, seed: int = 0, forward: Forward | None = None, train_mode: bool = False,
) -> HessianTrace:
    """Hutchinson's trace estimate ``mean_s z_s^T H z_s`` with ``samples`` Rademacher vectors ``z_s``.

    The estimate is unbiased; its variance is ``2 * sum_{i != j} H_ij^2 / samples``, reported as the
    standard error of the mean (``stderr``). Costs ``samples`` HVPs. Arguments as in
    :func:`hessian_eigenvalues`; ``seed`` seeds a private generator for the ``z`` vectors.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> x, y = torch.randn(64, 3), torch.randn(64, 1)
        >>> net = torch.nn.Linear(3, 1, bias=False)
        >>> res = hessian_trace(net, (x, y), torch.nn.MSELoss(), samples=400)
        >>> exact = torch.trace(2 * x.T @ x / 64).item()
        >>> abs(res.trace - exact) / exact < 0.05, res.hvps
        (True, 400)
    """
    from .._internal.checks import check_int

    samples = int(check_int("hessian_trace", "samples", samples) or 1)
    t0 = time.perf_counter()
    with probing(model, data, loss_fn, params, forward, max_batches, train_mode, grad=True) as (probe, _):
        gen = torch.Generator().manual_seed(seed)
        like = probe.params[0]
        estimates = []
        for _ in range(samples):
            z = (torch.randint(0, 2, (probe.num_params,), generator=gen) * 2 - 1).to(like.device, like.dtype)
            estimates.append(float(z @ probe.hvp(z)))
    est = torch.tensor(estimates, dtype=torch.float64)
    stderr = float(est.std() / samples ** 0.5) if samples > 1 else float("nan")
    return HessianTrace(float(est.mean()), stderr, samples, probe.hvps, time.perf_counter() - t0, probe.num_params,
                        estimates)
