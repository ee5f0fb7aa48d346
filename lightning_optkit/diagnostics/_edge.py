"""The stability edge of an optimizer: the largest curvature its update can follow without diverging.

On a quadratic with curvature ``lam`` along some direction, one optimizer step multiplies the error
along it by a factor that depends on ``lr * lam``; the edge is the ``lam`` where that factor's
magnitude reaches 1. Above it the iterates oscillate with growing amplitude along that direction
(Cohen et al., ICLR 2021, "Gradient Descent on Neural Networks Typically Occurs at the Edge of
Stability"; Cohen et al. 2022 for adaptive methods):

* SGD: ``2 / lr``.
* SGD with heavy-ball momentum ``beta`` and dampening ``d``: ``(2 + 2 beta) / (lr (1 - d))``.
* SGD with Nesterov momentum: ``(2 + 2 beta) / (lr (1 + 2 beta))``.
* Coupled weight decay ``wd`` adds ``wd`` to every curvature, so the edge on the loss's own Hessian
  is lower by ``wd``.
* Adam / AdamW: the raw Hessian is not comparable (the step is preconditioned). What matters is the
  *preconditioned* sharpness ``lambda_max(P^-1 H)`` with ``P = sqrt(v_hat) + eps``, whose edge is
  ``(2 + 2 beta1) / ((1 - beta1) lr)`` (38 / lr for ``beta1 = 0.9``).
* Other adaptive optimizers (RMSprop, Adagrad, ...): no edge is computed.

The formulas were checked against the spectral radius of each method's 2 x 2 update matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .._internal.optimizers import unwrap_optimizer

__all__ = ["Edge", "adam_preconditioner", "edge_preconditioner", "stability_edge", "step_scales", "stepped_params"]


@dataclass
class Edge:
    """The edge for the optimizer's current hyperparameters.

    Attributes:
        value: the largest comparable eigenvalue, or ``None`` when the optimizer has no such edge.
        kind: ``"sgd"``, ``"heavy_ball"``, ``"nesterov"``, ``"adam_preconditioned"`` or ``"none"``
            (with several groups: the kind of the group whose edge is lowest).
        preconditioned: whether the eigenvalue to compare is that of a rescaled Hessian
            ``P^-1/2 H P^-1/2`` (``P`` from :func:`edge_preconditioner`) rather than ``H``: always for
            Adam, and for SGD when the parameter groups take steps of different sizes.
        note: a sentence saying what is compared (for logs and reports).
        scaled: whether the parameter groups' step sizes differ, so that ``P`` carries ``1 / D``.
    """

    value: float | None
    kind: str
    preconditioned: bool
    note: str
    scaled: bool = False


def _sgd_factor(group: dict[str, Any]) -> tuple[float, str]:
    """``(c, kind)`` with the group's edge ``c / lr`` (its own momentum, Nesterov flag and dampening)."""
    beta = float(group.get("momentum", 0.0) or 0.0)
    if beta == 0.0:
        return 2.0, "sgd"
    if group.get("nesterov", False):
        return (2.0 + 2.0 * beta) / (1.0 + 2.0 * beta), "nesterov"
    return (2.0 + 2.0 * beta) / (1.0 - float(group.get("dampening", 0.0) or 0.0)), "heavy_ball"


def _adam_factor(group: dict[str, Any]) -> tuple[float, str]:
    beta1 = float(group["betas"][0])
    return (2.0 + 2.0 * beta1) / (1.0 - beta1), "adam_preconditioned"


def _group_edges(opt: torch.optim.Optimizer) -> list[tuple[float, str]] | None:
    """Each parameter group's own edge ``(c_g / lr_g, kind)`` (``inf`` for ``lr = 0``), or ``None``
    when the optimizer has no edge."""
    if isinstance(opt, torch.optim.SGD):
        factor = _sgd_factor
    elif isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
        factor = _adam_factor
    else:
        return None
    out = []
    for g in opt.param_groups:
        c, kind = factor(g)
        lr = float(g.get("lr", 0.0))
        out.append((c / lr if lr > 0 else math.inf, kind))
    return out


