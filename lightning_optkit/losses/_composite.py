"""Losses made of other losses: a fixed weighted sum, and learned uncertainty weighting.

Both keep the last value of every part in ``last_parts`` (label -> detached 0-d tensor) so a
LightningModule can log them at its own interval; nothing here calls ``.item()`` (no host sync).
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._weighting import GradNormWeighting, build_weighting, uncertainty_terms

__all__ = ["UncertaintyWeightedLoss", "WeightedSumLoss"]


def _default_label(module: nn.Module) -> str:
    name = type(module).__name__
    name = name[:-4] if name.endswith("Loss") and len(name) > 4 else name
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _split_parts(
    losses: Sequence[nn.Module] | Mapping[str, nn.Module] | None, labels: Sequence[str | None] | None
) -> tuple[list[nn.Module], list[str | None]]:
    if losses is None:
        return [], list(labels or [])
    if isinstance(losses, Mapping):
        if labels is not None:
            raise ValueError(
                "labels: give labels either as the keys of a mapping of losses or as a list, not both"
            )
        return list(losses.values()), [str(k) for k in losses]
    modules = list(losses)
    for i, m in enumerate(modules):
        if not isinstance(m, nn.Module):
            raise ValueError(
                f"losses: entry {i} is {type(m).__name__}, expected an nn.Module (use build_loss for configs)"
            )
    if labels is None:
        return modules, [None] * len(modules)
    labels = list(labels)
    if len(labels) != len(modules):
        raise ValueError(f"labels: expected {len(modules)} labels (one per loss), got {len(labels)}")
    return modules, labels


def _unique(labels: Sequence[str | None], modules: Sequence[nn.Module]) -> list[str]:
    out: list[str] = []
    for i, label in enumerate(labels):
        base = label if label else (_default_label(modules[i]) if i < len(modules) else f"task{i}")
        candidate, n = base, 1
        while candidate in out:
            candidate, n = f"{base}_{n}", n + 1
        out.append(candidate)
    return out


def _task_values(items: Any, labels: Sequence[str], parts: Sequence[nn.Module]) -> list[Tensor]:
    """One scalar loss per task from a list / mapping label -> item / 1-d tensor of losses.

    An item is a precomputed 0-d tensor or an ``(input, target, ...)`` tuple for that task's module.
    """
    count = len(labels)
    if isinstance(items, Tensor):
        if items.ndim != 1 or items.shape[0] != count:
            raise ValueError(f"expected a 1-d tensor of {count} task losses, got shape {tuple(items.shape)}")
        return list(items.unbind())
    if isinstance(items, Mapping):
        missing = [lab for lab in labels if lab not in items]
        if missing:
            raise ValueError(f"missing task(s) {missing}; the tasks are {list(labels)}")
        items = [items[lab] for lab in labels]
    items = list(items)
    if len(items) != count:
        raise ValueError(f"expected {count} task items ({', '.join(labels)}), got {len(items)}")
    values = []
    for i, item in enumerate(items):
        if isinstance(item, Tensor):
            value = item
        elif len(parts) == 0:
            raise ValueError(f"task {labels[i]!r}: no loss module configured, pass a precomputed loss tensor")
        else:
            value = parts[i](*item)
        if value.ndim != 0:
            raise ValueError(f"task {labels[i]!r}: expected a scalar loss, got shape {tuple(value.shape)}")
        values.append(value)
    return values


class WeightedSumLoss(nn.Module):
    """``total = sum_i coef_i * loss_i(*args)``: several losses of the same ``(input, target)``.

    In a config each entry of ``losses`` is an ordinary loss config plus two reserved keys:
    ``coef`` (the mixing weight, default 1.0) and ``label`` (the name under which its value is kept,
    default the loss name, made unique). ``weight`` keeps its torch meaning (class weights), so
    cross entropy with class weights inside a sum reads ``{name: cross_entropy, weight: [1, 2],
    coef: 0.5}``::

        loss:
          name: weighted_sum
          losses:
            - {name: cross_entropy, label_smoothing: 0.1}          # coef 1.0
            - {name: dice, coef: 0.5, label: seg_dice}

    After each call ``last_parts`` maps label -> the part's (unweighted) value, detached.

    **Adaptive weights** (``weighting:``, see :mod:`._weighting` for the formulas): ``fixed`` (the
    default), ``inverse_std`` (``1 / (1 + std`` of the last ``window`` values), normalized),
    ``dwa`` (dynamic weight average, ``temperature``), ``gradnorm`` (learned weights, ``alpha``,
    gradients over ``shared_params``: globs over the owning model's parameter names) and
    ``uncertainty`` (Kendall et al., ``init_log_var``; the ``uncertainty_weighted`` loss keeps its
    own name). The total is ``sum_i coef_i * w_i * L_i``. All state is in buffers/parameters of the
    ``weighting`` submodule, so checkpoints resume exactly; the weights are in ``last_weights`` and,
    inside a Trainer, logged as ``loss_weight/<label>`` at the logger's cadence (tensors handed to
    ``self.log``: no host sync). For tasks with their own inputs use :meth:`forward_tasks`::

        loss:
          name: weighted_sum
          weighting: gradnorm
          shared_params: "trunk.*"
          alpha: 1.5
          losses: [{name: mse, label: depth}, {name: cross_entropy, label: seg}]
        # in training_step: self.loss_fn.forward_tasks([(depth_pred, depth), (seg_logits, seg)])

    Args:
        losses: the part modules, or a mapping label -> module.
        coefs: one mixing weight per part (default all 1.0).
        labels: one label per part (``None`` entries get a default from the class name).
        weighting: ``fixed | inverse_std | dwa | gradnorm | uncertainty``.
        window: steps of history (``inverse_std``) or per averaging period (``dwa``); default 20.
        temperature: ``dwa``'s softmax temperature (default 2).
        alpha: ``gradnorm``'s restoring-force exponent (default 1.5).
        shared_params: ``gradnorm``'s shared parameters (glob or list of globs; required).
        init_log_var: ``uncertainty``'s initial ``log sigma^2`` (default 0).
        log_weights: log the weights through the bound LightningModule (see :meth:`bind`).

    Example:
        >>> import torch
        >>> loss = WeightedSumLoss([torch.nn.MSELoss(), torch.nn.L1Loss()], coefs=[1.0, 0.5])
        >>> x, y = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
        >>> float(loss(x, y)), sorted(loss.last_parts)
        (3.25, ['l1', 'mse'])
    """

    def __init__(
        self,
        losses: Sequence[nn.Module] | Mapping[str, nn.Module],
        coefs: Sequence[float] | None = None,
        labels: Sequence[str | None] | None = None,
        weighting: str = "fixed",
        window: int | None = None,
        temperature: float | None = None,
        alpha: float | None = None,
        shared_params: str | Sequence[str] | None = None,
        init_log_var: float | None = None,
        log_weights: bool = True,
    ) -> None:
        super().__init__()
        modules, raw_labels = _split_parts(losses, labels)
        if not modules:
            raise ValueError("losses: expected at least one loss")
        coefs = [1.0] * len(modules) if coefs is None else list(coefs)
        if len(coefs) != len(modules):
            raise ValueError(
                f"coefs: expected {len(modules)} mixing weights (one per loss), got {len(coefs)}"
            )
        for c in coefs:
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
                raise ValueError(f"coefs: expected finite numbers, got {c!r}")
        self.parts = nn.ModuleList(modules)
        self.coefs: list[float] = [float(c) for c in coefs]
        self.labels: list[str] = _unique(raw_labels, modules)
        self.last_parts: dict[str, Tensor] = {}
        options = {"window": window, "temperature": temperature, "alpha": alpha,
                   "shared_params": shared_params, "init_log_var": init_log_var}
        self.weighting_name = weighting
        self.weighting: nn.Module | None = build_weighting(weighting, len(modules), options, self.coefs)
        if self.weighting is not None:  # on the device with the module: no host-to-device copy per step
            self.register_buffer("coef_tensor", torch.tensor(self.coefs), persistent=False)
        self.log_weights = bool(log_weights)
        self.last_weights: dict[str, Tensor] = {}
        self._owner: Any = None

    def bind(self, owner: nn.Module) -> None:
        """Tie the loss to the module that owns it (weakly): ``gradnorm`` resolves ``shared_params``
        in its ``named_parameters()``, and adaptive weights are logged through its ``log`` when it is
        a LightningModule in a running Trainer. :class:`~lightning_optkit.OptimMixin` calls this."""
        self._owner = weakref.ref(owner)
        bind = getattr(self.weighting, "bind", None)
        if bind is not None:
            bind(owner)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_owner"] = None  # a weak reference neither pickles nor should follow a copy
        return state

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        """Call every part with the same arguments and return the weighted total."""
        return self.combine([part(*args, **kwargs) for part in self.parts])

    def forward_tasks(self, items: Sequence[Any] | Mapping[str, Any] | Tensor) -> Tensor:
        """Weighted total of one item per part, for tasks with their own inputs (multi-task heads).

        ``items`` is a list (part order) or a mapping label -> item; an item is a precomputed 0-d
        loss tensor or an ``(input, target, ...)`` tuple for that part's module. A 1-d tensor of
        precomputed losses works too.
        """
        return self.combine(_task_values(items, self.labels, list(self.parts)))

    def combine(self, values: Sequence[Tensor] | Tensor) -> Tensor:
        """Weight the per-part loss values (part order) by ``coef`` and the ``weighting`` rule."""
        losses = values if isinstance(values, Tensor) else torch.stack([v.reshape(()) for v in values])
        self.last_parts = dict(zip(self.labels, losses.detach().unbind()))
        coefs = self.coefs
        if self.weighting is None:
            total: Tensor | None = None
            for coef, value in zip(coefs, losses.unbind()):
                term = value if coef == 1.0 else coef * value
                total = term if total is None else total + term
            assert total is not None
            return total
        weights, extra = self.weighting(losses)
        scaled = weights if all(c == 1.0 for c in coefs) else weights * self.coef_tensor.to(weights.dtype)
        total = (scaled * losses).sum()
        if extra is not None:
            total = total + extra
        self.last_weights = dict(zip(self.labels, weights.detach().unbind()))
        self._log(self.last_weights, losses)
        return total

    def _log(self, weights: dict[str, Tensor], losses: Tensor) -> None:
        """Hand the weights (tensors, no host sync) to Lightning's ``log`` in training steps."""
        owner = self._owner() if self._owner is not None else None
        trainer = getattr(owner, "_trainer", None)
        if not (self.log_weights and self.training and losses.requires_grad and trainer is not None):
            return
        if not getattr(trainer, "loggers", None) or not getattr(trainer, "training", False) \
                or getattr(owner, "_current_fx_name", None) != "training_step":
            return
        owner.log_dict({f"loss_weight/{k}": v for k, v in weights.items()},  # type: ignore[union-attr]
                       on_step=True, on_epoch=False, prog_bar=False, logger=True)

    @property
    def weights(self) -> Tensor:
        """The current weight of each part, ``coef`` excluded (ones for ``fixed``; detached)."""
        if self.weighting is None:
            return torch.ones(len(self.parts))
        rule = self.weighting
        if isinstance(rule, GradNormWeighting):
            return rule.normalized()
        return rule.weights.detach().clone()  # type: ignore[union-attr]

    def extra_repr(self) -> str:
        parts = ", ".join(f"{lab}*{c:g}" for lab, c in zip(self.labels, self.coefs))
        return parts if self.weighting is None else f"{parts}, weighting={self.weighting_name}"


