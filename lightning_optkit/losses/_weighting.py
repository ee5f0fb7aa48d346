"""Adaptive task weights for :class:`~lightning_optkit.losses.WeightedSumLoss` (``weighting:``).

Every rule is a small ``nn.Module`` holding its whole state as buffers or parameters, so the
LightningModule's ``state_dict`` carries it and a resumed run continues bit for bit. None of them
reads a value on the host: histories stay tensors and branches are ``torch.where``.

Given the per-task losses ``L_i`` of one step and the entries' ``coef_i``, the total is
``sum_i coef_i * w_i * L_i`` (+ a regulariser for ``uncertainty``), where ``w_i`` is:

* ``fixed``: 1.
* ``inverse_std``: ``1 / (1 + std_i)`` over the last ``window`` values of ``L_i`` (this step
  included; population std), normalised so the weights sum to the number of tasks ``K``.
* ``dwa`` (dynamic weight average, Liu, Johns & Davison, CVPR 2019):
  ``w = K softmax(r / temperature)`` with ``r_i = Lbar_i(p-1) / Lbar_i(p-2)``, the ratio of the
  mean loss of the last two completed periods of ``window`` training steps (the paper's period is
  one epoch: set ``window`` to the steps per epoch). 1 until two periods are complete.
* ``gradnorm`` (Chen et al., ICML 2018): learnable ``w`` (a parameter, so it joins the optimizer
  with the LightningModule's other parameters; give ``loss_fn.*`` its own LR with a
  ``param_groups`` rule), renormalised to sum ``K`` before each step. With
  ``G_i = |coef_i| w_i ||grad_W L_i||`` over the *shared parameters* ``W`` (the gradient norm of the
  term ``coef_i w_i L_i`` actually in the total, as the paper balances the weighted terms), the weights descend
  ``sum_i |G_i - mean(G) * (Ltilde_i / mean(Ltilde)) ** alpha|`` where ``Ltilde_i = L_i / L_i(0)``
  and the target is a constant, as in the paper. The model's parameters get the gradient of
  ``sum coef_i w_i L_i`` only.
* ``uncertainty`` (Kendall, Gal & Cipolla, CVPR 2018): ``w_i = exp(-s_i)`` with learnable
  ``s_i = log sigma_i^2`` and the regulariser ``sum_i s_i`` (the ``uncertainty_weighted`` loss,
  reachable from ``weighted_sum``).

Weights only adapt in training mode with gradients enabled; validation uses the current ones.
Under DDP, ``inverse_std`` and ``dwa`` record the losses averaged over the ranks (an all-reduce of
``K`` values on the device per step), so every rank holds the same history and weights.

**Shared parameters** (``gradnorm`` only): ``shared_params`` is a glob, or a list of globs
(``re:<regex>`` for a regex), over the ``named_parameters()`` of the module the loss is bound to,
normally the layer(s) every task head reads, e.g. ``"backbone.*"`` or, cheaper, the last shared
layer as in the paper (``"backbone.4.*"``). :class:`~lightning_optkit.OptimMixin` binds its
``loss_fn`` to itself; elsewhere call ``loss.bind(model)``.
"""

from __future__ import annotations

import fnmatch
import re
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._internal.checks import in_interval as _finite
from .._internal.ranks import rank_mean

__all__ = [
    "WEIGHTINGS",
    "DWAWeighting",
    "GradNormWeighting",
    "InverseStdWeighting",
    "UncertaintyWeighting",
    "build_weighting",
    "rank_mean",
    "uncertainty_terms",
    "weighting_problem",
]

WEIGHTINGS: tuple[str, ...] = ("fixed", "inverse_std", "dwa", "gradnorm", "uncertainty")
# option -> (rules it applies to, default, what is valid)
_OPTIONS: dict[str, tuple[tuple[str, ...], Any, str]] = {
    "window": (("inverse_std", "dwa"), 20, "an integer >= 1 (training steps)"),
    "temperature": (("dwa",), 2.0, "a finite number > 0"),
    "alpha": (("gradnorm",), 1.5, "a finite number >= 0"),
    "shared_params": (("gradnorm",), None, "a glob or a list of globs over the model's parameter names"),
    "init_log_var": (("uncertainty",), 0.0, "a finite number"),
}


def _globs_ok(v: Any) -> bool:
    globs = [v] if isinstance(v, str) else v
    return isinstance(globs, (list, tuple)) and bool(globs) and all(isinstance(g, str) and g for g in globs)


