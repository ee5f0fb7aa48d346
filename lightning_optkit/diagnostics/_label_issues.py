"""Suspect labels from out-of-sample predicted probabilities: confident learning and the confident-wrong rule.

Confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in
Dataset Labels", JMLR 2021) is written here from the paper's definitions:

1. **Per-class thresholds** ``t_j``: the mean predicted probability of class ``j`` over the samples
   *labelled* ``j`` (the expected self-confidence of that class).
2. **Confident joint** ``C[i, j]``: a sample labelled ``i`` counts in ``C[i, j]`` when ``j`` is the
   class of largest probability among the classes whose probability reaches their threshold
   (samples that reach no threshold are not counted).
3. **Calibration**: each row of ``C`` is rescaled to the number of samples with that label, so the
   calibrated joint sums to ``n`` and estimates how many samples labelled ``i`` truly belong to ``j``.
4. **Prune by noise rate**: for every off-diagonal cell ``(i, j)`` the ``round(Q[i, j])`` samples
   labelled ``i`` with the largest margin ``p_j - p_i`` are flagged; the flagged set is the union.

Two decisions beyond the paper, stated so they can be checked: a sample whose predicted class equals
its given label is never flagged (the model agrees with the label), and at least
``min_keep_per_class`` samples of every class stay unflagged.

The probabilities must be **out-of-sample** (each sample predicted by a model that did not train on
it, e.g. by K-fold cross-fitting, see :func:`find_label_issues`): a model's probabilities on its own
training data memorize the noisy labels and hide them.

Nothing here imports cleanlab (AGPL); the benchmark compares against it only inside the benchmark.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._internal.io import atomic_write
from ..config import ConfigError

__all__ = ["LabelIssues", "confident_joint", "label_issues_from_probs"]

_METHODS = ("confident_learning", "confident_wrong")
_RANKS = ("self_confidence", "normalized_margin")


@dataclass
class LabelIssues:
    """Samples whose given label looks wrong, most suspect first.

    Attributes:
        indices: positions of the flagged samples in the data (int64, most suspect first).
        given_label: the label each flagged sample carries.
        predicted_label: the class the out-of-sample model prefers.
        self_confidence: the probability the model gives to the given label.
        score: the label-quality score the ranking sorts by (lower = more suspect): the
            self-confidence, or the normalized margin ``(p_given - max_{j != given} p_j + 1) / 2``.
        method: how the set was chosen (``confident_learning`` or ``confident_wrong``).
        ranked_by: which score ranks it.
        info: extra facts (thresholds, the calibrated joint, cross-fitting cost, ...).
        probs: the out-of-sample probabilities the set was computed from, when kept.

    Example:
        >>> import numpy as np
        >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.05, 0.95], [0.2, 0.8]])
        >>> issues = label_issues_from_probs(probs, [0, 1, 1, 1], method="confident_wrong", threshold=0.7)
        >>> issues.indices.tolist(), issues.predicted_label.tolist(), len(issues)
        ([1], [0], 1)
    """

    indices: np.ndarray
    given_label: np.ndarray
    predicted_label: np.ndarray
    self_confidence: np.ndarray
    score: np.ndarray
    method: str
    ranked_by: str
    info: dict[str, Any] = field(default_factory=dict)
    probs: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def rows(self) -> list[dict[str, Any]]:
        """One dict per flagged sample, in rank order (the CSV's rows)."""
        return [
            {"rank": r, "index": int(i), "given_label": int(g), "predicted_label": int(p),
             "self_confidence": float(s), "score": float(q)}
            for r, (i, g, p, s, q) in enumerate(zip(self.indices, self.given_label, self.predicted_label,
                                                    self.self_confidence, self.score))
        ]

    def plot_images(self, images: Any, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> Any:
        """A grid of the most suspect samples titled ``given -> predicted`` (a matplotlib Figure; PNG at ``path``).

        ``images`` is indexable by the data index (a tensor of samples or a Dataset of ``(x, y)``);
        keyword arguments (``max_images``, ``cols``, ``image_shape``, ``class_names``) go to
        :func:`~._label_images.issue_image_grid`.
        """
        from ._label_images import issue_image_grid

        return issue_image_grid(self, images, path, **kwargs)

    def to_tensorboard(self, images: Any, logger: Any, tag: str = "label_issues", step: int = 0, **kwargs: Any) -> None:
        """Add the image grid to TensorBoard (a Lightning ``TensorBoardLogger`` or a ``SummaryWriter``)."""
        from ._label_images import log_issue_images

        log_issue_images(self, images, logger, tag=tag, step=step, **kwargs)

    def to_csv(self, path: str | os.PathLike[str]) -> str:
        """Write the ranked table as CSV, atomically (temporary file, fsync, rename); returns the path."""
        buf = io.StringIO()
        names = ["rank", "index", "given_label", "predicted_label", "self_confidence", "score"]
        writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            row["self_confidence"] = f"{row['self_confidence']:.6g}"
            row["score"] = f"{row['score']:.6g}"
            writer.writerow(row)
        data = buf.getvalue().encode("utf-8")
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        atomic_write(path, lambda f: f.write(data))
        return str(path)


def _check_inputs(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``probs`` as float64 (n, m) rows summing to 1, ``labels`` as int64 (n,) in [0, m)."""
    p = np.asarray(probs.detach().cpu() if hasattr(probs, "detach") else probs, dtype=np.float64)
    y = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ConfigError("probs", f"array of shape {p.shape}", "a 2-D array (n_samples, n_classes >= 2)")
    if not np.all(np.isfinite(p)) or p.min() < 0 or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise ConfigError("probs", "rows that are not probabilities", "finite, non-negative rows summing to 1",
                          hint="apply softmax to logits first")
    if y.shape != (p.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ConfigError("labels", f"array of shape {y.shape} and dtype {y.dtype}",
                          f"integers of shape ({p.shape[0]},), one per row of probs")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ConfigError("labels", f"values in [{y.min()}, {y.max()}]", f"class ids in [0, {p.shape[1] - 1}]")
    return p / p.sum(1, keepdims=True), y.astype(np.int64)


def _thresholds(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """t_j = mean of p[:, j] over the samples labelled j (classes without samples: 1, never reached)."""
    m = p.shape[1]
    counts = np.bincount(y, minlength=m)
    sums = np.bincount(y, weights=p[np.arange(len(y)), y], minlength=m)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)


def confident_joint(probs: Any, labels: Any, calibrate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The confident joint ``C[given, true]`` and the per-class thresholds, as in Northcutt et al. (2021).

    With ``calibrate`` each row is rescaled to the number of samples carrying that label (a row with
    no confident sample keeps all its samples on the diagonal), so the matrix sums to ``n``.

    Example:
        >>> import numpy as np
        >>> p = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.1, 0.9], [0.85, 0.15]])
        >>> joint, t = confident_joint(p, [0, 0, 1, 1, 1], calibrate=False)
        >>> joint.tolist(), t.round(3).tolist()
        ([[1.0, 0.0], [1.0, 2.0]], [0.8, 0.617])
    """
    p, y = _check_inputs(probs, labels)
    m = p.shape[1]
    t = _thresholds(p, y)
    above = p >= t[None, :] - 1e-12
    masked = np.where(above, p, -np.inf)
    confident = above.any(1)
    true_cls = masked.argmax(1)
    joint = np.zeros((m, m))
    np.add.at(joint, (y[confident], true_cls[confident]), 1.0)
    if calibrate:
        counts = np.bincount(y, minlength=m).astype(np.float64)
        rows = joint.sum(1)
        empty = rows == 0
        joint = np.where(empty[:, None], 0.0, joint / np.maximum(rows, 1)[:, None]) * counts[:, None]
        joint[empty, :] = 0.0
        joint[np.where(empty)[0], np.where(empty)[0]] = counts[empty]
    return joint, t


def _prune_by_noise_rate(p: np.ndarray, y: np.ndarray, joint: np.ndarray, min_keep: int) -> np.ndarray:
    """Flag, for each off-diagonal (i, j), the round(joint[i, j]) samples labelled i of largest p_j - p_i."""
    n, m = p.shape
    flagged = np.zeros(n, dtype=bool)
    pred = p.argmax(1)
    for i in range(m):
        members = np.flatnonzero(y == i)
        budget = max(len(members) - min_keep, 0)
        wanted = [(j, round(float(joint[i, j]))) for j in range(m) if j != i]
        total = sum(c for _, c in wanted)
        if total == 0 or budget == 0:
            continue
        scale = min(1.0, budget / total)
        for j, count in wanted:
            count = round(count * scale)
            if count <= 0:
                continue
            margin = p[members, j] - p[members, i]
            top = members[np.argsort(-margin, kind="stable")[:count]]
            flagged[top] = True
    flagged &= pred != y
    return flagged


def _scores(p: np.ndarray, y: np.ndarray, rank_by: str) -> np.ndarray:
    """Label quality (lower = more suspect): self-confidence or the normalized margin in [0, 1]."""
    own = p[np.arange(len(y)), y]
    if rank_by == "self_confidence":
        return own
    others = p.copy()
    others[np.arange(len(y)), y] = -np.inf
    return (own - others.max(1) + 1.0) / 2.0


def label_issues_from_probs(
    probs: Any,
    labels: Any,
    method: str = "confident_learning",
    threshold: float = 0.9,
    rank_by: str = "self_confidence",
    min_keep_per_class: int = 1,
    keep_probs: bool = False,
) -> LabelIssues:
    """Rank samples whose given label the out-of-sample model confidently disagrees with.

    Args:
        probs: out-of-sample predicted probabilities, shape ``(n, n_classes)`` (numpy or torch).
        labels: the given (possibly noisy) labels, ``n`` integers.
        method: ``"confident_learning"`` (per-class thresholds, confident joint, prune by noise rate;
            see the module docstring) or ``"confident_wrong"`` (the simple rule: the predicted class
            differs from the label and its probability is at least ``threshold``).
        threshold: the probability the confident-wrong rule asks of the predicted class; unused by
            confident learning, whose thresholds are per class and estimated from the data.
        rank_by: ``"self_confidence"`` (probability of the given label, lowest first) or
            ``"normalized_margin"`` (given label's probability minus the best other's, lowest first).
        min_keep_per_class: confident learning never flags more than ``count - min_keep_per_class``
            samples of a class.
        keep_probs: keep ``probs`` in the result (``result.probs``).

    Returns:
        a :class:`LabelIssues`, most suspect first; ``info`` holds the thresholds and the calibrated
        joint for confident learning.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = np.repeat([0, 1, 2], 20)
        >>> probs = np.full((60, 3), 0.05)
        >>> probs[np.arange(60), y] = 0.9
        >>> noisy = y.copy(); noisy[[3, 25, 47]] = [1, 2, 0]
        >>> label_issues_from_probs(probs, noisy).indices.tolist()
        [3, 25, 47]
    """
    from .._internal.checks import check_choice, check_int, check_number

    method = check_choice("label_issues_from_probs", "method", method, _METHODS)
    rank_by = check_choice("label_issues_from_probs", "rank_by", rank_by, _RANKS)
    threshold = check_number("label_issues_from_probs", "threshold", threshold, 0.0, 1.0)  # type: ignore[assignment]
    min_keep = check_int("label_issues_from_probs", "min_keep_per_class", min_keep_per_class, minimum=0)
    p, y = _check_inputs(probs, labels)
    pred = p.argmax(1)
    info: dict[str, Any] = {}
    if method == "confident_wrong":
        flagged = (pred != y) & (p.max(1) >= threshold)
        info["threshold"] = threshold
    else:
        joint, t = confident_joint(p, y, calibrate=True)
        flagged = _prune_by_noise_rate(p, y, joint, int(min_keep or 0))
        info["thresholds"] = t.tolist()
        info["calibrated_joint"] = joint.tolist()
        info["estimated_noise_rate"] = float(1.0 - np.trace(joint) / max(joint.sum(), 1.0))
    score = _scores(p, y, rank_by)
    idx = np.flatnonzero(flagged)
    idx = idx[np.lexsort((idx, score[idx]))]  # lowest score first, ties by index
    return LabelIssues(
        indices=idx.astype(np.int64), given_label=y[idx], predicted_label=pred[idx],
        self_confidence=p[idx, y[idx]], score=score[idx], method=method, ranked_by=rank_by, info=info,
        probs=p if keep_probs else None,
    )
