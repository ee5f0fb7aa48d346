"""The shared per-step gradient-statistics cache.

GradNormMonitor, NonFiniteGuard, AutoClip and TrainingDoctor all need gradient norms at the same
moment: in ``on_before_optimizer_step``, after the closure ran backward (so the gradient is the
accumulated one, all-reduced by DDP), after AMP unscaling, before any clipping and before the
optimizer update. Each asks :func:`grad_stats` for the :class:`GradStats` of the current step; the
first to ask pays for the computation and the others read the same tensors.

Cost model (what syncs when):

* Per-parameter norms are one ``torch._foreach_norm`` call per (device, dtype) bucket, so a model
  whose parameters share a device and dtype costs one fused kernel for all of them, whatever their
  number. Totals, group norms and finiteness flags are a handful of tensor ops on the result.
* Nothing here calls ``.item()``, ``.tolist()`` or ``bool()`` on a device tensor: every value stays
  on the device. The callbacks read values on the host only on their logging/check steps.
* The host side of a step is a walk over the optimizer's parameters to see which have a gradient
  (no device access); the layout (buckets, names, group indices) is rebuilt only when that set
  changes.

With a GradScaler and an optimizer that unscales inside ``step()`` (fused Adam/SGD), Lightning does
not unscale before ``on_before_optimizer_step``; the norms are then divided by the scaler's scale on
the device, so readers always see unscaled values.

Example:
    >>> import torch
    >>> from lightning_optkit.callbacks._grad_stats import GradStats
    >>> w = torch.nn.Parameter(torch.ones(3)); b = torch.nn.Parameter(torch.ones(1))
    >>> w.grad = torch.full((3,), 2.0); b.grad = torch.zeros(1)
    >>> stats = GradStats.from_params([w, b], ["layer.weight", "layer.bias"], step=0)
    >>> [round(v, 4) for v in stats.norms(2).tolist()], round(float(stats.total(2)), 4)
    ([3.4641, 0.0], 3.4641)
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .._internal.optimizers import optimizer_params, unwrap_optimizer
from ..config import ConfigError

__all__ = [
    "GradStats",
    "Grouping",
    "StepLoss",
    "check_norm_type",
    "grad_scaler",
    "grad_stats",
    "unscaled_loss",
]

_NORM_TYPES = {1.0: "1", 2.0: "2", math.inf: "inf"}


def check_norm_type(value: Any, owner: str) -> float:
    """``value`` as a float norm order (1, 2 or inf), or a ConfigError naming ``owner.norm_type``."""
    if isinstance(value, str) and value.lower() in ("inf", "infinity"):
        return math.inf
    if not isinstance(value, bool) and isinstance(value, (int, float)) and float(value) in _NORM_TYPES:
        return float(value)
    raise ConfigError(f"{owner}.norm_type", value, "one of 1, 2, 'inf'",
                      hint="2 is the Euclidean norm torch.nn.utils.clip_grad_norm_ uses")


def _foreach_norm(tensors: list[Tensor], ord: float) -> list[Tensor]:
    try:
        return list(torch._foreach_norm(tensors, ord, dtype=torch.float32))
    except (TypeError, RuntimeError):  # older torch without dtype=, or a dtype foreach cannot take
        return [torch.linalg.vector_norm(t.float(), ord) for t in tensors]


class Grouping:
    """Assigns parameter names to named groups: by module prefix at a depth, by regexes, or ``"auto"``.

    * ``"auto"``: the module path up to and including its first numeric component
      (``encoder.layers.0.linear1.weight`` -> ``encoder.layers.0``), else the top-level module
      (``head.weight`` -> ``head``). One group per block of a ``ModuleList``/``Sequential``.
    * an ``int`` depth: the first ``depth`` components of the module path (``2``:
      ``encoder.layers``); parameters owned higher up keep their own (shorter) module path.
    * a mapping ``{group: regex or [regexes]}``: the first group with a regex that ``re.search``-es
      the parameter name wins; the rest go to ``"other"``.

    Groups are ordered by the first parameter (in registration order) that falls into them, which
    for most models is input-to-output order.

    Example:
        >>> g = Grouping("auto", owner="GradNormMonitor.groups")
        >>> [g.group_of(n) for n in ("embed.weight", "blocks.1.attn.qkv.weight", "head.bias")]
        ['embed', 'blocks.1', 'head']
        >>> Grouping(1, owner="x").group_of("blocks.1.attn.qkv.weight")
        'blocks'
        >>> Grouping({"attention": r"\\.attn\\."}, owner="x").group_of("blocks.1.mlp.weight")
        'other'
    """

    def __init__(self, spec: str | int | Mapping[str, str | Sequence[str]], owner: str) -> None:
        self.spec = spec
        self._regexes: list[tuple[str, re.Pattern[str]]] = []
        if isinstance(spec, str):
            if spec != "auto":
                raise ConfigError(owner, spec, "'auto', a depth (int >= 1), or a mapping {group: regex or [regexes]}",
                                  hint="e.g. groups=2 or groups={'attention': r'\\.self_attn\\.'}")
        elif isinstance(spec, bool) or not isinstance(spec, (int, Mapping)):
            raise ConfigError(owner, spec, "'auto', a depth (int >= 1), or a mapping {group: regex or [regexes]}")
        elif isinstance(spec, int):
            if spec < 1:
                raise ConfigError(owner, spec, "a depth of at least 1 (module path components)")
        else:
            if not spec:
                raise ConfigError(owner, dict(spec), "a non-empty mapping {group: regex or [regexes]}")
            for group, pats in spec.items():
                items = [pats] if isinstance(pats, str) else list(pats)
                if not isinstance(group, str) or not group or not items:
                    raise ConfigError(f"{owner}.{group}", pats, "a non-empty group name with at least one regex")
                for pat in items:
                    try:
                        self._regexes.append((group, re.compile(pat)))
                    except (re.error, TypeError) as exc:
                        raise ConfigError(f"{owner}.{group}", pat, f"a valid regular expression ({exc})") from None

    def group_of(self, name: str) -> str:
        """The group of one parameter name."""
        if self._regexes:
            for group, rx in self._regexes:
                if rx.search(name):
                    return group
            return "other"
        parts = name.split(".")
        module = parts[:-1] or parts
        if self.spec == "auto":
            for i, part in enumerate(module):
                if part.isdigit():
                    return ".".join(module[: i + 1])
            return module[0]
        return ".".join(module[: int(self.spec)])  # type: ignore[call-overload]

    def assign(self, names: Sequence[str]) -> tuple[list[str], list[int]]:
        """Group names (first-appearance order) and each name's group index."""
        groups: dict[str, int] = {}
        index = []
        for name in names:
            index.append(groups.setdefault(self.group_of(name), len(groups)))
        return list(groups), index


