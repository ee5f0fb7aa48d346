"""Label-issue detection: precision, recall and F1 of the flagged set against the flipped labels.

Datasets: sklearn's digits (1797 x 64, 10 classes) and a synthetic ``make_classification`` problem
(2000 x 20, 5 classes). Noise: 5 % and 10 % of the labels flipped, symmetric (to a uniformly drawn
other class) or class-dependent (class k goes to (k + 1) mod K). Seeds are fixed.

Out-of-sample probabilities come from 5-fold stratified cross-fitting of a logistic regression
(``cross_val_predict``); all three detectors read the same probabilities:

* ``CL``: our confident learning (``label_issues_from_probs``, prune by noise rate),
* ``wrong@0.9``: our confident-wrong rule (predicted class != label with probability >= 0.9),
* ``cleanlab``: ``cleanlab.filter.find_label_issues`` (benchmark-only dependency, AGPL; never
  imported by the package). Without it the column says so and is skipped.

A last section runs our Lightning cross-fitting (``find_label_issues``: one fresh MLP per fold, real
Trainers) on digits with 10 % symmetric noise and reports its cost next to the logistic regression's.

Run: ``python benchmarks/label_issues.py`` (about a minute on 2 CPU cores; ``--no-lightning`` skips the
last section).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from sklearn.datasets import load_digits, make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lightning_optkit.diagnostics import find_label_issues, label_issues_from_probs

try:  # benchmark-only comparison; the package never imports cleanlab
    from cleanlab.filter import find_label_issues as cleanlab_find
except ImportError:  # pragma: no cover - depends on the machine
    cleanlab_find = None

SEED = 0


def datasets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    x, y = load_digits(return_X_y=True)
    xs, ys = make_classification(n_samples=2000, n_features=20, n_informative=10, n_redundant=4, n_classes=5,
                                 n_clusters_per_class=1, class_sep=1.5, random_state=SEED)
    return {"digits": (x.astype(np.float64), y), "synth5": (xs, ys)}


def flip(y: np.ndarray, rate: float, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``rate`` of the labels; returns (noisy labels, flipped indices)."""
    rng = np.random.default_rng(seed)
    k = int(y.max()) + 1
    idx = np.sort(rng.choice(len(y), size=round(rate * len(y)), replace=False))
    noisy = y.copy()
    if kind == "symmetric":
        noisy[idx] = (y[idx] + rng.integers(1, k, size=len(idx))) % k
    else:
        noisy[idx] = (y[idx] + 1) % k
    return noisy, idx


def oos_probs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    cv = StratifiedKFold(5, shuffle=True, random_state=SEED)
    return cross_val_predict(clf, x, y, cv=cv, method="predict_proba")


def prf(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    f, t = set(flagged.tolist()), set(truth.tolist())
    tp = len(f & t)
    p = tp / len(f) if f else 0.0
    r = tp / len(t) if t else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def evaluate(probs: np.ndarray, noisy: np.ndarray, truth: np.ndarray) -> dict[str, tuple[float, float, float]]:
    out = {
        "CL": prf(label_issues_from_probs(probs, noisy).indices, truth),
        "wrong@0.9": prf(label_issues_from_probs(probs, noisy, method="confident_wrong").indices, truth),
    }
    if cleanlab_find is not None:
        mask = cleanlab_find(labels=noisy, pred_probs=probs)
        out["cleanlab"] = prf(np.flatnonzero(mask), truth)
    return out


def main_table() -> float:
    print("cleanlab: " + ("installed" if cleanlab_find is not None else "cleanlab not installed (column skipped)"))
    cols = ["CL", "wrong@0.9"] + (["cleanlab"] if cleanlab_find is not None else [])
    print(f"{'setting':<28}" + "".join(f"{c + ' P/R/F1':>24}" for c in cols) + f"{'CL-cleanlab F1':>16}")
    worst = float("inf")
    cv_seconds = 0.0
    for name, (x, y) in datasets().items():
        for kind in ("symmetric", "class-dep"):
            for rate in (0.05, 0.10):
                noisy, truth = flip(y, rate, kind, seed=SEED + int(rate * 100))
                t0 = time.perf_counter()
                probs = oos_probs(x, noisy)
                cv_seconds += time.perf_counter() - t0
                res = evaluate(probs, noisy, truth)
                cells = "".join(f"{'{:.3f}/{:.3f}/{:.3f}'.format(*res[c]):>24}" for c in cols)
                diff = res["CL"][2] - res["cleanlab"][2] if "cleanlab" in res else float("nan")
                worst = min(worst, diff) if diff == diff else worst
                print(f"{name + ' ' + kind + f' {rate:.0%}':<28}{cells}{diff:>+16.3f}")
    print(f"logistic-regression cross-fitting (5 folds, 8 settings): {cv_seconds:.1f} s in total")
    if worst != float("inf"):
        print(f"worst F1 difference CL - cleanlab: {worst:+.3f} (target >= -0.02)")
    return worst


class _MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def lightning_section() -> None:
    import logging

    import lightning as L

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    class Net(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = _MLP()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.Adam(self.parameters(), lr=3e-3, weight_decay=1e-4)

    x, y = load_digits(return_X_y=True)
    x = StandardScaler().fit_transform(x).astype(np.float32)
    noisy, truth = flip(y, 0.10, "symmetric", seed=SEED + 10)
    t0 = time.perf_counter()
    probs_lr = oos_probs(x.astype(np.float64), noisy)
    lr_s = time.perf_counter() - t0
    data = (torch.from_numpy(x), torch.from_numpy(noisy))
    issues = find_label_issues(Net, data, folds=5, batch_size=64, seed=SEED,
                               trainer_kwargs={"max_epochs": 15})
    ours_s = issues.info["seconds"]
    assert issues.probs is not None
    cols = ["CL", "wrong@0.9"] + (["cleanlab"] if cleanlab_find is not None else [])
    print("\nLightning cross-fitting on digits, 10% symmetric noise (5 folds, MLP 64-64-10, 15 epochs):")
    print(f"{'probabilities':<34}" + "".join(f"{c + ' P/R/F1':>24}" for c in cols) + f"{'seconds':>10}")
    for label, probs, secs in (("sklearn LogisticRegression", probs_lr, lr_s),
                               ("find_label_issues (Lightning MLP)", issues.probs, ours_s)):
        res = evaluate(probs, noisy, truth)
        cells = "".join(f"{'{:.3f}/{:.3f}/{:.3f}'.format(*res[c]):>24}" for c in cols)
        print(f"{label:<34}{cells}{secs:>10.1f}")
    print(f"cost ratio Lightning / sklearn (same run): {ours_s / max(lr_s, 1e-9):.1f}x")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main_table()
    if "--no-lightning" not in sys.argv:
        lightning_section()