_VALID = {
    "window": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "temperature": lambda v: _finite(v) and v > 0,
    "alpha": lambda v: _finite(v) and v >= 0,
    "shared_params": _globs_ok,
    "init_log_var": _finite,
}


def weighting_problem(weighting: Any, options: dict[str, Any]) -> tuple[str, Any, str, str] | None:
    """The first problem of a weighting config as ``(key, value, expected, hint)``, or ``None``.

    ``options`` maps the option keys (``window``, ``temperature``, ``alpha``, ``shared_params``,
    ``init_log_var``) to their configured values (``None`` = not set).

    Example:
        >>> weighting_problem("dwa", {"temperature": 0.0})[:3]
        ('temperature', 0.0, 'a finite number > 0')
        >>> weighting_problem("gradnorm", {"shared_params": "backbone.*"}) is None
        True
    """
    if weighting not in WEIGHTINGS:
        return ("weighting", weighting, "one of " + ", ".join(WEIGHTINGS), "")
    for key, value in options.items():
        if value is None:
            continue
        rules, _, expected = _OPTIONS[key]
        if weighting not in rules:
            return (key, value, f"no `{key}` with weighting {weighting}",
                    f"`{key}` applies to weighting: {' | '.join(rules)}")
        if not _VALID[key](value):
            return (key, value, expected, "")
    if weighting == "gradnorm" and options.get("shared_params") is None:
        return ("shared_params", None, _OPTIONS["shared_params"][2],
                "gradnorm needs the parameters shared by the tasks, e.g. shared_params: 'backbone.*'")
    return None


def _option(options: dict[str, Any], key: str) -> Any:
    value = options.get(key)
    return _OPTIONS[key][1] if value is None else value


def build_weighting(weighting: str, num_tasks: int, options: dict[str, Any],
                    coefs: Sequence[float] | None = None) -> nn.Module | None:
    """The rule module for ``weighting`` (``None`` for ``fixed``); raises ``ValueError`` on bad options.

    ``coefs`` are the entries' fixed mixing weights (``gradnorm`` balances ``coef_i w_i L_i``).
    """
    problem = weighting_problem(weighting, options)
    if problem is not None:
        key, value, expected, hint = problem
        raise ValueError(f"{key}: expected {expected}, got {value!r}" + (f" ({hint})" if hint else ""))
    if weighting == "inverse_std":
        return InverseStdWeighting(num_tasks, _option(options, "window"))
    if weighting == "dwa":
        return DWAWeighting(num_tasks, _option(options, "window"), float(_option(options, "temperature")))
    if weighting == "gradnorm":
        return GradNormWeighting(num_tasks, options["shared_params"], float(_option(options, "alpha")), coefs)
    if weighting == "uncertainty":
        return UncertaintyWeighting(num_tasks, float(_option(options, "init_log_var")))
    return None


def _adapting(module: nn.Module, losses: Tensor) -> bool:
    return module.training and torch.is_grad_enabled() and losses.requires_grad


class InverseStdWeighting(nn.Module):
    """``w_i ∝ 1 / (1 + std of the last window values of L_i)``, summing to the number of tasks.

    Example:
        >>> rule = InverseStdWeighting(2, window=3)
        >>> for step in ([1.0, 10.0], [1.0, 20.0]):
        ...     w = rule(torch.tensor(step, requires_grad=True))[0]
        >>> [round(v, 4) for v in w.tolist()]  # std 0 and 5 -> 1 and 1/6, normalised to sum 2
        [1.7143, 0.2857]
    """

    history: Tensor
    count: Tensor
    weights: Tensor

    def __init__(self, num_tasks: int, window: int = 20) -> None:
        super().__init__()
        self.window = int(window)
        self.register_buffer("history", torch.zeros(self.window, num_tasks))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("weights", torch.ones(num_tasks))

    def forward(self, losses: Tensor) -> tuple[Tensor, Tensor | None]:
        """Record this step's losses (training only) and return ``(weights, None)``."""
        if _adapting(self, losses):
            values = rank_mean(losses.detach().to(self.history.dtype))
            self.history.index_copy_(0, (self.count % self.window).view(1), values.view(1, -1))
            self.count.add_(1)
            n = self.count.clamp(max=self.window).to(self.history.dtype)
            valid = (torch.arange(self.window, device=n.device) < n).to(self.history.dtype).unsqueeze(1)
            mean = (self.history * valid).sum(0) / n
            std = (((self.history - mean) ** 2 * valid).sum(0) / n).sqrt()
            raw = 1.0 / (1.0 + std)
            self.weights.copy_(raw * (raw.numel() / raw.sum()))
        return self.weights.to(losses.dtype), None