class _Layout:
    """Where each gradient-carrying parameter of one optimizer lives: buckets, names, group indices."""

    def __init__(self, params: list[Tensor], names: list[str]) -> None:
        self.params = params
        self.names = names
        self.device = params[0].device if params else torch.device("cpu")
        buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(params):
            buckets.setdefault((p.device, p.dtype), []).append(i)
        self.buckets = list(buckets.values())
        order = [i for b in self.buckets for i in b]
        # positions in the concatenated bucket result -> registration order (identity for one bucket)
        self.inverse: Tensor | None = None
        if len(self.buckets) > 1:
            inv = [0] * len(order)
            for pos, i in enumerate(order):
                inv[i] = pos
            self.inverse = torch.tensor(inv, device=self.device)
        self._group_index: dict[int, tuple[list[str], Tensor]] = {}

    def groups(self, grouping: Grouping) -> tuple[list[str], Tensor]:
        key = id(grouping)
        hit = self._group_index.get(key)
        if hit is None:
            names, index = grouping.assign(self.names)
            hit = (names, torch.tensor(index, dtype=torch.long, device=self.device))
            self._group_index[key] = hit
        return hit


class GradStats:
    """Gradient statistics of one optimizer step, computed lazily, each at most once.

    Every accessor returns a tensor on :attr:`device` (the first parameter's device), in float32,
    unscaled: nothing here synchronizes with the device. Parameters without a gradient this step
    are not part of the statistics (``names`` lists the ones that are, in registration order).

    Attributes:
        step: the optimizer step these statistics describe (``trainer.global_step`` before it).
        params: the parameters that have a gradient, in the optimizer's group order.
        names: their names in the LightningModule (``encoder.layers.0.linear1.weight``).
        device: where the results live.

    Example:
        >>> import torch
        >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, float("nan")])
        >>> s = GradStats.from_params([p], ["w"], step=4)
        >>> bool(s.finite()), s.step
        (False, 4)
    """

    def __init__(self, layout: _Layout, step: int, scale_inv: Tensor | None = None) -> None:
        self._layout = layout
        self.step = step
        self.params = layout.params
        self.names = layout.names
        self.device = layout.device
        self._scale_inv = scale_inv
        # the gradient tensors of this step: a callback may set p.grad = None (a skipped step) after the
        # first one read the statistics; the references are dropped after the optimizer step
        self._grads: list[Tensor] | None = [p.grad for p in layout.params]  # type: ignore[misc]
        self._norms: dict[float, Tensor] = {}
        self._totals: dict[float, Tensor] = {}
        self._param_norms: dict[float, Tensor] = {}
        self._groups: dict[tuple[int, float, str], Tensor] = {}
        self._finite: Tensor | None = None
        self._nonfinite_at: Tensor | None = None
        self.extras: dict[str, Any] = {}  # what a callback wants to share with the others this step

    @classmethod
    def from_params(cls, params: Sequence[Tensor], names: Sequence[str], step: int = 0) -> GradStats:
        """Statistics over ``params`` (those without a gradient are dropped), outside a Trainer."""
        keep = [(p, n) for p, n in zip(params, names) if p.grad is not None]
        return cls(_Layout([p for p, _ in keep], [n for _, n in keep]), step)

    def __len__(self) -> int:
        return len(self.params)

    @property
    def buckets(self) -> list[list[int]]:
        """Indices of the parameters per (device, dtype) bucket: one foreach kernel each."""
        return self._layout.buckets

    @property
    def grads(self) -> list[Tensor]:
        """This step's gradient tensors (valid until the optimizer step; the cached norms stay valid)."""
        if self._grads is None:
            raise RuntimeError("GradStats: the gradients of this step are gone (the optimizer stepped); read "
                               "the statistics in on_before_optimizer_step. HINT: norms read before the step "
                               "stay available.")
        return self._grads

    def release(self) -> None:
        """Drop the references to the gradients (called after the optimizer step, so memory can be freed)."""
        self._grads = None

    @property
    def layout_key(self) -> int:
        """Identifies the set and order of parameters these statistics cover (it changes when they change)."""
        return id(self._layout)

    @property
    def scale_inv(self) -> Tensor | None:
        """``1 / loss scale`` when the gradients are still scaled (fp16 AMP with an optimizer that unscales in
        ``step()``): multiply a norm computed from :attr:`grads` by it. ``None`` otherwise."""
        return self._scale_inv

    def per_tensor(self, tensors: list[Tensor], ord: float) -> Tensor:
        """Norms of ``tensors`` laid out like :attr:`params` (one foreach kernel per bucket), shape ``[len(self)]``.

        Example:
            >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.ones(2)
            >>> GradStats.from_params([p], ["w"]).per_tensor([torch.tensor([3.0, 4.0])], 2.0)
            tensor([5.])
        """
        if not tensors:
            return torch.zeros(0, device=self.device)
        parts = []
        for bucket in self._layout.buckets:
            norms = _foreach_norm([tensors[i] for i in bucket], ord)
            parts.append(torch.stack(norms).to(self.device, torch.float32, non_blocking=True))
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        if self._layout.inverse is not None:
            out = out.index_select(0, self._layout.inverse)
        return out

    def norms(self, norm_type: float = 2.0) -> Tensor:
        """Per-parameter gradient norms, shape ``[len(self)]``, in registration order."""
        out = self._norms.get(norm_type)
        if out is None:
            out = self.per_tensor(self.grads, norm_type)
            if self._scale_inv is not None:
                out = out * self._scale_inv
            self._norms[norm_type] = out
        return out

    def total(self, norm_type: float = 2.0) -> Tensor:
        """The norm of all gradients viewed as one vector (what ``clip_grad_norm_`` computes)."""
        out = self._totals.get(norm_type)
        if out is None:
            norms = self.norms(norm_type)
            out = torch.linalg.vector_norm(norms, norm_type) if len(norms) else torch.zeros((), device=self.device)
            self._totals[norm_type] = out
        return out

    def finite(self) -> Tensor:
        """0-d bool tensor: every gradient entry is finite (a NaN or inf anywhere makes the 2-norm non-finite)."""
        if self._finite is None:
            self._finite = torch.isfinite(self.total(2.0))
        return self._finite

    def nonfinite_at(self) -> Tensor:
        """``[first, last]`` index (registration order) of a parameter with a non-finite gradient; -1 if none."""
        if self._nonfinite_at is None:
            bad = ~torch.isfinite(self.norms(2.0))
            n = len(bad)
            if n == 0:
                self._nonfinite_at = torch.full((2,), -1, dtype=torch.long, device=self.device)
            else:
                idx = torch.arange(n, device=self.device)
                first = torch.where(bad, idx, n).min()
                last = torch.where(bad, idx, -1).max()
                self._nonfinite_at = torch.stack([torch.where(first == n, -1, first), last])
        return self._nonfinite_at

    def group_norms(self, grouping: Grouping, norm_type: float = 2.0, of: str = "grad") -> tuple[list[str], Tensor]:
        """Group names and their norms (gradients with ``of="grad"``, parameters with ``of="param"``)."""
        names, index = self._layout.groups(grouping)
        key = (id(grouping), norm_type, of)
        out = self._groups.get(key)
        if out is None:
            norms = self.norms(norm_type) if of == "grad" else self.param_norms(norm_type)
            out = aggregate(norms, index, len(names), norm_type)
            self._groups[key] = out
        return names, out

    def param_norms(self, norm_type: float = 2.0) -> Tensor:
        """Per-parameter norms of the weights themselves (for update ratios and AGC)."""
        out = self._param_norms.get(norm_type)
        if out is None:
            out = self.per_tensor([p.detach() for p in self.params], norm_type)
            self._param_norms[norm_type] = out
        return out

    def group_index(self, grouping: Grouping) -> tuple[list[str], Tensor]:
        """Group names and, per parameter of these statistics, its group index (a device tensor)."""
        return self._layout.groups(grouping)


