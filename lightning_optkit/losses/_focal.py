"""Focal loss (Lin, Goyal, Girshick, He, Dollar 2017, "Focal Loss for Dense Object Detection").

The cross entropy of each element is scaled by ``(1 - p_t) ** gamma`` so that easy, well-classified
examples (``p_t`` near 1) contribute little and training concentrates on the hard ones. With
``gamma = 0`` (and no ``alpha``) both losses here are exactly the cross entropy they generalise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._internal.tensors import reduce_loss

__all__ = ["BinaryFocalLoss", "FocalLoss"]

_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {', '.join(_REDUCTIONS)}, got {reduction!r}")
    return reduction


def _check_gamma(gamma: float) -> float:
    if (
        isinstance(gamma, bool)
        or not isinstance(gamma, (int, float))
        or not math.isfinite(gamma)
        or gamma < 0
    ):
        raise ValueError(f"gamma: expected a finite number >= 0, got {gamma!r}")
    return float(gamma)


class BinaryFocalLoss(nn.Module):
    """Sigmoid focal loss on logits, for binary and multi-label targets (same shape as the input).

    ``loss = alpha_t * (1 - p_t) ** gamma * bce_with_logits(input, target)`` elementwise, where
    ``p = sigmoid(input)``, ``p_t = p * t + (1 - p) * (1 - t)`` and
    ``alpha_t = alpha * t + (1 - alpha) * (1 - t)``. Soft targets in ``[0, 1]`` are allowed.
    Defaults follow the paper (and ``torchvision.ops.sigmoid_focal_loss``): ``alpha=0.25, gamma=2``.
    ``alpha=None`` disables the class balancing; with ``gamma=0, alpha=None`` the result equals
    ``F.binary_cross_entropy_with_logits``.

    Args:
        alpha: weight of the positive class in ``[0, 1]``, or ``None``.
        gamma: focusing parameter, ``>= 0``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> loss = BinaryFocalLoss(alpha=None, gamma=0.0)
        >>> x, t = torch.tensor([0.3, -1.2]), torch.tensor([1.0, 0.0])
        >>> torch.allclose(loss(x, t), torch.nn.functional.binary_cross_entropy_with_logits(x, t))
        True
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0, reduction: str = "mean") -> None:
        super().__init__()
        if alpha is not None and (
            isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1
        ):
            raise ValueError(f"alpha: expected null or a number in [0, 1], got {alpha!r}")
        self.alpha = None if alpha is None else float(alpha)
        self.gamma = _check_gamma(gamma)
        self.reduction = _check_reduction(reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """Focal loss of logits ``input`` against ``target`` (same shape, values in ``[0, 1]``)."""
        target = target.to(input.dtype)
        loss = F.binary_cross_entropy_with_logits(input, target, reduction="none")
        if self.gamma != 0:
            p = torch.sigmoid(input)
            one_minus_pt = p * (1 - target) + (1 - p) * target  # = 1 - p_t
            loss = loss * one_minus_pt.pow(self.gamma)
        if self.alpha is not None:
            loss = loss * (self.alpha * target + (1 - self.alpha) * (1 - target))
        return reduce_loss(loss, self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


class FocalLoss(nn.Module):
    """Multi-class (softmax) focal loss: logits ``(N, C, d1, ...)``, class-index targets ``(N, d1, ...)``.

    Per element, with ``logp = log_softmax(input, dim=1)`` and ``p = exp(logp)``::

        loss = sum_c q_c * alpha_c * (1 - p_c) ** gamma * (-logp_c)

    where ``q = (1 - label_smoothing) * one_hot(target) + label_smoothing / C`` (so without smoothing
    only the target class contributes: ``alpha_t * (1 - p_t) ** gamma * (-log p_t)``).

    ``alpha`` is an optional list of per-class weights and is treated exactly like cross entropy's
    ``weight``: with ``reduction="mean"`` the sum is divided by the summed ``alpha`` of the
    (non-ignored) targets, so ``gamma=0`` reproduces ``F.cross_entropy(input, target, weight=alpha,
    ignore_index=..., label_smoothing=...)`` -- in fact that kernel is used when ``gamma == 0``.
    Elements whose target is ``ignore_index`` contribute nothing. ``alpha`` is kept as a
    non-persistent buffer: it moves with ``.to()`` but is not part of ``state_dict``.

    Args:
        gamma: focusing parameter, ``>= 0``.
        alpha: per-class weights (length C), or ``None``.
        ignore_index: target value to skip.
        label_smoothing: in ``[0, 1]``, as in ``nn.CrossEntropyLoss``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> x, t = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]]), torch.tensor([0, 2])
        >>> torch.equal(FocalLoss(gamma=0.0)(x, t), torch.nn.functional.cross_entropy(x, t))
        True
        >>> bool(FocalLoss(gamma=2.0)(x, t) < torch.nn.functional.cross_entropy(x, t))
        True
    """

    alpha: Tensor | None

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Sequence[float] | Tensor | None = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.gamma = _check_gamma(gamma)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index: expected an integer, got {ignore_index!r}")
        self.ignore_index = ignore_index
        if (
            isinstance(label_smoothing, bool)
            or not isinstance(label_smoothing, (int, float))
            or not (0 <= label_smoothing <= 1)
        ):
            raise ValueError(f"label_smoothing: expected a number in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        self.reduction = _check_reduction(reduction)
        if alpha is None:
            self.register_buffer("alpha", None, persistent=False)
        else:
            try:
                a = torch.as_tensor(alpha, dtype=torch.get_default_dtype())
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(
                    f"alpha: expected null or a list of per-class weights, got {alpha!r}"
                ) from None
            if a.ndim != 1 or a.numel() == 0 or bool((a < 0).any()) or not bool(torch.isfinite(a).all()):
                raise ValueError(
                    f"alpha: expected null or a non-empty 1-d list of weights >= 0, got {alpha!r}"
                )
            self.register_buffer("alpha", a, persistent=False)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """Focal loss of logits ``input`` (N, C, ...) against class indices ``target`` (N, ...)."""
        if input.ndim < 2:
            raise ValueError(f"FocalLoss expects logits of shape (N, C, ...), got {tuple(input.shape)}")
        if target.is_floating_point():
            raise ValueError(
                "FocalLoss expects class-index targets (an integer tensor); use BinaryFocalLoss "
                "for multi-label / binary targets"
            )
        alpha = None if self.alpha is None else self.alpha.to(input.dtype)
        if self.gamma == 0:
            return F.cross_entropy(
                input,
                target,
                weight=alpha,
                ignore_index=self.ignore_index,
                reduction=self.reduction,
                label_smoothing=self.label_smoothing,
            )
        num_classes = input.shape[1]
        logp = F.log_softmax(input, dim=1)
        valid = target != self.ignore_index
        safe = target.masked_fill(~valid, 0).long()
        idx = safe.unsqueeze(1)
        eps = self.label_smoothing
        if eps == 0:
            logp_t = logp.gather(1, idx).squeeze(1)
            focus = (-torch.expm1(logp_t)).pow(self.gamma)  # (1 - p_t) ** gamma, accurate near p_t = 1
            loss = -focus * logp_t
            if alpha is not None:
                loss = loss * alpha[safe]
        else:
            term = -(-torch.expm1(logp)).pow(self.gamma) * logp  # (N, C, ...): (1 - p_c)^g * -log p_c
            if alpha is not None:
                term = term * alpha.view(1, num_classes, *([1] * (input.ndim - 2)))
            loss = (1 - eps) * term.gather(1, idx).squeeze(1) + (eps / num_classes) * term.sum(1)
        loss = loss.masked_fill(~valid, 0.0)
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        denom = valid.sum() if alpha is None else alpha[safe].masked_fill(~valid, 0.0).sum()
        return loss.sum() / denom

    def extra_repr(self) -> str:
        return (
            f"gamma={self.gamma}, ignore_index={self.ignore_index}, "
            f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"
        )
