"""Out-of-sample probabilities by K-fold cross-fitting with real Lightning Trainers, then label issues.

Each sample's probabilities come from a model that never trained on it: the data is split into
``folds`` stratified folds with a fixed seed, one fresh model per fold (from the ``build`` factory) is
trained on the other folds with its own ``L.Trainer``, and predicts the held-out fold. This is what
confident learning needs; a model's probabilities on its own training data memorize the noisy labels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .._internal.rng import collect_rng_state, restore_rng_state
from ..config import ConfigError
from ._label_issues import LabelIssues, label_issues_from_probs

__all__ = ["find_label_issues", "stratified_folds"]

_OWNER = "find_label_issues"
_TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 10, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
    "enable_model_summary": False, "accelerator": "cpu", "devices": 1, "num_sanity_val_steps": 0,
}


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold id of every sample: each class is shuffled (seeded) and dealt round-robin over the folds.

    Dealing continues across classes, so fold sizes differ by at most one.

    Example:
        >>> import numpy as np
        >>> f = stratified_folds(np.array([0] * 6 + [1] * 4), folds=2, seed=0)
        >>> np.bincount(f).tolist(), np.bincount(f[:6]).tolist()
        ([5, 5], [3, 3])
    """
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        out[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)
    return out


def _as_dataset(data: Any) -> tuple[Dataset, np.ndarray]:
    """A Dataset and its labels from ``(X, y)`` tensors or a Dataset whose items are ``(x, y, ...)``."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ConfigError(f"{_OWNER}.data", f"X with {x.shape[0]} rows and y with {y.shape[0]}",
                              "(X, y) tensors with as many rows")
        return TensorDataset(x, y), y.detach().cpu().numpy()
    if isinstance(data, TensorDataset) and len(data.tensors) >= 2:
        return data, data.tensors[1].detach().cpu().numpy()
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        targets = getattr(data, "targets", None)  # torchvision datasets carry their labels
        if targets is not None and len(targets) == len(data):  # type: ignore[arg-type]
            return data, np.asarray([int(v) for v in targets])
        labels = [data[i][1] for i in range(len(data))]  # type: ignore[arg-type]  # loads every item once
        return data, np.asarray([int(v) for v in labels])
    raise ConfigError(f"{_OWNER}.data", type(data).__name__,
                      "a map-style torch Dataset whose items are (x, y, ...) or a tuple (X, y) of tensors")


def _default_predict(module: torch.nn.Module, batch: Any) -> torch.Tensor:
    return module(batch[0])


@torch.no_grad()
def _predict_probs(module: Any, loader: DataLoader, predict: Callable[[Any, Any], torch.Tensor],
                   outputs: str) -> np.ndarray:
    """Probabilities of the held-out samples, in loader order, with the module in eval mode."""
    was_training = module.training
    module.eval()
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    chunks = []
    try:
        for batch in loader:
            batch = [t.to(device) if isinstance(t, torch.Tensor) else t for t in batch]
            out = predict(module, batch).float()
            chunks.append((out.softmax(-1) if outputs == "logits" else out).cpu())
    finally:
        module.train(was_training)
    return torch.cat(chunks).numpy().astype(np.float64)


def _fit_fold(build: Callable[[], Any], train: Dataset, kwargs: dict[str, Any],
              batch_size: int, seed: int) -> Any:
    """Build a fresh module and fit it on ``train`` with its own Trainer, under a fixed seed."""
    import lightning as L

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build()
        if not isinstance(module, L.LightningModule):
            raise ConfigError(f"{_OWNER}.build", type(module).__name__, "a factory returning a LightningModule")
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen)
        L.Trainer(**kwargs).fit(module, train_dataloaders=loader)
    return module


def _cross_fit(build: Callable[[], Any], dataset: Dataset, fold_of: np.ndarray, kwargs: dict[str, Any],
               batch_size: int, seed: int, predict: Callable[[Any, Any], torch.Tensor],
               outputs: str) -> tuple[np.ndarray, list[float]]:
    """Train one model per fold and predict its held-out samples; returns (probs in data order, seconds per fold)."""
    probs: np.ndarray | None = None
    fold_seconds = []
    for f in range(int(fold_of.max()) + 1):
        t0 = time.perf_counter()
        held_idx = np.flatnonzero(fold_of == f)
        train = Subset(dataset, np.flatnonzero(fold_of != f).tolist())
        module = _fit_fold(build, train, kwargs, batch_size, seed + f)
        held = DataLoader(Subset(dataset, held_idx.tolist()), batch_size=batch_size, shuffle=False)
        p = _predict_probs(module, held, predict, outputs)
        if probs is None:
            probs = np.zeros((len(fold_of), p.shape[1]))
        probs[held_idx] = p
        fold_seconds.append(time.perf_counter() - t0)
    assert probs is not None
    return probs, fold_seconds


def find_label_issues(
    build: Callable[[], Any],
    data: Any,
    folds: int = 5,
    trainer_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    method: str = "confident_learning",
    threshold: float = 0.9,
    rank_by: str = "self_confidence",
    predict: Callable[[Any, Any], torch.Tensor] | None = None,
    outputs: str = "logits",
) -> LabelIssues:
    """Cross-fit ``folds`` fresh models with Lightning and rank suspect labels on their held-out predictions.

    Args:
        build: a factory (class or function, no arguments) returning a fresh ``LightningModule`` whose
            ``training_step`` trains on ``(x, y)`` batches; it is called once per fold.
        data: ``(X, y)`` tensors, or a map-style Dataset whose items are ``(x, y, ...)``; the labels are
            read from ``data.targets`` when it has them (torchvision), else by loading every item once.
        folds: number of stratified folds (>= 2); every sample is predicted exactly once.
        trainer_kwargs: ``L.Trainer`` arguments; merged over quiet CPU defaults (``max_epochs=10``,
            no logger, no checkpoints, no progress bar).
        batch_size: training and prediction batch size.
        seed: seeds the folds, each fold's model initialization and its shuffling (fold ``f`` uses
            ``seed + f``); the global Python, NumPy and torch RNG states are restored afterwards.
        method, threshold, rank_by: passed to :func:`label_issues_from_probs`.
        predict: ``predict(module, batch) -> tensor`` for the held-out batches; default ``module(batch[0])``.
        outputs: whether ``predict`` returns ``"logits"`` (softmax applied) or ``"probs"``.

    Returns:
        a :class:`LabelIssues` with ``probs`` (the out-of-sample probabilities, in data order) and
        ``info["seconds"]``, ``info["fold_seconds"]``, ``info["folds"]`` (the fold of every sample).

    Example:
        >>> import lightning as L, torch
        >>> class Net(L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__(); self.layer = torch.nn.Linear(2, 2)
        ...     def forward(self, x): return self.layer(x)
        ...     def training_step(self, batch, i): return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])
        ...     def configure_optimizers(self): return torch.optim.SGD(self.parameters(), lr=0.5)
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(60) % 2
        >>> x = torch.randn(60, 2, generator=g) * 0.3 + torch.stack([y, 1 - y], 1) * 3.0
        >>> y_noisy = y.clone(); y_noisy[[4, 33]] = 1 - y_noisy[[4, 33]]
        >>> issues = find_label_issues(Net, (x, y_noisy), folds=3, trainer_kwargs={"max_epochs": 20})
        >>> sorted(issues.indices.tolist())
        [4, 33]
    """
    from .._internal.checks import check_choice, check_int

    folds = int(check_int(_OWNER, "folds", folds, minimum=2) or 2)
    batch_size = int(check_int(_OWNER, "batch_size", batch_size) or 1)
    outputs = check_choice(_OWNER, "outputs", outputs, ("logits", "probs"))
    if not callable(build):
        raise ConfigError(f"{_OWNER}.build", build, "a callable returning a fresh LightningModule")
    dataset, labels = _as_dataset(data)
    if np.bincount(labels).max() < folds:
        raise ConfigError(f"{_OWNER}.folds", folds, f"at most the size of the largest class ({np.bincount(labels).max()})")
    kwargs = {**_TRAINER_DEFAULTS, **dict(trainer_kwargs or {})}
    fold_of = stratified_folds(labels, folds, seed)
    t_all = time.perf_counter()
    saved = collect_rng_state()
    try:
        probs, fold_seconds = _cross_fit(build, dataset, fold_of, kwargs, batch_size, seed,
                                         predict or _default_predict, outputs)
    finally:
        restore_rng_state(saved)  # Lightning and DataLoader iterators draw from the global generators
    issues = label_issues_from_probs(probs, labels, method=method, threshold=threshold, rank_by=rank_by,
                                     keep_probs=True)
    issues.info.update(seconds=time.perf_counter() - t_all, fold_seconds=fold_seconds, folds=fold_of.tolist(),
                       n_folds=folds)
    return issues