def aggregate(norms: Tensor, index: Tensor, n_groups: int, norm_type: float) -> Tensor:
    """Combine per-tensor norms into per-group norms (one scatter on the device)."""
    if norm_type == math.inf:
        out = torch.zeros(n_groups, device=norms.device, dtype=norms.dtype)
        return out.scatter_reduce(0, index, norms, reduce="amax", include_self=True)
    if norm_type == 1.0:
        return torch.zeros(n_groups, device=norms.device, dtype=norms.dtype).index_add_(0, index, norms)
    sq = torch.zeros(n_groups, device=norms.device, dtype=norms.dtype).index_add_(0, index, norms * norms)
    return sq.sqrt()


class _Cache:
    """Per-trainer store: one layout per optimizer, one GradStats per (step, optimizer)."""

    def __init__(self) -> None:
        self.layouts: dict[int, tuple[tuple[bool, ...], _Layout]] = {}
        self.current: dict[int, tuple[int, GradStats]] = {}
        self.names: dict[int, str] = {}
        self.names_of: int | None = None
        self.hooked: dict[int, Any] = {}
        self.all_params: dict[int, tuple[tuple[int, ...], list[Tensor]]] = {}

    def params_of(self, optimizer: torch.optim.Optimizer) -> list[Tensor]:
        """The optimizer's parameters, re-listed only when its groups change."""
        shape = tuple(len(g["params"]) for g in optimizer.param_groups)
        known = self.all_params.get(id(optimizer))
        if known is None or known[0] != shape:
            known = (shape, optimizer_params(optimizer))
            self.all_params[id(optimizer)] = known
        return known[1]

    def hook(self, optimizer: torch.optim.Optimizer) -> None:
        """Release the step's gradient references once ``optimizer`` has stepped."""
        if id(optimizer) in self.hooked:
            return
        ref = weakref.ref(self)

        def release(opt: Any, args: Any, kwargs: Any) -> None:
            cache = ref()
            hit = None if cache is None else cache.current.get(id(opt))
            if hit is not None:
                hit[1].release()

        self.hooked[id(optimizer)] = optimizer.register_step_post_hook(release)