def stability_edge(optimizer: Any) -> Edge:
    """The stability edge of ``optimizer`` (a torch or Lightning optimizer) at its current learning rate.

    **Several parameter groups** (``layer_decay``, ``lr_scale``, a fine-tuned backbone): group ``g``
    alone is stable below its own edge ``e_g = c_g / lr_g`` (``c_g`` from its own momentum or
    ``beta1``). With ``e = min_g e_g`` (the group with the largest step) and the per-parameter scale
    ``D = e / e_g`` (``lr_g / lr_max`` when the groups share their momentum), the update is that of
    a single group at ``e`` on the rescaled Hessian ``D^1/2 H D^1/2``; so that is what is compared
    with ``e`` (:func:`edge_preconditioner` gives the diagonal). This is exact when the Hessian does
    not couple groups with different momenta, the usual case being groups differing only in lr.
    Coupled weight decay adds ``wd_g`` to group ``g``'s curvature, ``D_g wd_g`` after rescaling; the
    largest of these is subtracted from ``e`` (conservative: it may flag slightly early).

    Example:
        >>> import torch
        >>> p = [torch.nn.Parameter(torch.zeros(2))]
        >>> stability_edge(torch.optim.SGD(p, lr=0.1)).value
        20.0
        >>> round(stability_edge(torch.optim.SGD(p, lr=0.1, momentum=0.9)).value, 6)
        38.0
        >>> stability_edge(torch.optim.RMSprop(p, lr=0.1)).value is None
        True
    """
    opt = unwrap_optimizer(optimizer)
    if not any(float(g.get("lr", 0.0)) > 0 for g in opt.param_groups):
        return Edge(None, "none", False, "every parameter group has lr = 0: no step, no edge")
    edges = _group_edges(opt)
    if edges is None:
        return Edge(None, "none", False, f"{type(opt).__name__} is adaptive or unknown: lambda_max(H) is reported "
                                         "but has no stability edge to compare with")
    value, kind = min(edges, key=lambda e: e[0])
    finite = [e for e, _ in edges if math.isfinite(e)]
    # a group at lr = 0 has D = 0: its parameters do not move, so they leave the comparison
    scaled = max(finite) > min(finite) * (1.0 + 1e-9) or len(finite) < len(edges)
    across = (" over D^1/2 H D^1/2, D = each group's step size relative to the largest (per-group learning "
              "rates)") if scaled else ""
    if kind == "adam_preconditioned":
        return Edge(value, kind, True,
                    "lambda_max(P^-1 H), P = sqrt(v_hat) + eps (Adam's preconditioner), compared with (2 + 2 beta1) / "
                    f"((1 - beta1) lr){across}; the raw lambda_max(H) is not comparable with any edge for Adam", scaled)
    wd = max((value / e) * float(g.get("weight_decay", 0.0) or 0.0)
             for (e, _), g in zip(edges, opt.param_groups) if math.isfinite(e))
    name = {"sgd": "plain"}.get(kind, kind.replace("_", "-"))
    note = (f"lambda_max(D^1/2 H D^1/2), D = each group's step size relative to the largest (per-group learning "
            f"rates), compared with the {name} SGD edge of the largest step") if scaled else \
        f"lambda_max(H) compared with the {name} SGD edge"
    return Edge(value - wd, kind, scaled, note, scaled)


def stepped_params(optimizer: Any, params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The entries of ``params`` that ``optimizer`` steps (in a group with ``lr > 0``), in order."""
    opt = unwrap_optimizer(optimizer)
    live = {id(p) for g in opt.param_groups if float(g.get("lr", 0.0)) > 0 for p in g["params"]}
    return [p for p in params if id(p) in live]


def step_scales(optimizer: Any, params: list[torch.nn.Parameter]) -> torch.Tensor | None:
    """The flat per-entry scale ``D = e / e_g`` over ``params`` (see :func:`stability_edge`), or ``None``
    when a parameter is not stepped or the optimizer has no edge."""
    opt = unwrap_optimizer(optimizer)
    edges = _group_edges(opt)
    if edges is None:
        return None
    low = min(e for e, _ in edges)
    scale_of = {id(p): low / e for (e, _), g in zip(edges, opt.param_groups) for p in g["params"]}
    if any(scale_of.get(id(p), 0.0) <= 0 for p in params):
        return None
    return torch.cat([torch.full((p.numel(),), scale_of[id(p)], dtype=p.dtype, device=p.device) for p in params])


def edge_preconditioner(optimizer: Any, params: list[torch.nn.Parameter]) -> torch.Tensor | None:
    """The diagonal ``P`` whose ``lambda_max(P^-1/2 H P^-1/2)`` is compared with :func:`stability_edge`.

    ``P = 1 / D`` for SGD and ``(sqrt(v_hat) + eps) / D`` for Adam (``D``: :func:`step_scales`), over
    ``params`` flattened; ``None`` when a parameter is not stepped, or before Adam's first step.
    """
    scales = step_scales(optimizer, params)
    if scales is None:
        return None
    if isinstance(unwrap_optimizer(optimizer), (torch.optim.Adam, torch.optim.AdamW)):
        pre = adam_preconditioner(optimizer, params)
        return None if pre is None else pre / scales.to(pre.dtype)
    return 1.0 / scales


def adam_preconditioner(optimizer: Any, params: list[torch.nn.Parameter]) -> torch.Tensor | None:
    """Adam's diagonal ``sqrt(v_hat) + eps`` over ``params`` (flattened), or ``None`` before its first step."""
    opt = unwrap_optimizer(optimizer)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    pieces = []
    for p in params:
        state, group = opt.state.get(p, {}), group_of.get(id(p))
        if group is None or "exp_avg_sq" not in state:
            return None
        step = float(state["step"])
        v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        v_hat = v / (1.0 - group["betas"][1] ** step)
        pieces.append((v_hat.sqrt() + group["eps"]).reshape(-1))
    return torch.cat(pieces)
