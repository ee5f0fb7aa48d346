"""How good are LR-finder suggestions? Normalized regret against an oracle grid, in one run.

Seven small tasks of different kinds (an MLP, a CNN with BatchNorm, an LSTM, a tiny transformer
with warm-up + cosine, a regression that overfits, a OneCycle task, a linear model with plain SGD;
Adam, SGD with momentum, RMSprop, AdamW, SGD+Nesterov, plain SGD). For each task:

1. **Oracle grid**: the task is trained for its full budget at 19 log-spaced LRs (1e-5 .. 10, three
   per decade) x 2 seeds, with exactly the optimizer and schedule that ``OptimMixin`` builds from the
   task's optim config; ``L(lr)`` is the final validation loss averaged over the seeds.
2. **Range tests**, once per seed: optkit's :func:`~lightning_optkit.lr_finder.find_lr` (default
   settings, 100 steps; every rule read from the same curve) and Lightning's
   ``Tuner.lr_find().suggestion()`` (its defaults: 1e-8 .. 1, 100 steps), both in a real Lightning
   Trainer on a LightningModule wrapping the same network.
3. **Score**: every suggestion is trained like a grid point (seed ``s`` at seed ``s``'s suggestion)
   and scored by its normalized regret
   ``(L(suggested) - L(best grid LR)) / (L(smallest grid LR) - L(best))`` clipped to [0, 1]
   (0: as good as the best grid LR; 1: no better than not training). A diverged run scores 1.

For optkit the LR trained is ``recommended_lr`` (the schedule-aware peak for the warm-up/cosine and
OneCycle tasks; the suggestion itself for constant LRs); Lightning's suggestion is used as
``optimizer.lr`` directly, as a Lightning user would. A second table checks the schedule-aware
peak rule against "peak = suggestion" on the tasks that have a schedule.

Run: ``python benchmarks/lr_finder_quality.py`` (2-3 minutes on 2 CPU cores; ``--tasks a,b``
runs a subset, ``--json PATH`` also writes every number).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import OptimMixin, build_optimizers, load_config
from lightning_optkit.config import TrainingLength
from lightning_optkit.lr_finder import DEFAULT_RULE, RULES, find_lr

GRID = [10 ** (-5 + k / 3) for k in range(19)]  # 1e-5 .. 10, three per decade
SEEDS = (0, 1)
TARGET_WITHIN = 0.1


# --------------------------------------------------------------------------------------------------
# Tasks


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


@dataclass
class Task:
    name: str
    kind: str
    data: Callable[[], Data]
    model: Callable[[], nn.Module]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optim: dict[str, Any]
    batch_size: int
    epochs: int
    _cache: Data | None = field(default=None, repr=False)

    def get_data(self) -> Data:
        if self._cache is None:
            self._cache = self.data()
        return self._cache

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.get_data().x_train) / self.batch_size)


def _digits(images: bool = False, sequences: bool = False) -> Callable[[], Data]:
    def make() -> Data:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        xtr, xva, ytr, yva = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
        mean, std = xtr.mean(0), xtr.std(0)
        std[std == 0] = 1.0
        xtr, xva = (xtr - mean) / std, (xva - mean) / std
        shape = (-1, 1, 8, 8) if images else (-1, 8, 8) if sequences else (-1, 64)
        return Data(torch.tensor(xtr, dtype=torch.float32).reshape(shape), torch.tensor(ytr),
                    torch.tensor(xva, dtype=torch.float32).reshape(shape), torch.tensor(yva))

    return make


def _markov() -> Data:
    g = torch.Generator().manual_seed(0)
    vocab, length = 16, 17
    trans = torch.distributions.Dirichlet(torch.full((vocab,), 0.2)).sample((vocab,))
    # a second-order twist: the next token also depends on the token two back (needs attention)
    trans2 = torch.distributions.Dirichlet(torch.full((vocab,), 0.2)).sample((vocab,))

    def sample(n: int) -> torch.Tensor:
        seq = torch.zeros(n, length, dtype=torch.long)
        seq[:, 0] = torch.randint(vocab, (n,), generator=g)
        seq[:, 1] = torch.multinomial(trans[seq[:, 0]], 1, generator=g).squeeze(1)
        for t in range(2, length):
            probs = 0.5 * trans[seq[:, t - 1]] + 0.5 * trans2[seq[:, t - 2]]
            seq[:, t] = torch.multinomial(probs, 1, generator=g).squeeze(1)
        return seq

    torch.manual_seed(0)
    train, val = sample(1024), sample(256)
    return Data(train[:, :-1], train[:, 1:], val[:, :-1], val[:, 1:])


def _overfit_regression() -> Data:
    g = torch.Generator().manual_seed(0)
    d = 20
    w = torch.randn(d, 1, generator=g)
    x = torch.randn(48 + 200, d, generator=g)
    y = torch.tanh(x @ w / math.sqrt(d)) * 2 + 0.6 * torch.randn(len(x), 1, generator=g)
    return Data(x[:48], y[:48], x[48:], y[48:])


def _spirals() -> Data:
    rng = np.random.default_rng(0)
    n, k = 300, 3
    xs, ys = [], []
    for c in range(k):
        r = np.linspace(0.05, 1.0, n)
        t = np.linspace(c * 4.0, c * 4.0 + 4.5, n) + rng.normal(0, 0.25, n)
        xs.append(np.stack([r * np.sin(t), r * np.cos(t)], 1))
        ys.append(np.full(n, c))
    x, y = np.concatenate(xs), np.concatenate(ys)
    perm = rng.permutation(len(x))
    x, y = x[perm], y[perm]
    split = int(0.75 * len(x))
    t = torch.tensor
    return Data(t(x[:split], dtype=torch.float32), t(y[:split]), t(x[split:], dtype=torch.float32), t(y[split:]))


def _cancer() -> Data:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    xtr, xva, ytr, yva = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    mean, std = xtr.mean(0), xtr.std(0)
    xtr, xva = (xtr - mean) / std, (xva - mean) / std
    t = torch.tensor
    return Data(t(xtr, dtype=torch.float32), t(ytr), t(xva, dtype=torch.float32), t(yva))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(32 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class RowLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 48, batch_first=True)
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 16, dim: int = 32, length: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True, norm_first=True) for _ in range(2)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        for block in self.blocks:
            h = block(h, src_mask=self.mask, is_causal=True)
        return self.head(self.norm(h))


def _ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(out, y)


def _bce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), y.float())


def _mlp(*sizes: int, act: type[nn.Module] = nn.ReLU) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), act()]
        return nn.Sequential(*layers[:-1])

    return make


TASKS = [
    Task("mlp_adam", "MLP, digits, Adam, constant LR", _digits(), _mlp(64, 128, 10), _ce,
         {"optimizer": {"name": "adam"}}, batch_size=64, epochs=8),
    Task("cnn_bn_sgd", "CNN + BatchNorm, digits, SGD momentum 0.9", _digits(images=True), ConvNet, _ce,
         {"optimizer": {"name": "sgd", "momentum": 0.9}}, batch_size=64, epochs=6),
    Task("lstm_rmsprop", "LSTM over digit rows, RMSprop", _digits(sequences=True), RowLSTM, _ce,
         {"optimizer": {"name": "rmsprop"}}, batch_size=64, epochs=8),
    Task("transformer_warmup_cosine", "2-layer transformer LM, AdamW, warm-up 10% + cosine", _markov, TinyLM, _ce,
         {"optimizer": {"name": "adamw", "weight_decay": 0.01},
          "scheduler": {"name": "warmup_cosine", "warmup": "10%", "min_lr_ratio": 0.01}},
         batch_size=32, epochs=6),
    Task("regression_overfit", "wide MLP on 48 noisy points (overfits), Adam", _overfit_regression,
         _mlp(20, 256, 256, 1), _mse, {"optimizer": {"name": "adam"}}, batch_size=16, epochs=80),
    Task("spirals_onecycle", "MLP on 3 spirals, SGD Nesterov + OneCycle", _spirals, _mlp(2, 64, 64, 3), _ce,
         {"optimizer": {"name": "nesterov"}, "scheduler": {"name": "onecycle"}}, batch_size=32, epochs=12),
    Task("logreg_sgd", "logistic regression, breast cancer, plain SGD", _cancer, _mlp(30, 1), _bce,
         {"optimizer": {"name": "sgd"}}, batch_size=32, epochs=8),
]


# --------------------------------------------------------------------------------------------------
# Training (the oracle, and every suggestion)


def _length(task: Task) -> TrainingLength:
    per = task.steps_per_epoch()
    return TrainingLength(per * task.epochs, (per,) * task.epochs)


def train(task: Task, lr: float, seed: int) -> float:
    """Final validation loss after the task's full budget at ``lr`` (inf when training diverged)."""
    data = task.get_data()
    torch.manual_seed(seed)
    model = task.model()
    cfg = load_config(task.optim, {"optimizer.lr": float(lr)})
    built = build_optimizers(model, cfg, length=_length(task))
    if isinstance(built, tuple):
        optimizer, schedulers = built[0][0], [c["scheduler"] for c in built[1]]
    else:
        optimizer, schedulers = built, []
    gen = torch.Generator().manual_seed(seed)
    n = len(data.x_train)
    model.train()
    for _epoch in range(task.epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, task.batch_size):
            idx = perm[i: i + task.batch_size]
            loss = task.loss(model(data.x_train[idx]), data.y_train[idx])
            if not torch.isfinite(loss):
                return math.inf
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for s in schedulers:
                s.step()
    model.eval()
    with torch.no_grad():
        val = float(task.loss(model(data.x_val), data.y_val))
    return val if math.isfinite(val) else math.inf