class DWAWeighting(nn.Module):
    """Dynamic weight average (Liu et al. 2019) over periods of ``window`` training steps.

    Example:
        >>> rule = DWAWeighting(2, window=1, temperature=2.0)
        >>> for step in ([1.0, 1.0], [0.5, 1.0], [0.25, 1.0]):
        ...     w = rule(torch.tensor(step, requires_grad=True))[0]
        >>> [round(v, 4) for v in w.tolist()]  # r = (0.5, 1): 2 * softmax(r / 2)
        [0.8756, 1.1244]
    """

    acc: Tensor
    steps: Tensor
    means: Tensor
    periods: Tensor
    weights: Tensor

    def __init__(self, num_tasks: int, window: int = 20, temperature: float = 2.0) -> None:
        super().__init__()
        self.window, self.temperature = int(window), float(temperature)
        self.register_buffer("acc", torch.zeros(num_tasks))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("means", torch.ones(2, num_tasks))  # [period p-2, period p-1]
        self.register_buffer("periods", torch.zeros((), dtype=torch.long))
        self.register_buffer("weights", torch.ones(num_tasks))

    def forward(self, losses: Tensor) -> tuple[Tensor, Tensor | None]:
        """Return this step's weights (from earlier periods), then record the losses (training only)."""
        weights = self.weights.to(losses.dtype).clone()
        if _adapting(self, losses):
            self.acc.add_(rank_mean(losses.detach().to(self.acc.dtype)))
            self.steps.add_(1)
            done = self.steps >= self.window
            mean = self.acc / self.window
            self.means.copy_(torch.where(done, torch.stack([self.means[1], mean]), self.means))
            self.periods.add_(done.long())
            self.acc.mul_((~done).to(self.acc.dtype))
            self.steps.mul_((~done).long())
            ratio = self.means[1] / self.means[0].clamp_min(torch.finfo(self.means.dtype).tiny)
            dwa = ratio.numel() * torch.softmax(ratio / self.temperature, dim=0)
            self.weights.copy_(torch.where(self.periods >= 2, dwa, self.weights))
        return weights, None


def _matches(name: str, globs: Sequence[str]) -> bool:
    for pat in globs:
        if pat.startswith("re:") and re.search(pat[3:], name):
            return True
        if not pat.startswith("re:") and fnmatch.fnmatchcase(name, pat):
            return True
    return False