_CACHES: weakref.WeakKeyDictionary[Any, _Cache] = weakref.WeakKeyDictionary()


def _names(cache: _Cache, module: Any, wanted: Iterable[int] = ()) -> dict[int, str]:
    if module is None:
        return cache.names
    if cache.names_of != id(module) or any(i not in cache.names for i in wanted):
        cache.names = {id(p): n for n, p in module.named_parameters(remove_duplicate=False)}
        cache.names_of = id(module)
    return cache.names


def grad_scaler(trainer: Any) -> Any:
    """The fp16 AMP ``GradScaler`` of ``trainer``'s precision plugin, or ``None`` (no AMP scaling)."""
    return getattr(getattr(trainer, "precision_plugin", None), "scaler", None)


def _scale_inv(trainer: Any, optimizer: Any) -> Tensor | None:
    """1/scale when a GradScaler has not unscaled the gradients yet (optimizers that unscale in step())."""
    scaler = grad_scaler(trainer)
    if scaler is None or not getattr(optimizer, "_step_supports_amp_scaling", False):
        return None
    if not getattr(scaler, "is_enabled", lambda: True)():
        return None
    scale = getattr(scaler, "_scale", None)
    return None if scale is None else scale.double().reciprocal().float()


class StepLoss:
    """The loss of one optimizer step, summed over its backward passes (gradient accumulation), kept on the
    device: ``add`` it in ``on_before_backward``, ``take`` it (and start over) in ``on_before_optimizer_step``.

    Example:
        >>> acc = StepLoss()
        >>> acc.add(torch.tensor(1.5)); acc.add(torch.tensor(0.5))
        >>> acc.take(), acc.take()
        (tensor(2.), None)
    """

    def __init__(self) -> None:
        self.value: Tensor | None = None

    def add(self, loss: Tensor) -> None:
        """Add the (detached, float32) loss of one backward pass."""
        value = loss.detach().float().reshape(())
        self.value = value if self.value is None else self.value + value

    def take(self) -> Tensor | None:
        """The step's summed loss (``None``: no backward this step); the accumulator starts over."""
        value, self.value = self.value, None
        return value


