"""The loss registry: small frozen :class:`LossInfo` records instead of if/else chains.

Each record names a loss (canonical name plus aliases), where its class lives (a dotted path,
imported lazily), which constructor kwargs hold tensors (config lists become tensors and end up as
non-persistent buffers), which hold callables given as dotted paths, and cheap value checks that run
at config-load time without building anything.

Name lookup is case-insensitive and ignores ``_``, ``-`` and spaces, so ``cross_entropy``,
``CrossEntropy`` and ``crossentropy`` are one name; class names (``CrossEntropyLoss``) are aliases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lightning_optkit._internal.checks import in_interval as _number
from lightning_optkit._internal.imports import locate as import_object
from lightning_optkit.config import ConfigError, did_you_mean

__all__ = [
    "Check",
    "LossInfo",
    "available_losses",
    "get_loss_info",
    "import_object",
    "register_loss",
    "resolve_loss",
]

REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")


@dataclass(frozen=True)
class Check:
    """A cheap check of one kwarg's value, run when a config is loaded (nothing is built).

    Example:
        >>> c = Check("gamma", lambda v: v >= 0, "a number >= 0")
        >>> c.predicate(2.0), c.expected
        (True, 'a number >= 0')
    """

    kwarg: str
    predicate: Callable[[Any], bool]
    expected: str


@dataclass(frozen=True)
class LossInfo:
    """One registry entry.

    Attributes:
        name: canonical name (``"cross_entropy"``).
        target: dotted path of the ``nn.Module`` class, imported on first use, or the class itself.
        aliases: other names (case-insensitive; ``_``/``-``/spaces ignored).
        tensor_kwargs: kwargs whose config value (number or list) becomes a float tensor; when the
            module stores it as a buffer it is re-registered as *non-persistent*.
        vector_kwargs: the subset of ``tensor_kwargs`` that must be a 1-d list (per-class weights).
        callable_kwargs: kwargs whose config value may be a dotted path to a callable.
        reductions: the valid values of ``reduction`` (checked when the class takes one).
        checks: further value checks.
        composite: the entry combines other losses listed under ``losses:``.
        summary: one line for listings.

    Example:
        >>> info = LossInfo("my_mse", "torch.nn.MSELoss", aliases=("mymse",))
        >>> info.load().__name__
        'MSELoss'
    """

    name: str
    target: str | type
    aliases: tuple[str, ...] = ()
    tensor_kwargs: tuple[str, ...] = ()
    vector_kwargs: tuple[str, ...] = ()
    callable_kwargs: tuple[str, ...] = ()
    reductions: tuple[str, ...] = REDUCTIONS
    checks: tuple[Check, ...] = ()
    composite: bool = False
    summary: str = ""

    def load(self) -> type:
        """Import and return the class (cached per dotted path)."""
        if not isinstance(self.target, str):
            return self.target
        cls = _CLASS_CACHE.get(self.target)
        if cls is None:
            cls = import_object(self.target)
            _CLASS_CACHE[self.target] = cls
        return cls


_CLASS_CACHE: dict[str, type] = {}


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


_REGISTRY: dict[str, LossInfo] = {}
_LOOKUP: dict[str, str] = {}  # normalized name/alias -> canonical name


def register_loss(info: LossInfo, *, override: bool = False) -> LossInfo:
    """Add a :class:`LossInfo` to the registry so configs can name it.

    Raises:
        ValueError: a name or alias is taken. With ``override=True`` a clashing alias moves to the new
            entry, and an entry whose own name clashes is replaced.

    Example:
        >>> from lightning_optkit.losses import LossInfo, build_loss, register_loss
        >>> _ = register_loss(LossInfo("doc_example_l1", "torch.nn.L1Loss"), override=True)
        >>> build_loss({"name": "doc_example_l1"})
        L1Loss()
    """
    keys = {_key(n) for n in (info.name, *info.aliases)}
    clashes = {k: _LOOKUP[k] for k in keys if k in _LOOKUP and _LOOKUP[k] != info.name}
    if clashes and not override:
        raise ValueError(
            f"loss names already registered: {sorted(set(clashes.values()))}; pass override=True to replace"
        )
    for k, owner in clashes.items():
        if owner in _REGISTRY and k == _key(owner):  # another entry's own name: that entry is replaced
            _REGISTRY.pop(owner)
            for stale in [s for s, v in _LOOKUP.items() if v == owner]:
                _LOOKUP.pop(stale)
    for stale in [k for k, v in _LOOKUP.items() if v == info.name]:  # re-registering the same name
        _LOOKUP.pop(stale)
    _REGISTRY[info.name] = info
    for k in keys:
        _LOOKUP[k] = info.name  # an alias clash only moves that alias
    return info


def available_losses() -> list[str]:
    """Sorted canonical names of every registered loss.

    Example:
        >>> "cross_entropy" in available_losses() and "focal" in available_losses()
        True
    """
    return sorted(_REGISTRY)


def get_loss_info(name: str) -> LossInfo | None:
    """The record for a name or alias (case-insensitive), or ``None``.

    Example:
        >>> get_loss_info("CrossEntropyLoss").name
        'cross_entropy'
    """
    canonical = _LOOKUP.get(_key(name))
    return None if canonical is None else _REGISTRY[canonical]


def _suggest(name: str) -> list[str]:
    """Canonical names whose name or alias is close to ``name``."""
    owner: dict[str, str] = {}
    for info in _REGISTRY.values():
        for n in (info.name, *info.aliases):
            owner.setdefault(n, info.name)
    return list(dict.fromkeys(owner[hit] for hit in did_you_mean(name, owner, n=5)))[:3]


def resolve_loss(name: Any, path: str = "loss.name") -> tuple[LossInfo | None, type]:
    """Turn a config ``name`` into ``(record or None, nn.Module class)``; every failure is a ConfigError.

    ``name`` is a registry name/alias, or a dotted path to any ``nn.Module`` subclass. A dotted path
    to a registered class (``torch.nn.CrossEntropyLoss``) gets that class's record, so its tensor
    kwargs are handled the same way.

    Example:
        >>> info, cls = resolve_loss("ce")
        >>> info.name, cls.__name__
        ('cross_entropy', 'CrossEntropyLoss')
    """
    import torch.nn as nn

    if not isinstance(name, str) or not name.strip():
        raise ConfigError(path, name, "a loss name (e.g. 'cross_entropy') or a dotted class path")
    name = name.strip()
    info = get_loss_info(name)
    if info is not None:
        return info, info.load()
    if "." not in name:
        raise ConfigError(
            path,
            name,
            "a registered loss name ("
            + ", ".join(available_losses())
            + ") or a dotted path to an nn.Module class",
            suggestions=_suggest(name),
        )
    try:
        obj = import_object(name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            path, name, f"an importable dotted path to an nn.Module class ({type(exc).__name__}: {exc})"
        ) from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ConfigError(
            path, name, f"a dotted path to an nn.Module subclass, not {type(obj).__name__} {obj!r}"
        )
    for candidate in _REGISTRY.values():
        target_name = candidate.target if isinstance(candidate.target, str) else candidate.target.__name__
        if target_name.rsplit(".", 1)[-1] == obj.__name__ and candidate.load() is obj:
            return candidate, obj
    return None, obj


# --------------------------------------------------------------------------------------------------
# Built-in entries


def _ge0(kwarg: str) -> Check:
    return Check(kwarg, lambda v: _number(v) and v >= 0, "a finite number >= 0")


def _gt0(kwarg: str) -> Check:
    return Check(kwarg, lambda v: _number(v) and v > 0, "a finite number > 0")


def _unit(kwarg: str) -> Check:
    return Check(kwarg, lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]")


def _alpha_binary(v: Any) -> bool:
    return v is None or (_number(v) and 0 <= v <= 1)


def _alpha_classes(v: Any) -> bool:
    return v is None or (
        isinstance(v, (list, tuple)) and len(v) > 0 and all(_number(x) and x >= 0 for x in v)
    )


def _optional_int(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool))


def _task_kinds(v: Any) -> bool:
    return v is None or (
        isinstance(v, (list, tuple)) and all(k in (None, "regression", "classification") for k in v)
    )


_TORCH = "torch.nn."
_OWN = "lightning_optkit.losses."

_BUILTINS: tuple[LossInfo, ...] = (
    # -- classification -------------------------------------------------------------------------
    LossInfo(
        "cross_entropy",
        _TORCH + "CrossEntropyLoss",
        ("ce", "crossentropy", "CrossEntropyLoss", "xent"),
        tensor_kwargs=("weight",),
        vector_kwargs=("weight",),
        checks=(_unit("label_smoothing"),),
        summary="softmax cross entropy on logits; class weights, ignore_index, label_smoothing",
    ),
    LossInfo(
        "nll",
        _TORCH + "NLLLoss",
        ("nll_loss", "NLLLoss", "negative_log_likelihood"),
        tensor_kwargs=("weight",),
        vector_kwargs=("weight",),
        summary="negative log-likelihood on log-probs",
    ),
    LossInfo(
        "bce",
        _TORCH + "BCELoss",
        ("binary_cross_entropy", "BCELoss"),
        tensor_kwargs=("weight",),
        summary="binary cross entropy on probabilities",
    ),
    LossInfo(
        "bce_with_logits",
        _TORCH + "BCEWithLogitsLoss",
        ("bce_logits", "binary_cross_entropy_with_logits", "BCEWithLogitsLoss", "sigmoid_bce"),
        tensor_kwargs=("weight", "pos_weight"),
        summary="binary cross entropy on logits; pos_weight",
    ),
    LossInfo(
        "multilabel_soft_margin",
        _TORCH + "MultiLabelSoftMarginLoss",
        ("MultiLabelSoftMarginLoss",),
        tensor_kwargs=("weight",),
        vector_kwargs=("weight",),
        summary="multi-label one-vs-all logistic loss",
    ),
    LossInfo(
        "multilabel_margin",
        _TORCH + "MultiLabelMarginLoss",
        ("MultiLabelMarginLoss",),
        summary="multi-label hinge loss",
    ),
    LossInfo(
        "multi_margin",
        _TORCH + "MultiMarginLoss",
        ("multiclass_margin", "MultiMarginLoss"),
        tensor_kwargs=("weight",),
        vector_kwargs=("weight",),
        checks=(Check("p", lambda v: v in (1, 2) and not isinstance(v, bool), "1 or 2"),),
        summary="multi-class hinge loss",
    ),
    LossInfo(
        "soft_margin", _TORCH + "SoftMarginLoss", ("SoftMarginLoss",), summary="two-class logistic loss"
    ),
    LossInfo(
        "kl_div",
        _TORCH + "KLDivLoss",
        ("kl", "kldiv", "kl_divergence", "KLDivLoss"),
        reductions=("none", "mean", "sum", "batchmean"),
        summary="Kullback-Leibler divergence",
    ),
    LossInfo(
        "linear_cross_entropy",
        _TORCH + "LinearCrossEntropyLoss",
        ("LinearCrossEntropyLoss",),
        tensor_kwargs=("weight",),
        vector_kwargs=("weight",),
        checks=(_unit("label_smoothing"), Check("ignore_index", _optional_int, "an integer or null")),
        summary="fused final linear layer + cross entropy (needs in_features, num_classes)",
    ),
    # -- regression -----------------------------------------------------------------------------
    LossInfo(
        "mse",
        _TORCH + "MSELoss",
        ("mse_loss", "l2", "mean_squared_error", "MSELoss"),
        summary="squared error",
    ),
    LossInfo(
        "l1", _TORCH + "L1Loss", ("l1_loss", "mae", "mean_absolute_error", "L1Loss"), summary="absolute error"
    ),
    LossInfo(
        "smooth_l1",
        _TORCH + "SmoothL1Loss",
        ("SmoothL1Loss",),
        checks=(_ge0("beta"),),
        summary="L1 with a quadratic zone of width beta",
    ),
    LossInfo("huber", _TORCH + "HuberLoss", ("HuberLoss",), checks=(_gt0("delta"),), summary="Huber loss"),
    LossInfo(
        "poisson_nll",
        _TORCH + "PoissonNLLLoss",
        ("poisson", "PoissonNLLLoss"),
        checks=(_gt0("eps"),),
        summary="Poisson negative log-likelihood",
    ),
    LossInfo(
        "gaussian_nll",
        _TORCH + "GaussianNLLLoss",
        ("gaussian", "GaussianNLLLoss"),
        checks=(_gt0("eps"),),
        summary="Gaussian negative log-likelihood (input, target, var)",
    ),
    # -- embeddings and ranking -----------------------------------------------------------------
    LossInfo(
        "margin_ranking",
        _TORCH + "MarginRankingLoss",
        ("ranking", "MarginRankingLoss"),
        summary="pairwise ranking hinge (x1, x2, y)",
    ),
    LossInfo(
        "hinge_embedding",
        _TORCH + "HingeEmbeddingLoss",
        ("hinge", "HingeEmbeddingLoss"),
        summary="hinge embedding loss",
    ),
    LossInfo(
        "cosine_embedding",
        _TORCH + "CosineEmbeddingLoss",
        ("cosine", "CosineEmbeddingLoss"),
        summary="cosine similarity embedding loss (x1, x2, y)",
    ),
    LossInfo(
        "triplet_margin",
        _TORCH + "TripletMarginLoss",
        ("triplet", "TripletMarginLoss"),
        checks=(_gt0("p"), _gt0("eps")),
        summary="triplet loss with a p-norm distance",
    ),
    LossInfo(
        "triplet_margin_with_distance",
        _TORCH + "TripletMarginWithDistanceLoss",
        ("triplet_with_distance", "TripletMarginWithDistanceLoss"),
        callable_kwargs=("distance_function",),
        checks=(_gt0("margin"),),
        summary="triplet loss with any distance (dotted path to a callable)",
    ),
    # -- sequences ------------------------------------------------------------------------------
    LossInfo(
        "ctc",
        _TORCH + "CTCLoss",
        ("connectionist_temporal_classification", "CTCLoss"),
        checks=(_ge0("blank"),),
        summary="connectionist temporal classification",
    ),
    # -- this package ---------------------------------------------------------------------------
    LossInfo(
        "focal",
        _OWN + "FocalLoss",
        ("focal_loss", "multiclass_focal", "FocalLoss", "softmax_focal"),
        checks=(
            _ge0("gamma"),
            _unit("label_smoothing"),
            Check("alpha", _alpha_classes, "null or a non-empty list of per-class weights >= 0"),
        ),
        summary="multi-class focal loss on logits with class targets (Lin et al. 2017)",
    ),
    LossInfo(
        "binary_focal",
        _OWN + "BinaryFocalLoss",
        ("sigmoid_focal", "binary_focal_loss", "BinaryFocalLoss"),
        checks=(_ge0("gamma"), Check("alpha", _alpha_binary, "null or a number in [0, 1]")),
        summary="binary / multi-label focal loss on logits (Lin et al. 2017)",
    ),
    LossInfo(
        "dice",
        _OWN + "DiceLoss",
        ("dice_loss", "multiclass_dice", "soft_dice", "DiceLoss"),
        checks=(_ge0("smooth"), Check("ignore_index", _optional_int, "an integer or null")),
        summary="soft multi-class Dice loss on logits (softmax over dim 1)",
    ),
    LossInfo(
        "binary_dice",
        _OWN + "BinaryDiceLoss",
        ("binary_dice_loss", "BinaryDiceLoss"),
        checks=(_ge0("smooth"), Check("ignore_index", _optional_int, "an integer or null")),
        summary="soft binary Dice loss on logits (sigmoid)",
    ),
    LossInfo(
        "weighted_sum",
        _OWN + "WeightedSumLoss",
        ("weighted", "composite", "WeightedSumLoss"),
        composite=True,
        summary="sum of losses, each scaled by its `coef`",
    ),
    LossInfo(
        "uncertainty_weighted",
        _OWN + "UncertaintyWeightedLoss",
        ("uncertainty", "kendall", "multitask_uncertainty", "UncertaintyWeightedLoss"),
        composite=True,
        checks=(
            Check(
                "tasks",
                _task_kinds,
                "null or a list with one of null, 'regression', 'classification' per task",
            ),
            Check("num_tasks", lambda v: v is None or (_optional_int(v) and v > 0), "a positive integer"),
            Check("init_log_var", _number, "a finite number"),
        ),
        summary="multi-task losses weighted by learned log-variances (Kendall et al. 2018)",
    ),
)

for _info in _BUILTINS:
    register_loss(_info)
