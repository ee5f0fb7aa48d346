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

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Edge", "adam_preconditioner", "stability_edge"]


@dataclass
class Edge:
    """The edge for the optimizer's current hyperparameters.

    Attributes:
        value: the largest comparable eigenvalue, or ``None`` when the optimizer has no such edge.
        kind: ``"sgd"``, ``"heavy_ball"``, ``"nesterov"``, ``"adam_preconditioned"`` or ``"none"``.
        preconditioned: whether the eigenvalue to compare is that of ``P^-1 H`` (Adam) rather than ``H``.
        note: a sentence saying what is compared (for logs and reports).
    """

    value: float | None
    kind: str
    preconditioned: bool
    note: str


def _unwrap(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "_optimizer", optimizer)


def _sgd_edge(group: dict[str, Any]) -> tuple[float, str]:
    lr, beta = float(group["lr"]), float(group.get("momentum", 0.0) or 0.0)
    if beta == 0.0:
        edge, kind = 2.0 / lr, "sgd"
    elif group.get("nesterov", False):
        edge, kind = (2.0 + 2.0 * beta) / (lr * (1.0 + 2.0 * beta)), "nesterov"
    else:
        edge, kind = (2.0 + 2.0 * beta) / (lr * (1.0 - float(group.get("dampening", 0.0) or 0.0))), "heavy_ball"
    return edge - float(group.get("weight_decay", 0.0) or 0.0), kind


def stability_edge(optimizer: Any) -> Edge:
    """The stability edge of ``optimizer`` (a torch or Lightning optimizer) at its current learning rate.

    With several parameter groups the smallest edge is returned (the group with the largest step).

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
    opt = _unwrap(optimizer)
    groups = [g for g in opt.param_groups if float(g.get("lr", 0.0)) > 0]
    if not groups:
        return Edge(None, "none", False, "every parameter group has lr = 0: no step, no edge")
    if isinstance(opt, torch.optim.SGD):
        edges = [_sgd_edge(g) for g in groups]
        value, kind = min(edges)
        return Edge(value, kind, False, f"lambda_max(H) compared with the {kind.replace('_', '-')} SGD edge")
    if isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
        beta1 = min(float(g["betas"][0]) for g in groups)
        lr = max(float(g["lr"]) for g in groups)
        value = (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)
        return Edge(value, "adam_preconditioned", True,
                    "lambda_max(P^-1 H), P = sqrt(v_hat) + eps (Adam's preconditioner), compared with (2 + 2 beta1) / "
                    "((1 - beta1) lr); the raw lambda_max(H) is not comparable with any edge for Adam")
    return Edge(None, "none", False, f"{type(opt).__name__} is adaptive or unknown: lambda_max(H) is reported but "
                                     "has no stability edge to compare with")


def adam_preconditioner(optimizer: Any, params: list[torch.nn.Parameter]) -> torch.Tensor | None:
    """Adam's diagonal ``sqrt(v_hat) + eps`` over ``params`` (flattened), or ``None`` before its first step."""
    opt = _unwrap(optimizer)
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
