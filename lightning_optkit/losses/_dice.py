"""Soft Dice loss (Milletari et al. 2016, V-Net), binary and multi-class, on logits.

``dice = (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)`` and ``loss = 1 - dice``, so each
value lies in ``[0, 1]`` and a perfect prediction gives 0. ``smooth`` keeps empty masks finite
(an empty target predicted empty scores a perfect 1); with ``smooth=0`` an empty mask gives NaN.

Sums run over the spatial dimensions of each sample (``batch_dice=False``, the default), or over the
whole batch as well (``batch_dice=True``: one Dice per class, more stable for small or empty masks
and for plain ``(N, C)`` classification outputs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._internal.tensors import reduce_loss

__all__ = ["BinaryDiceLoss", "DiceLoss"]

_REDUCTIONS = ("none", "mean", "sum")


def _sum(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    return x.sum(dims) if dims else x  # x.sum(()) would sum everything


class _DiceBase(nn.Module):
    def __init__(self, smooth: float, ignore_index: int | None, batch_dice: bool, reduction: str) -> None:
        super().__init__()
        if (
            isinstance(smooth, bool)
            or not isinstance(smooth, (int, float))
            or not math.isfinite(smooth)
            or smooth < 0
        ):
            raise ValueError(f"smooth: expected a finite number >= 0, got {smooth!r}")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ValueError(f"ignore_index: expected an integer or None, got {ignore_index!r}")
        if not isinstance(batch_dice, bool):
            raise ValueError(f"batch_dice: expected true or false, got {batch_dice!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction: expected one of {', '.join(_REDUCTIONS)}, got {reduction!r}")
        self.smooth = float(smooth)
        self.ignore_index = ignore_index
        self.batch_dice = batch_dice
        self.reduction = reduction

    def _dice_loss(self, p: Tensor, t: Tensor, dims: tuple[int, ...]) -> Tensor:
        inter = _sum(p * t, dims)
        card = _sum(p, dims) + _sum(t, dims)
        return 1 - (2 * inter + self.smooth) / (card + self.smooth)

    def extra_repr(self) -> str:
        return (
            f"smooth={self.smooth}, ignore_index={self.ignore_index}, batch_dice={self.batch_dice}, "
            f"reduction={self.reduction!r}"
        )


class BinaryDiceLoss(_DiceBase):
    """Soft Dice loss for binary / multi-label segmentation: ``sigmoid(input)`` against a 0/1 ``target``.

    ``input`` and ``target`` have the same shape ``(N, ...)``. Per sample (all non-batch dims summed)
    unless ``batch_dice``; ``reduction`` then averages/sums the per-sample losses (``"none"`` returns
    them; with ``batch_dice`` the result is one value). Target elements equal to ``ignore_index``
    are left out of every sum.

    Args:
        smooth: added to numerator and denominator, ``>= 0``.
        ignore_index: target value to leave out, or ``None``.
        batch_dice: sum over the batch too (one Dice for the batch).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> target = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
        >>> perfect = (target * 2 - 1) * 50          # logits far on the right side
        >>> round(float(BinaryDiceLoss()(perfect, target)), 6)
        0.0
    """

    def __init__(
        self,
        smooth: float = 1.0,
        ignore_index: int | None = None,
        batch_dice: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(smooth, ignore_index, batch_dice, reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """Dice loss of logits ``input`` against ``target`` (same shape)."""
        if input.shape != target.shape:
            raise ValueError(
                f"BinaryDiceLoss expects input and target of one shape, got "
                f"{tuple(input.shape)} and {tuple(target.shape)}"
            )
        p = torch.sigmoid(input)
        t = target.to(p.dtype)
        if self.ignore_index is not None:
            keep = (target != self.ignore_index).to(p.dtype)
            p, t = p * keep, t * keep
        dims = tuple(range(0 if self.batch_dice else 1, input.ndim))
        loss = self._dice_loss(p, t, dims)
        return loss if self.batch_dice else reduce_loss(loss, self.reduction)


class DiceLoss(_DiceBase):
    """Soft multi-class Dice loss: ``softmax(input, dim=1)`` against class-index targets, one-hot inside.

    ``input`` is ``(N, C)`` or ``(N, C, d1, ...)``; ``target`` is ``(N,)`` or ``(N, d1, ...)`` with
    values in ``[0, C)`` (or ``ignore_index``). Dice is computed per sample and class (spatial dims
    summed), averaged over classes, and ``reduction`` combines the per-sample values. With
    ``batch_dice=True`` the batch is summed as well: one Dice per class, and ``reduction`` combines
    those (``"none"`` returns the ``(C,)`` vector). Pixels whose target is ``ignore_index`` are left
    out of every sum. Classes absent from a sample and not predicted count as perfect thanks to
    ``smooth``.

    Args:
        smooth: added to numerator and denominator, ``>= 0``.
        ignore_index: target value to leave out, or ``None``.
        batch_dice: sum over the batch too.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> target = torch.tensor([[0, 1], [2, 1]])                          # (N=2, W=2)
        >>> logits = torch.nn.functional.one_hot(target, 3).movedim(-1, 1) * 50.0
        >>> round(float(DiceLoss()(logits, target)), 6)
        0.0
        >>> 0 <= float(DiceLoss()(torch.randn(2, 3, 2), target)) <= 1
        True
    """

    def __init__(
        self,
        smooth: float = 1.0,
        ignore_index: int | None = None,
        batch_dice: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(smooth, ignore_index, batch_dice, reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """Dice loss of logits ``input`` (N, C, ...) against class indices ``target`` (N, ...)."""
        if input.ndim < 2 or target.shape != input.shape[:1] + input.shape[2:]:
            raise ValueError(
                f"DiceLoss expects logits (N, C, ...) and class indices (N, ...), got "
                f"{tuple(input.shape)} and {tuple(target.shape)}"
            )
        p = F.softmax(input, dim=1)
        if self.ignore_index is not None:
            valid = target != self.ignore_index
            target = target.masked_fill(~valid, 0)
        # scatter, not F.one_hot: F.one_hot reads min/max back to the host on CPU (a sync per step)
        one_hot = torch.zeros_like(p).scatter_(1, target.long().unsqueeze(1), 1.0)
        if self.ignore_index is not None:
            keep = valid.unsqueeze(1).to(p.dtype)
            p, one_hot = p * keep, one_hot * keep
        spatial = tuple(range(2, input.ndim))
        if self.batch_dice:
            return reduce_loss(self._dice_loss(p, one_hot, (0, *spatial)), self.reduction)  # (C,)
        per_sample = self._dice_loss(p, one_hot, spatial).mean(1)  # (N, C) -> (N,)
        return reduce_loss(per_sample, self.reduction)