def unscaled_loss(loss: Tensor, trainer: Any) -> Tensor:
    """The loss as the user's ``training_step`` returned it: ``on_before_backward`` sees it multiplied by the
    GradScaler's scale under fp16 AMP, so it is divided back (a device op, no host sync).

    Example:
        >>> unscaled_loss(torch.tensor(2.0), object())  # no precision plugin with a scaler: unchanged
        tensor(2.)
    """
    scale = getattr(grad_scaler(trainer), "_scale", None)
    return loss if scale is None else loss / scale.to(loss.device)


def grad_stats(trainer: Any, optimizer: Any) -> GradStats:
    """The :class:`GradStats` of ``optimizer`` at the trainer's current step (computed on first request).

    Call it from ``on_before_optimizer_step``. Within one optimizer step every caller gets the same
    object, so the norms are computed once however many callbacks read them.
    """
    cache = _CACHES.get(trainer)
    if cache is None:
        cache = _CACHES[trainer] = _Cache()
    opt = unwrap_optimizer(optimizer)
    step = int(getattr(trainer, "global_step", 0))
    hit = cache.current.get(id(opt))
    if hit is not None and hit[0] == step:
        return hit[1]
    every = cache.params_of(opt)
    signature = tuple([p.grad is not None for p in every])
    known = cache.layouts.get(id(opt))
    if known is None or known[0] != signature:
        params = [p for p, has in zip(every, signature) if has]
        names_by_id = _names(cache, getattr(trainer, "lightning_module", None), map(id, params))
        names = [names_by_id.get(id(p), f"param_{i}") for i, p in enumerate(params)]
        known = (signature, _Layout(params, names))
        cache.layouts[id(opt)] = known
    stats = GradStats(known[1], step, _scale_inv(trainer, opt))
    cache.current[id(opt)] = (step, stats)
    cache.hook(opt)
    return stats


def current_stats(trainer: Any, optimizer: Any) -> GradStats | None:
    """The statistics already computed for ``optimizer`` at this step, if any (never computes)."""
    cache = _CACHES.get(trainer)
    if cache is None:
        return None
    hit = cache.current.get(id(unwrap_optimizer(optimizer)))
    if hit is None or hit[0] != int(getattr(trainer, "global_step", 0)):
        return None
    return hit[1]


def param_names(trainer: Any, params: Iterable[Tensor]) -> list[str]:
    """Names of ``params`` in the trainer's LightningModule (``param_<i>`` for strangers)."""
    cache = _CACHES.get(trainer)
    if cache is None:
        cache = _CACHES[trainer] = _Cache()
    params = list(params)
    names = _names(cache, getattr(trainer, "lightning_module", None), map(id, params))
    return [names.get(id(p), f"param_{i}") for i, p in enumerate(params)]