class GradNormWeighting(nn.Module):
    """GradNorm (Chen et al. 2018): learnable weights balancing the tasks' gradient norms.

    Needs :meth:`bind` (done by ``WeightedSumLoss.bind`` / ``OptimMixin``) to find the shared
    parameters named by the globs ``shared_params``.

    Example:
        >>> body = torch.nn.Linear(3, 2)
        >>> rule = GradNormWeighting(2, shared_params="weight", alpha=1.0)
        >>> rule.bind(body)
        >>> out = body(torch.ones(4, 3))
        >>> losses = torch.stack([out[:, 0].pow(2).mean(), 100 * out[:, 1].pow(2).mean()])
        >>> weights, surrogate = rule(losses)
        >>> weights.tolist(), float(surrogate.detach())
        ([1.0, 1.0], 0.0)
    """

    initial: Tensor
    started: Tensor
    coef_abs: Tensor

    def __init__(self, num_tasks: int, shared_params: str | Sequence[str], alpha: float = 1.5,
                 coefs: Sequence[float] | None = None) -> None:
        super().__init__()
        self.globs = [shared_params] if isinstance(shared_params, str) else list(shared_params)
        self.alpha = float(alpha)
        coef_abs = torch.ones(num_tasks) if coefs is None else torch.tensor([abs(float(c)) for c in coefs])
        if coef_abs.numel() != num_tasks:
            raise ValueError(f"coefs: expected {num_tasks} mixing weights (one per task), got {coef_abs.numel()}")
        self.register_buffer("coef_abs", coef_abs, persistent=False)  # on the module's device: no copy per step
        self.task_weights = nn.Parameter(torch.ones(num_tasks))
        self.register_buffer("initial", torch.ones(num_tasks))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))
        self._owner: Any = None

    def bind(self, owner: nn.Module) -> None:
        """Remember (weakly) the module whose parameters ``shared_params`` names."""
        self._owner = weakref.ref(owner)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_owner"] = None  # a weak reference neither pickles nor should follow a copy
        return state

    def shared(self) -> list[nn.Parameter]:
        """The shared parameters (those of the bound module matching ``shared_params``)."""
        owner = self._owner() if self._owner is not None else None
        if owner is None:
            raise RuntimeError(
                "weighting gradnorm: the loss is not bound to a model, so `shared_params` cannot be "
                "resolved; HINT: call loss_fn.bind(model) (OptimMixin does it for its loss_fn)"
            )
        own = {id(p) for p in self.parameters()}
        params = [p for n, p in owner.named_parameters() if _matches(n, self.globs) and id(p) not in own]
        if not any(p.requires_grad for p in params):
            names = [n for n, _ in owner.named_parameters()][:8]
            raise ValueError(f"shared_params: {self.globs} matches no trainable parameter of "
                             f"{type(owner).__name__} (names look like {names})")
        return [p for p in params if p.requires_grad]

    def normalized(self) -> Tensor:
        """The weights rescaled to sum to the number of tasks (detached)."""
        w = self.task_weights.detach()
        return w * (w.numel() / w.sum())

    def forward(self, losses: Tensor) -> tuple[Tensor, Tensor | None]:
        """Return ``(detached weights, surrogate)``: the surrogate is 0 but carries the weights' gradient."""
        if not _adapting(self, losses):
            return self.normalized().to(losses.dtype), None
        with torch.no_grad():  # the paper's renormalisation after each update
            self.task_weights.clamp_(min=1e-6)
            self.task_weights.mul_(self.task_weights.numel() / self.task_weights.sum())
        detached = losses.detach()
        self.initial.copy_(torch.where(self.started, self.initial, detached.to(self.initial.dtype)))
        self.started.fill_(True)
        shared = self.shared()
        norms = []
        for i in range(losses.numel()):
            grads = torch.autograd.grad(losses[i], shared, retain_graph=True, allow_unused=True)
            flat = [g.reshape(-1) for g in grads if g is not None]
            norms.append(torch.linalg.vector_norm(torch.cat(flat)) if flat else detached.new_zeros(()))
        w = self.task_weights
        g = self.coef_abs.to(w.dtype) * w * torch.stack(norms).to(w.dtype)  # ||grad_W (coef_i w_i L_i)||
        ratio = detached.to(w.dtype) / self.initial.clamp_min(torch.finfo(w.dtype).tiny)
        target = (g.mean() * (ratio / ratio.mean()) ** self.alpha).detach()
        (grad_w,) = torch.autograd.grad((g - target).abs().sum(), w)
        surrogate = (w * grad_w).sum()
        return w.detach().to(losses.dtype), (surrogate - surrogate.detach()).to(losses.dtype)


def uncertainty_terms(log_vars: Tensor, scale_loss: Tensor | float = 1.0,
                      scale_reg: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
    """Kendall et al.'s weights ``a_i exp(-s_i)`` and regulariser ``sum_i b_i s_i`` for ``s = log_vars``.

    The one place of this math: :class:`UncertaintyWeighting` (``a = b = 1``) and
    :class:`~lightning_optkit.losses.UncertaintyWeightedLoss` (per-task ``a``, ``b``) both use it;
    the total is ``sum_i w_i L_i + reg``.

    Example:
        >>> w, reg = uncertainty_terms(torch.tensor([0.0, 1.0]), 0.5, torch.tensor([1.0, 0.5]))
        >>> [round(v, 4) for v in w.tolist()], float(reg)
        ([0.5, 0.1839], 0.5)
    """
    return scale_loss * torch.exp(-log_vars), (scale_reg * log_vars).sum()


class UncertaintyWeighting(nn.Module):
    """Kendall et al. (2018): ``w_i = exp(-s_i)`` and the regulariser ``sum_i s_i``, ``s`` learned.

    Example:
        >>> rule = UncertaintyWeighting(2, init_log_var=0.5)
        >>> w, reg = rule(torch.tensor([1.0, 2.0]))
        >>> round(w[0].item(), 4), float(reg)
        (0.6065, 1.0)
    """

    def __init__(self, num_tasks: int, init_log_var: float = 0.0) -> None:
        super().__init__()
        self.log_vars = nn.Parameter(torch.full((num_tasks,), float(init_log_var)))

    @property
    def weights(self) -> Tensor:
        """The current weights ``exp(-s)`` (detached)."""
        return uncertainty_terms(self.log_vars.detach())[0]

    def forward(self, losses: Tensor) -> tuple[Tensor, Tensor | None]:
        """Return ``(exp(-s), sum(s))``; both carry gradients to ``s``."""
        return uncertainty_terms(self.log_vars.to(losses.dtype))