class Scores:
    """Cached training runs: ``L(lr)`` = mean over seeds of the final validation loss."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.runs: dict[tuple[float, int], float] = {}

    def run(self, lr: float, seed: int) -> float:
        key = (float(f"{lr:.6g}"), seed)
        if key not in self.runs:
            self.runs[key] = train(self.task, key[0], seed)
        return self.runs[key]

    def grid(self) -> list[float]:
        return [statistics.fmean(self.run(lr, s) for s in SEEDS) for lr in GRID]


# --------------------------------------------------------------------------------------------------
# Range tests in a real Lightning Trainer


class Wrapped(OptimMixin, L.LightningModule):
    def __init__(self, task: Task, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = task.model()
        self.optim_config = {**task.optim, "optimizer": {**task.optim["optimizer"], "lr": 1e-3}}
        self.loss = task.loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.loss(self.net(x), y)


def _loader(task: Task, seed: int) -> DataLoader:
    data = task.get_data()
    return DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=task.batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def _trainer_kwargs(task: Task, root: str) -> dict[str, Any]:
    return dict(accelerator="cpu", devices=1, max_epochs=task.epochs, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)


def optkit_test(task: Task, seed: int, root: str) -> dict[str, Any]:
    torch.manual_seed(seed)
    result = find_lr(Wrapped(task, seed), _loader(task, seed), trainer_kwargs=_trainer_kwargs(task, root))
    factor = result.peak_factor
    return {"suggestions": result.suggestions, "factor": factor, "schedule": result.schedule,
            "curve": {"lrs": result.lrs, "losses": result.losses}}


def lightning_test(task: Task, seed: int, root: str) -> float | None:
    from lightning.pytorch.tuner import Tuner

    torch.manual_seed(seed)
    trainer = L.Trainer(**_trainer_kwargs(task, root))
    with contextlib.redirect_stderr(io.StringIO()):
        finder = Tuner(trainer).lr_find(Wrapped(task, seed), train_dataloaders=_loader(task, seed), update_attr=False)
    return None if finder is None else finder.suggestion()


# --------------------------------------------------------------------------------------------------
# Scoring and the report


def regret(value: float, best: float, worst: float) -> float:
    if not math.isfinite(value):
        return 1.0
    span = worst - best
    if span <= 0:
        return 0.0
    return min(max((value - best) / span, 0.0), 1.0)


def evaluate(task: Task, root: str, log: Callable[[str], None]) -> dict[str, Any]:
    scores = Scores(task)
    t0 = time.perf_counter()
    grid = scores.grid()
    best_i = min(range(len(GRID)), key=lambda i: grid[i])
    best, worst = grid[best_i], grid[0]
    log(f"  grid done in {time.perf_counter() - t0:.0f}s: best lr {GRID[best_i]:.3g} (L={best:.4f}), "
        f"L(smallest)={worst:.4f}")
    tests = {s: optkit_test(task, s, root) for s in SEEDS}
    light = {s: lightning_test(task, s, root) for s in SEEDS}
    columns: dict[str, dict[int, float | None]] = {"lightning": light}
    for rule in RULES:
        columns[rule] = {s: _times(tests[s]["suggestions"][rule], tests[s]["factor"]) for s in SEEDS}
    has_schedule = any(tests[s]["schedule"] != "constant" for s in SEEDS)
    if has_schedule:  # the schedule-aware rule against "peak = suggestion", for the default rule
        columns[f"{DEFAULT_RULE} (peak = suggestion)"] = {s: tests[s]["suggestions"][DEFAULT_RULE] for s in SEEDS}
    out: dict[str, Any] = {"best_lr": GRID[best_i], "L_best": best, "L_smallest": worst, "grid": grid,
                           "schedule": tests[0]["schedule"], "factor": [tests[s]["factor"] for s in SEEDS],
                           "lrs": {}, "L": {}, "regret": {}, "curves": {s: tests[s]["curve"] for s in SEEDS}}
    for name, per_seed in columns.items():
        values = [math.inf if lr is None else scores.run(lr, s) for s, lr in per_seed.items()]
        value = statistics.fmean(values) if all(math.isfinite(v) for v in values) else math.inf
        out["lrs"][name] = [per_seed[s] for s in SEEDS]
        out["L"][name] = value
        out["regret"][name] = regret(value, best, worst)
    log(f"  done in {time.perf_counter() - t0:.0f}s ({len(scores.runs)} training runs)")
    return out


def _times(lr: float | None, factor: float) -> float | None:
    return None if lr is None else lr * factor


def _fmt_lr(values: list[float | None]) -> str:
    return "/".join("-" if v is None else f"{v:.1e}" for v in values)


def report(results: dict[str, dict[str, Any]]) -> str:
    names = ["lightning", *RULES]
    lines = []
    head = f"{'task':<27}" + "".join(f"{n:>16}" for n in ["lightning", *[f"{r}{'*' if r == DEFAULT_RULE else ''}" for r in RULES]])
    lines.append("normalized regret (0 = best grid LR, 1 = no better than the smallest grid LR); * = optkit default")
    lines.append(head)
    for task, res in results.items():
        lines.append(f"{task:<27}" + "".join(f"{res['regret'][n]:>16.3f}" for n in names))
    lines.append("-" * len(head))
    mean = {n: statistics.fmean(r["regret"][n] for r in results.values()) for n in names}
    within = {n: sum(r["regret"][n] <= TARGET_WITHIN for r in results.values()) for n in names}
    beats = {n: sum(r["regret"][n] <= r["regret"]["lightning"] + 1e-9 for r in results.values()) for n in names}
    lines.append(f"{'mean regret':<27}" + "".join(f"{mean[n]:>16.3f}" for n in names))
    lines.append(f"{'tasks with regret <= 0.1':<27}" + "".join(f"{f'{within[n]}/{len(results)}':>16}" for n in names))
    lines.append(f"{'tasks not worse than Light.':<27}" + "".join(f"{f'{beats[n]}/{len(results)}':>16}" for n in names))
    lines.append("")
    lines.append("LR per seed (seed 0/seed 1; optkit: the recommended LR, schedule-aware) and the oracle's best grid LR")
    lines.append(f"{'task':<27}{'best grid':>10}" + "".join(f"{n:>20}" for n in names))
    for task, res in results.items():
        lines.append(f"{task:<27}{res['best_lr']:>10.1e}" + "".join(f"{_fmt_lr(res['lrs'][n]):>20}" for n in names))
    sched = {t: r for t, r in results.items() if r["schedule"] != "constant"}
    if sched:
        lines.append("")
        lines.append(f"schedule-aware peak rule ({DEFAULT_RULE}): regret with peak = suggestion x factor vs peak = suggestion")
        for task, res in sched.items():
            plain = res["regret"][f"{DEFAULT_RULE} (peak = suggestion)"]
            lines.append(f"  {task:<27} {res['schedule']:<14} factor {statistics.fmean(res['factor']):.2f}: "
                         f"regret {res['regret'][DEFAULT_RULE]:.3f} (schedule-aware) vs {plain:.3f} (peak = suggestion)")
    target = mean[DEFAULT_RULE] <= 0.1 and within[DEFAULT_RULE] >= math.ceil(0.85 * len(results)) \
        and beats[DEFAULT_RULE] == len(results)
    lines.append("")
    lines.append(f"default rule '{DEFAULT_RULE}': mean regret {mean[DEFAULT_RULE]:.3f} (target <= 0.1), "
                 f"{within[DEFAULT_RULE]}/{len(results)} tasks within 0.1 (target >= 85%), not worse than Lightning on "
                 f"{beats[DEFAULT_RULE]}/{len(results)} (target: all) -> {'targets met' if target else 'targets NOT met'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every number as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_optkit"):
        logging.getLogger(name).setLevel(logging.ERROR)
    tasks = TASKS
    if args.tasks:
        wanted = set(args.tasks.split(","))
        unknown = wanted - {t.name for t in TASKS}
        if unknown:
            parser.error(f"unknown task(s) {sorted(unknown)}; tasks: {', '.join(t.name for t in TASKS)}")
        tasks = [t for t in TASKS if t.name in wanted]

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as root:
        for task in tasks:
            log(f"{task.name}: {task.kind}, {task.epochs * task.steps_per_epoch()} steps")
            results[task.name] = evaluate(task, root, log)
    print(report(results))
    print(f"\n{len(tasks)} tasks, {len(GRID)} grid LRs x {len(SEEDS)} seeds, "
          f"{time.perf_counter() - start:.0f}s (torch threads: 1)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1, default=lambda v: None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