_TASK_SCALES = {None: (1.0, 1.0), "regression": (0.5, 0.5), "classification": (1.0, 0.5)}


class UncertaintyWeightedLoss(nn.Module):
    """Multi-task loss weighted by learned homoscedastic uncertainty (Kendall, Gal & Cipolla, CVPR 2018).

    One learnable ``s_i = log(sigma_i ** 2)`` per task (``log_vars``, an ``nn.Parameter``, so as a
    submodule of the LightningModule it joins the optimizer by itself; being 1-d it is also left out
    of weight decay by ``no_weight_decay: auto``). The total is::

        total = sum_i  a_i * exp(-s_i) * L_i  +  b_i * s_i

    Convention: by default (task kind ``None``) ``a_i = b_i = 1``, i.e. ``exp(-s) L + s``, the form
    most implementations use; it is twice the paper's regression term, which only rescales the total.
    Per task you may ask for the paper's exact terms with ``tasks``: ``"regression"`` gives
    ``0.5 exp(-s) L + 0.5 s`` (Gaussian likelihood, ``L/(2 sigma^2) + log sigma``) and
    ``"classification"`` gives ``exp(-s) L + 0.5 s`` (softmax with temperature,
    ``L/sigma^2 + log sigma``). ``s`` starts at ``init_log_var`` (0: every weight 1).

    ``forward`` takes one item per task, as a list (in task order), a mapping label -> item, or a
    1-d tensor of precomputed losses. An item is either a precomputed 0-d loss tensor or an
    ``(input, target)`` pair (or longer tuple) passed to that task's loss module.

    Config shape (entries of ``losses`` take the reserved key ``label``; ``tasks`` sits beside them)::

        loss:
          name: uncertainty_weighted
          losses: [{name: cross_entropy}, {name: mse, label: depth}]
          tasks: [classification, regression]      # optional
        # or, for losses you compute yourself:
        loss: {name: uncertainty_weighted, num_tasks: 3}

    Args:
        losses: one loss module per task, a mapping label -> module, or ``None`` (precomputed losses).
        num_tasks: number of tasks when ``losses`` is ``None`` (must match otherwise).
        labels: task labels for ``last_parts`` (defaults from the loss names, or ``task0``...).
        tasks: per task ``None``, ``"regression"`` or ``"classification"`` (see above).
        init_log_var: initial value of every ``s_i``.

    Example:
        >>> import torch
        >>> mtl = UncertaintyWeightedLoss([torch.nn.CrossEntropyLoss(), torch.nn.MSELoss()])
        >>> logits, cls = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
        >>> pred, depth = torch.randn(4), torch.randn(4)
        >>> total = mtl([(logits, cls), (pred, depth)])
        >>> total.backward()
        >>> mtl.log_vars.grad.shape, sorted(mtl.last_parts)
        (torch.Size([2]), ['cross_entropy', 'mse'])
    """

    scale_loss: Tensor
    scale_reg: Tensor

    def __init__(
        self,
        losses: Sequence[nn.Module] | Mapping[str, nn.Module] | None = None,
        num_tasks: int | None = None,
        labels: Sequence[str | None] | None = None,
        tasks: Sequence[str | None] | None = None,
        init_log_var: float = 0.0,
    ) -> None:
        super().__init__()
        modules, raw_labels = _split_parts(losses, labels if losses is not None else None)
        if num_tasks is not None and (
            isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1
        ):
            raise ValueError(f"num_tasks: expected a positive integer, got {num_tasks!r}")
        if modules:
            if num_tasks is not None and num_tasks != len(modules):
                raise ValueError(f"num_tasks: got {num_tasks} but {len(modules)} losses are listed")
            count = len(modules)
        elif num_tasks is not None:
            count = num_tasks
            raw_labels = list(labels) if labels is not None else [None] * count
            if len(raw_labels) != count:
                raise ValueError(f"labels: expected {count} labels (one per task), got {len(raw_labels)}")
        else:
            raise ValueError(
                "losses: expected a list of losses, or set num_tasks for precomputed per-task losses"
            )
        kinds = [None] * count if tasks is None else list(tasks)
        if len(kinds) != count or any(k not in _TASK_SCALES for k in kinds):
            raise ValueError(
                f"tasks: expected {count} entries, each null, 'regression' or 'classification', got {tasks!r}"
            )
        if (
            isinstance(init_log_var, bool)
            or not isinstance(init_log_var, (int, float))
            or not math.isfinite(init_log_var)
        ):
            raise ValueError(f"init_log_var: expected a finite number, got {init_log_var!r}")
        self.parts = nn.ModuleList(modules)
        self.labels: list[str] = _unique(raw_labels, modules)
        self.tasks: list[str | None] = kinds
        self.log_vars = nn.Parameter(torch.full((count,), float(init_log_var)))
        dtype = torch.get_default_dtype()
        self.register_buffer(
            "scale_loss", torch.tensor([_TASK_SCALES[k][0] for k in kinds], dtype=dtype), persistent=False
        )
        self.register_buffer(
            "scale_reg", torch.tensor([_TASK_SCALES[k][1] for k in kinds], dtype=dtype), persistent=False
        )
        self.last_parts: dict[str, Tensor] = {}

    @property
    def num_tasks(self) -> int:
        """Number of tasks."""
        return self.log_vars.numel()

    @property
    def weights(self) -> Tensor:
        """The current effective weight ``a_i * exp(-s_i)`` of each task loss (detached)."""
        return uncertainty_terms(self.log_vars.detach(), self.scale_loss, self.scale_reg)[0]

    def _task_losses(self, items: Any) -> Tensor:
        return torch.stack(_task_values(items, self.labels, list(self.parts))).to(self.log_vars.dtype)

    def forward(self, items: Sequence[Any] | Mapping[str, Any] | Tensor) -> Tensor:
        """Uncertainty-weighted total of one item per task (see the class docstring)."""
        losses = self._task_losses(items)
        weights, reg = uncertainty_terms(self.log_vars, self.scale_loss, self.scale_reg)
        total = (weights * losses).sum() + reg
        self.last_parts = dict(zip(self.labels, losses.detach().unbind()))
        return total

    def extra_repr(self) -> str:
        return f"labels={self.labels}, tasks={self.tasks}"
