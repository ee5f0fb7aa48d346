"""How good are LR-finder suggestions on tasks they were not tuned on? Regret against an oracle grid.

62 small tasks in four groups (:data:`GROUPS`), each task a few hundred samples and 40-260 steps:

* ``benchmarks/_lr_tasks.py``, 30 tasks (MLPs, CNNs with/without BatchNorm, a residual net, RNN/LSTM/GRU,
  a transformer encoder and a causal LM, autoencoders; classification, regression, multi-label;
  overfitting, label noise, large/small batch; eight optimizers; four schedules), split ONCE by a fixed
  seeded draw (``random.Random(SPLIT_SEED)``) into a **dev half** and a **held-out half**;
* ``benchmarks/_lr_tasks_fresh.py``, 16 **fresh 1** tasks, written blind (by someone who saw no rule's
  output on them) after the held-out half had been looked at too often to stay a clean test;
* ``benchmarks/_lr_tasks_fresh2.py``, 16 **fresh 2** tasks, written blind after fresh 1 was scored.

Protocol, in rounds (the git history has each freeze commit before its blind set was scored): round 1
chose the rule and constants on the dev half and scored fresh 1 once; round 2 chose them on the first
three groups (:data:`CHOSEN_ON`, all seen by then) and scored fresh 2 once. The last group is the blind
test; the report prints every group side by side and the pooled groups the constants were chosen on.
``--no-blind`` leaves the last group out while rules are being chosen.

1. **Oracle grid** (cached): every task trained for its full budget at 21 log-spaced LRs (1e-5 .. 10,
   0.3 decades apart) x 3 seeds, with exactly the optimizer and schedule ``OptimMixin`` builds from
   the task's optim config; ``L(lr)`` = mean final validation loss over the seeds (a diverged run is
   infinite). Grid regret ``r(lr) = (L(lr) - L(best)) / (L(1e-5) - L(best))`` clipped to [0, 1]
   (0: the best grid LR; 1: no better than not training).
2. **Range tests** (cached), 3 seeds each: optkit's :func:`find_lr` (default settings: 100 steps,
   1e-7 .. 10) in a real Lightning Trainer, once validation-aware (``val_batches=2``, what the default
   ``"auto"`` does when the run has validation data, as every task here has: the rules read the held-out
   loss; its cost is reported) and once on the training loss (``val_batches=0``); and a plain-torch
   replica of fastai's ``lr_find``
   (100 iterations 1e-7 .. 10, exponential, debiased EMA beta 0.98, stop at 4x the best smoothed loss,
   rules read ``[num_it // 10 : -5]``) for fastai's ``valley`` and ``minimum / 10``.
3. **Scores**: a suggestion's regret is ``r`` **interpolated linearly in log10(LR)** between grid
   points (no extra training); a missing suggestion scores 1. Lightning's ``suggestion()`` rule
   (steepest ``torch.gradient(loss, spacing=lrs)`` of the smoothed curve, skip 10 first / 1 last) is
   computed on the optkit curve. For optkit rules the scored LR is the recommended (schedule-aware)
   LR; baselines are used as the constant LR a user would configure. Reported per group: mean,
   median and worst regret, tasks within 0.1, and the spread (decades) of the 3 seeds' LRs; the
   default's interval, in the units of the LR to configure (a schedule's peak): how often it holds
   the best grid LR (within half a grid step, and strictly), how often every LR in it scores within
   0.1, its median width in decades; coin-flip oracles (a grid LR where one seed succeeds, regret
   <= 0.1, and another fails, >= 0.5; flagged at the best LR or at > 2 LRs).
4. ``--tune`` re-chooses ``guarded``'s constants (margin, rise, steepest divisor, the rise's noise
   floor, the evidence agreement), the per-schedule peak exponent and the interval's widening on the
   first :data:`CHOSEN_ON` groups, for the held-out-loss range tests (the default) and the training-loss
   ones, each scored on the LR ``find_lr`` recommends, and says whether they equal those in ``_rules.py``.
   A constant changes only when the change clears a bar: more tasks within 0.1, or 0.01 less mean regret
   with no fewer (the interval's widening: 3 more points, see ``_tune_widen``).

Cache: ``benchmarks/.cache/lr_finder_quality.json``, one entry per task keyed by a hash of the task's
code and settings (and of the range-test code for the curves); ``--refresh`` rebuilds everything,
``--build-only`` fills the cache and stops. Run: ``python benchmarks/lr_finder_quality.py --tune``
(about 6.5 minutes with an empty cache on 2 shared CPU cores; from the cache about 30 s, 2-3 minutes with
``--tune``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import io
import json
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _lr_tasks
from _lr_tasks import TASKS, Task
from _lr_tasks_fresh import FRESH_TASKS

try:
    from _lr_tasks_fresh2 import FRESH2_TASKS
except ImportError:  # being written blind
    FRESH2_TASKS = []

from lightning_optkit import OptimMixin, build_optimizers, load_config
from lightning_optkit.config import TrainingLength
from lightning_optkit.lr_finder import _data, _engine, find_lr

GRID = [10 ** (-5 + 0.3 * k) for k in range(21)]  # 1e-5 .. 10
SEEDS = (0, 1, 2)
SPLIT_SEED = 16
VAL_BATCHES = 2  # held-out batches per step in the validation-aware range tests (= find_lr's "auto")
#: the range tests the default reads: every task has validation data, so find_lr's default
#: (``val_batches="auto"``) measures the held-out loss; "optkit" is the training loss only (val_batches=0)
DEFAULT_SOURCE = "optkit_val"
TARGET_WITHIN = 0.1
PREVIOUS_DEFAULT = "steepest"  # the default rule this benchmark replaced
CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache", "lr_finder_quality.json")


# ------------------------------------------------------------------------------------ training

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


# --------------------------------------------------------------------------------- cache keys

def _src(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return repr(obj)


def task_key(task: Task) -> str:
    """Hash of the task's code (data, model, loss, the module's classes), settings, grid and trainer."""
    mod = sys.modules.get(getattr(task.model, "__module__", None) or "", _lr_tasks)
    classes = "".join(_src(v) for v in vars(mod).values() if inspect.isclass(v) and v.__module__ == mod.__name__)
    parts = [task.settings(), getattr(task.data, "__qualname__", ""), _src(task.data),
             getattr(task.model, "__qualname__", ""), _src(task.model), _src(task.loss), classes,
             _src(train), repr(GRID), repr(SEEDS), torch.__version__]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def curve_key(task: Task) -> str:
    """Task key plus the range-test code (optkit's sweep and the fastai replica)."""
    parts = [task_key(task), _src(_engine._Sweep), _src(_engine.sweep_lrs), _src(_data), _src(fastai_curve), _src(optkit_curve),
             repr(VAL_BATCHES)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def load_cache() -> dict[str, Any]:
    if os.path.exists(CACHE):
        with open(CACHE, encoding="utf-8") as fh:
            return json.load(fh)
    return {"oracle": {}, "curves": {}}


def save_cache(cache: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(CACHE), exist_ok=True)
    tmp = CACHE + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(cache, fh, separators=(",", ":"), default=lambda v: None)
    os.replace(tmp, CACHE)


def _finite(values: list[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]


def oracle(task: Task, cache: dict[str, Any], refresh: bool) -> dict[str, Any]:
    key = task_key(task)
    entry = cache["oracle"].get(task.name)
    if entry is None or entry["key"] != key or refresh:
        t0 = time.perf_counter()
        losses = [_finite([train(task, lr, s) for lr in GRID]) for s in SEEDS]
        entry = {"key": key, "losses": losses, "seconds_per_run": (time.perf_counter() - t0) / (len(GRID) * len(SEEDS))}
        cache["oracle"][task.name] = entry
        save_cache(cache)
    return entry


# ------------------------------------------------------------------------------- range tests

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

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.loss(self.net(x), y)


def optkit_curve(task: Task, seed: int, root: str, val_batches: int = 0) -> dict[str, Any]:
    """optkit's default range test in a real Trainer (max_epochs = the task's, so the schedule is known);
    with ``val_batches`` the held-out loss on that many validation batches is measured after every step."""
    data = task.get_data()
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=task.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    val = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=max(task.batch_size, 32)) if val_batches else None
    kwargs = dict(accelerator="cpu", devices=1, max_epochs=task.epochs, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                  num_sanity_val_steps=0)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        result = find_lr(Wrapped(task, seed), loader, val, val_batches=val_batches, trainer_kwargs=kwargs)
    return {"lrs": result.lrs, "losses": _finite(result.losses), "diverged_at": result.diverged_at,
            "schedule": result.schedule, "factor": result.peak_factor, "seconds": time.perf_counter() - t0,
            "val_losses": None if result.val_losses is None else _finite(result.val_losses)}


def fastai_curve(task: Task, seed: int, start: float = 1e-7, end: float = 10.0, num_it: int = 100) -> dict[str, Any]:
    """A plain-torch replica of fastai's ``Learner.lr_find`` recording (smoothed loss per LR)."""
    data = task.get_data()
    torch.manual_seed(seed)
    model = task.model()
    cfg = load_config({"optimizer": task.optim["optimizer"]}, {"optimizer.lr": start})
    optimizer = build_optimizers(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    n, it, avg, best = len(data.x_train), 0, 0.0, math.inf
    lrs: list[float] = []
    losses: list[float] = []
    model.train()
    while it < num_it:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, task.batch_size):
            lr = start * (end / start) ** (it / num_it)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = perm[i: i + task.batch_size]
            loss = task.loss(model(data.x_train[idx]), data.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            it += 1
            avg = 0.98 * avg + 0.02 * float(loss)
            smooth = avg / (1 - 0.98 ** it)
            lrs.append(lr)
            losses.append(smooth)
            best = min(best, smooth)
            if not math.isfinite(smooth) or smooth > 4 * best or it >= num_it:
                return {"lrs": lrs, "losses": _finite(losses)}
    return {"lrs": lrs, "losses": _finite(losses)}


def curves(task: Task, cache: dict[str, Any], refresh: bool, root: str) -> dict[str, Any]:
    key = curve_key(task)
    entry = cache["curves"].get(task.name)
    if entry is None or entry["key"] != key or refresh:
        t0 = time.perf_counter()
        entry = {"key": key, "optkit": [optkit_curve(task, s, root) for s in SEEDS],
                 "fastai": [fastai_curve(task, s) for s in SEEDS],
                 "optkit_val": [optkit_curve(task, s, root, VAL_BATCHES) for s in SEEDS]}
        entry["seconds"] = time.perf_counter() - t0
        cache["curves"][task.name] = entry
        save_cache(cache)
    return entry


# ---------------------------------------------------------------------------------- the split

def split(tasks: list[Task]) -> tuple[list[str], list[str]]:
    """The development and held-out halves: one seeded draw over the sorted task names."""
    names = sorted(t.name for t in tasks)
    dev = set(random.Random(SPLIT_SEED).sample(names, len(names) // 2))
    return [n for n in names if n in dev], [n for n in names if n not in dev]


def _quiet() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_optkit"):
        logging.getLogger(name).setLevel(logging.ERROR)


def build(tasks: list[Task], refresh: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Fill the cache (oracle grids first, then range-test curves); returns it."""
    cache = load_cache()
    for task in tasks:
        t0 = time.perf_counter()
        entry = oracle(task, cache, refresh)
        log(f"oracle {task.name}: {entry['seconds_per_run']:.3f}s per run ({time.perf_counter() - t0:.0f}s)")
    with tempfile.TemporaryDirectory() as root:
        for task in tasks:
            t0 = time.perf_counter()
            curves(task, cache, refresh, root)
            log(f"curves {task.name}: {time.perf_counter() - t0:.0f}s")
    return cache


# ------------------------------------------------------------------------------------- scoring

def grid_regret(entry: dict[str, Any]) -> np.ndarray:
    """Regret of every grid LR from the seed-mean final validation loss (diverged: 1)."""
    per_seed = np.array([[math.inf if v is None else v for v in row] for row in entry["losses"]])
    mean = per_seed.mean(0)
    best, worst = float(np.min(mean)), float(mean[0])
    span = worst - best
    out = np.where(np.isfinite(mean), (mean - best) / span if span > 0 else 0.0, 1.0)
    return np.clip(out, 0.0, 1.0)


def coin_flips(entry: dict[str, Any]) -> list[float]:
    """Grid LRs where one seed succeeds (regret <= 0.1) and another fails (>= 0.5), same normalisation."""
    per_seed = np.array([[math.inf if v is None else v for v in row] for row in entry["losses"]])
    mean = per_seed.mean(0)
    best, worst = float(np.min(mean)), float(mean[0])
    span = max(worst - best, 1e-12)
    r = np.clip(np.where(np.isfinite(per_seed), (per_seed - best) / span, 1.0), 0.0, 1.0)
    return [GRID[i] for i in range(len(GRID)) if r[:, i].min() <= 0.1 and r[:, i].max() >= 0.5]


def regret_at(regrets: np.ndarray, lr: float | None) -> float:
    """Grid regret interpolated linearly in log10(LR) (clamped to the grid's ends); ``None`` scores 1."""
    if lr is None or not math.isfinite(lr) or lr <= 0:
        return 1.0
    return float(np.interp(math.log10(lr), np.log10(GRID), regrets))


def lightning_rule(curve: dict[str, Any]) -> float | None:
    """Lightning's ``_LRFinder.suggestion()`` on a curve: steepest ``torch.gradient`` against linear LR."""
    from lightning_optkit.lr_finder import Curve

    c = Curve.from_losses(curve["lrs"], [math.nan if v is None else v for v in curve["losses"]],
                          diverged_at=curve["diverged_at"])
    end = min(len(c.lrs), c.stop + 1)
    sm = c.smoothed[:end]
    keep = np.isfinite(sm)
    losses, lrs = torch.tensor(sm[keep][10:-1]), torch.tensor(c.lrs[:end][keep][10:-1])
    if len(losses) < 2:
        return None
    grad = torch.gradient(losses, spacing=[lrs])[0]
    return float(lrs[int(torch.argmin(grad))])


def fastai_rules(curve: dict[str, Any]) -> dict[str, float | None]:
    """fastai's ``valley`` and ``minimum`` (LR at the minimum / 10) on its own curve, ``[n // 10 : -5]``."""
    n = 100
    lrs = np.array(curve["lrs"][n // 10: -5])
    losses = np.array([math.nan if v is None else v for v in curve["losses"][n // 10: -5]])
    keep = np.isfinite(losses)
    lrs, losses = lrs[keep], losses[keep]
    if len(losses) < 2:
        return {"fastai_valley": None, "fastai_min10": None}
    length = [1] * len(losses)
    for i in range(1, len(losses)):
        for j in range(i):
            if losses[i] < losses[j] and length[i] < length[j] + 1:
                length[i] = length[j] + 1
    end = int(np.argmax(length))
    begin = end - length[end]
    third = (end - begin) / 3
    idx = begin + int(third) + int(third / 2)
    return {"fastai_valley": float(lrs[idx]), "fastai_min10": float(lrs[int(np.argmin(losses))] / 10)}


def _curve(c: dict[str, Any]) -> Any:
    """The curve optkit's rules read (the held-out loss for the validation-aware range tests)."""
    from lightning_optkit.lr_finder._rules import rules_curve

    def nan(values: list[float | None] | None) -> list[float] | None:
        return None if values is None else [math.nan if v is None else v for v in values]

    return rules_curve(c["lrs"], nan(c["losses"]), nan(c.get("val_losses")), diverged_at=c["diverged_at"])


def optkit_pick(rule: str, source: str = DEFAULT_SOURCE, **kw: Any) -> Callable[[dict[str, Any], int], float | None]:
    """The LR optkit recommends with ``rule``: old rules times the schedule factor, ``guarded`` via ``schedule_peak``."""
    from lightning_optkit.lr_finder import _rules, _verdict

    def pick(entry: dict[str, Any], seed: int) -> float | None:
        c = entry[source][seed]
        curve = _curve(c)
        if _verdict.diverged_at_once(curve):  # find_lr gives no suggestion then
            return None
        if rule != "guarded":
            lr = _rules.RULES[rule].fn(curve)
            return None if lr is None else lr * c["factor"]
        lr = _rules.guarded(curve, **{k: v for k, v in kw.items() if k in ("margin", "rise", "steepest_divisor")})
        if lr is None or c["schedule"] in ("constant",):
            return lr
        peak_kw = {k: v for k, v in kw.items() if k in ("margin", "rise")}
        saved = dict(_rules.PEAK_EXPONENT)
        _rules.PEAK_EXPONENT.update(kw.get("exponents", {}))
        try:
            return _rules.schedule_peak(curve, lr, c["factor"], c["schedule"], **peak_kw)
        finally:
            _rules.PEAK_EXPONENT.clear()
            _rules.PEAK_EXPONENT.update(saved)

    return pick


def candidates() -> dict[str, Callable[[dict[str, Any], int], float | None]]:
    """Baselines and optkit's rules, each a function (task entry, seed) -> LR to train at."""
    out: dict[str, Callable[[dict[str, Any], int], float | None]] = {
        "lightning": lambda e, s: lightning_rule(e["optkit"][s]),
        "fastai_valley": lambda e, s: fastai_rules(e["fastai"][s])["fastai_valley"],
        "fastai_min10": lambda e, s: fastai_rules(e["fastai"][s])["fastai_min10"],
    }
    for rule in ("steepest", "valley", "minimum", "median"):
        out[rule] = optkit_pick(rule, source="optkit")
    out["guarded_train"] = optkit_pick("guarded", source="optkit")  # val_batches=0: the training loss only
    out["guarded"] = optkit_pick("guarded")  # the default: the held-out loss (val_batches="auto")
    return out


def score(cache: dict[str, Any], names: list[str], pick: Callable[[dict[str, Any], int], float | None]) -> dict[str, Any]:
    """Per task: mean regret over the 3 range-test seeds, the LRs, their spread in decades."""
    out = {}
    for name in names:
        regrets = grid_regret(cache["oracle"][name])
        lrs = [pick(cache["curves"][name], i) for i in range(len(SEEDS))]
        found = [lr for lr in lrs if lr is not None and lr > 0]
        spread = math.log10(max(found) / min(found)) if len(found) > 1 else math.nan
        out[name] = {"regret": statistics.fmean(regret_at(regrets, lr) for lr in lrs), "lrs": lrs, "spread": spread}
    return out


def summary(per_task: dict[str, Any]) -> dict[str, float]:
    r = [v["regret"] for v in per_task.values()]
    spreads = [v["spread"] for v in per_task.values() if math.isfinite(v["spread"])]
    return {"mean": statistics.fmean(r), "median": statistics.median(r), "worst": max(r),
            "within": sum(x <= TARGET_WITHIN for x in r), "n": len(r),
            "spread": statistics.fmean(spreads) if spreads else math.nan}


@contextlib.contextmanager
def _constants(**values: float) -> Any:
    """Set module constants of ``_rules`` (``RISE_NOISE_Z``, ``AGREEMENT_DECADES``...) for a block."""
    from lightning_optkit.lr_finder import _rules

    saved = {k: getattr(_rules, k) for k in values}
    for k, v in values.items():
        setattr(_rules, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(_rules, k, v)


def _tune_guarded(cache: dict[str, Any], dev: list[str], log: Callable[[str], None],
                  source: str = DEFAULT_SOURCE) -> tuple[float, float, float]:
    """``guarded``'s margin, rise and steepest divisor, scored on the LR ``find_lr`` recommends (a schedule's
    peak by the current exponents): most tasks within 0.1, then lowest mean regret, then the fewest constants
    changed, then the largest margin (the safest of equals); the constants in ``_rules.py`` stay unless the
    best has more tasks within 0.1, or beats them by 0.01 mean regret with no fewer."""
    from lightning_optkit.lr_finder import _rules

    current = (_rules.MARGIN, _rules.RISE, _rules.STEEPEST_DIVISOR)
    trials = {}
    for margin in (2.0, 3.0, 4.0, 6.0, 8.0, 12.0):
        for rise in (0.05, 0.1, 0.25, 0.5):
            for div in (1.0, 2.0, 3.0, 4.0):
                s = summary(score(cache, dev, optkit_pick("guarded", source, margin=margin, rise=rise,
                                                          steepest_divisor=div)))
                trials[(margin, rise, div)] = (-s["within"], round(s["mean"], 3))
    ranked = sorted(trials, key=lambda k: (trials[k], sum(a != b for a, b in zip(k, current)), -k[0], k[1], k[2]))
    for k in [*ranked[:8], current]:
        log(f"  tune margin {k[0]:>4} rise {k[1]:<4} steepest/{k[2]:.0f}: mean {trials[k][1]:.3f}, "
            f"within {-trials[k][0]}/{len(dev)}" + (" (current)" if k == current else ""))
    best = ranked[0]
    gains = trials[best][0] < trials[current][0] or trials[best][1] <= trials[current][1] - 0.01
    return best if gains and trials[best][0] <= trials[current][0] else current


def _tune_noise(cache: dict[str, Any], dev: list[str], kw: dict[str, float], log: Callable[[str], None]) -> dict[str, float]:
    """The rise's noise floor (``RISE_NOISE_Z``) and the evidence agreement (``AGREEMENT_DECADES``, inf: off).
    The current pair (``_rules.py``) is kept unless a pair beats it by >= 0.01 mean regret, no fewer tasks within
    0.1; among those that do, the pair with the most tasks within 0.1, then the lowest mean, then the mildest.
    (Chosen on the training-loss curves, where they took the mean from 0.051 to 0.028 over the plain (0, inf).)"""
    from lightning_optkit.lr_finder import _rules

    current = (_rules.RISE_NOISE_Z, _rules.AGREEMENT_DECADES)
    trials = {}
    for z in (0.0, 3.0, 4.0, 5.0, 6.0, 8.0):
        for dec in (math.inf, 0.75, 1.0, 1.5, 2.0):
            with _constants(RISE_NOISE_Z=z, AGREEMENT_DECADES=dec):
                s = summary(score(cache, dev, optkit_pick("guarded", **kw)))
            trials[(z, dec)] = (-s["within"], round(s["mean"], 3))
            log(f"  tune rise noise z {z:<3} agreement {dec:<4} decades: mean {s['mean']:.3f}, within {s['within']}/{len(dev)}")
    base = trials.get(current)
    if base is None:  # the current pair is off the grid
        with _constants(RISE_NOISE_Z=current[0], AGREEMENT_DECADES=current[1]):
            s = summary(score(cache, dev, optkit_pick("guarded", **kw)))
        base = (-s["within"], round(s["mean"], 3))
    better = [k for k in trials if trials[k][1] <= base[1] - 0.01 and trials[k][0] <= base[0]]
    if not better:
        return {"RISE_NOISE_Z": current[0], "AGREEMENT_DECADES": current[1]}
    # most tasks within, lowest mean; ties go to the middle of the plateau of equal scores
    top = min(trials[k] for k in better)
    tied = sorted(k for k in better if trials[k] == top)
    z, dec = tied[len(tied) // 2]
    return {"RISE_NOISE_Z": z, "AGREEMENT_DECADES": dec}


def _tune_exponents(cache: dict[str, Any], dev: list[str], kw: dict[str, float],
                    log: Callable[[str], None]) -> dict[str, float]:
    """Each schedule's peak exponent (0, 0.5, 1): leaving the current one (``_rules.PEAK_EXPONENT``, 1 when the
    kind is not listed) needs a gain of 0.01 on the mean regret of all the tasks tuned on (the bar every change
    has), not just of the schedule's few tasks. A schedule with no task keeps its current exponent."""
    from lightning_optkit.lr_finder import _rules

    exponents: dict[str, float] = {}
    for kind in sorted({cache["curves"][n]["optkit"][0]["schedule"] for n in dev} - {"constant"}):
        names = [n for n in dev if cache["curves"][n]["optkit"][0]["schedule"] == kind]
        peaks = {a: summary(score(cache, names, optkit_pick("guarded", **kw, exponents={kind: a})))["mean"]
                 for a in (0.0, 0.5, 1.0)}
        share = len(names) / len(dev)
        now = _rules.PEAK_EXPONENT.get(kind, 1.0)
        exponents[kind] = min(peaks, key=lambda a: (peaks[a] - peaks[now]) * share + (0.0 if a == now else 0.01))
        log(f"  peak exponent for {kind} ({len(names)} dev tasks): " +
            ", ".join(f"{a}: {m:.3f}" for a, m in peaks.items()) + f" -> {exponents[kind]}")
    return exponents


def _tune_widen(cache: dict[str, Any], dev: list[str], log: Callable[[str], None], source: str = DEFAULT_SOURCE) -> float:
    """``INTERVAL_WIDEN``: the factor whose intervals score best, one point per range test whose interval holds
    the best grid LR and one per range test whose every LR scores within 0.1 (width buys the first and costs the
    second); the current factor stays unless another scores at least 3 points more (one task's seeds)."""
    from lightning_optkit.lr_finder import _verdict

    stats = {w: interval_stats(cache, dev, w, source) for w in (1.25, 1.5, 1.75, 2.0, 2.5, 3.0)}
    for w, st in stats.items():
        log(f"  interval widen {w}: holds the best {st['holds']}/{st['k']}, all within 0.1 {st['all_good']}/{st['k']}, "
            f"median width {st['width']:.2f} decades")
    points = {w: st["holds"] + st["all_good"] for w, st in stats.items()}
    chosen = max(points, key=lambda w: (points[w], -w))
    now = stats.get(_verdict.INTERVAL_WIDEN) or interval_stats(cache, dev, _verdict.INTERVAL_WIDEN, source)
    return chosen if points[chosen] >= now["holds"] + now["all_good"] + 3 else _verdict.INTERVAL_WIDEN


def tune(cache: dict[str, Any], dev: list[str], log: Callable[[str], None], source: str = DEFAULT_SOURCE) -> dict[str, Any]:
    """Choose ``guarded``'s margin, rise and steepest divisor, its noise floor and evidence agreement, then
    each schedule's peak exponent and the interval's widening, on the tasks given (the first
    :data:`CHOSEN_ON` groups), each scored on the LR ``find_lr`` recommends."""
    margin, rise, div = _tune_guarded(cache, dev, log, source)
    kw: dict[str, Any] = {"margin": margin, "rise": rise, "steepest_divisor": div, "source": source}
    noise = _tune_noise(cache, dev, kw, log)
    with _constants(**noise):
        exponents = _tune_exponents(cache, dev, kw, log)
        widen = _tune_widen(cache, dev, log, source)
    kw.pop("source")
    return {**kw, **noise, "exponents": exponents, "INTERVAL_WIDEN": widen}


def _row(label: str, groups: list[dict[str, float]]) -> str:
    def cells(s: dict[str, float]) -> str:
        return (f"{s['mean']:>6.3f} {s['median']:>6.3f} {s['worst']:>6.3f} {str(s['within']) + '/' + str(s['n']):>6} "
                f"{s['spread']:>6.2f}")
    return f"| {label:<22} | " + " | ".join(cells(g) for g in groups) + " |"


GROUPS = ("dev half", "held-out half", "fresh 1", "fresh 2 (blind)")
#: the groups the rule and its constants are chosen on (round 2: the dev half, the held-out half and the
#: first fresh set, all looked at by then); the last group is the held-out test
CHOSEN_ON = 3


def report(cache: dict[str, Any], groups: list[list[str]]) -> str:
    """The rule table per group (:data:`GROUPS`) and on the pooled groups the rule was chosen on, per-task regrets,
    the cost of validation-aware tests, the comparison with fastai's valley and the interval's honesty."""
    cands = candidates()
    per = {c: [score(cache, names, f) for names in groups] for c, f in cands.items()}
    head = "mean    med  worst  <=0.1 spread"
    lines = ["regret (0 = best grid LR, 1 = no better than LR 1e-5), mean over 3 range-test seeds; spread = decades "
             "between the 3 seeds' LRs; guarded_train = the default rule on the training loss (val_batches=0)",
             f"| {'rule':<22} | " + " | ".join(f"{g}: {head}" for g in GROUPS[:len(groups)]) +
             f" | chosen on (first {CHOSEN_ON}): {head} |"]
    for c, scores in per.items():
        label = c + (" (default)" if c == _default() else " (before)" if c == PREVIOUS_DEFAULT else "")
        pooled = {k: v for sc in scores[:CHOSEN_ON] for k, v in sc.items()}
        lines.append(_row(label, [*(summary(sc) for sc in scores), summary(pooled)]))
    for idx in reversed(range(len(groups))):
        lines += ["", f"per task ({GROUPS[idx]}): regret of each rule; oracle's best grid LR"]
        lines.append(f"{'task':<30}{'best':>9}" + "".join(f"{c[:13]:>14}" for c in cands))
        for n in groups[idx]:
            best = GRID[int(np.argmin(grid_regret(cache["oracle"][n])))]
            lines.append(f"{n:<30}{best:>9.1e}" + "".join(f"{per[c][idx][n]['regret']:>14.3f}" for c in cands))
    every = [n for names in groups for n in names]
    seconds = {src: statistics.fmean(c["seconds"] for n in every for c in cache["curves"][n][src])
               for src in ("optkit", "optkit_val")}
    lines += ["", f"cost of one range test (mean over tasks and seeds): {seconds['optkit']:.2f}s training loss only, "
                  f"{seconds['optkit_val']:.2f}s with {VAL_BATCHES} held-out batches per step (the default with validation data)"]
    d, v = _default(), "fastai_valley"
    for idx in range(len(groups)):
        worse = [n for n in groups[idx] if per[d][idx][n]["regret"] > per[v][idx][n]["regret"] + 0.05]
        lines.append(f"{GROUPS[idx]}: tasks where '{d}' is worse than fastai's valley by > 0.05: {worse or 'none'}")
    lines += [f"{g}: {intervals(cache, names)}" for g, names in zip(GROUPS, groups)]
    flips = {n: coin_flips(cache["oracle"][n]) for n in every}
    flagged = {n: f for n, f in flips.items() if len(f) > 2 or GRID[int(np.argmin(grid_regret(cache["oracle"][n])))] in f}
    lines.append(f"coin-flip oracles (seeds split success/failure at the best LR or at > 2 grid LRs): {flagged or 'none'}")
    return "\n".join(lines)


def default_interval(c: dict[str, Any], widen: float | None = None) -> tuple[float, float, float] | None:
    """``(low, high, lr)``: the default's interval and LR for one cached range test, in the units of the
    LR to configure (a schedule's peak, as ``find_lr`` reports them); ``None`` without a suggestion."""
    from lightning_optkit.lr_finder import _rules, _verdict

    curve = _curve(c)
    lr = _rules.RULES[_default()].fn(curve)
    saved = _verdict.INTERVAL_WIDEN
    _verdict.INTERVAL_WIDEN = saved if widen is None else widen
    try:
        verdict = _verdict.assess(curve, lr)
    finally:
        _verdict.INTERVAL_WIDEN = saved
    if verdict.interval is None or lr is None:
        return None
    rec = lr if c["schedule"] == "constant" else _rules.schedule_peak(curve, lr, c["factor"], c["schedule"])
    low, high = _verdict.peak_interval(verdict.interval, lr, rec, verdict.margin_lr)
    return low, high, rec


def interval_stats(cache: dict[str, Any], names: list[str], widen: float | None = None,
                   source: str = DEFAULT_SOURCE) -> dict[str, Any]:
    """Coverage of the default's interval over the range tests of ``names`` (seeds pooled).

    ``holds``: the best grid LR lies in ``[low, high]`` widened by half a grid step (the oracle knows the
    best LR to a grid step); ``strict``: without that half step; ``all_good``: every LR in the interval
    (its ends and the grid LRs inside) scores within 0.1 regret; ``width``: median ``log10(high / low)``.
    """
    holds = strict = all_good = 0
    widths, worse, conf_good, conf_bad = [], [], [], []
    for n in names:
        reg = grid_regret(cache["oracle"][n])
        best = GRID[int(np.argmin(reg))]
        for c in cache["curves"][n][source]:
            found = default_interval(c, widen)
            if found is None:
                continue
            low, high, rec = found
            holds += low / 10 ** 0.15 <= best <= high * 10 ** 0.15
            strict += low <= best <= high
            inside = [g for g in GRID if low < g < high]
            all_good += max(regret_at(reg, v) for v in (low, high, *inside)) <= TARGET_WITHIN
            widths.append(math.log10(high / low))
            worse.append(max(regret_at(reg, low), regret_at(reg, high)))
            from lightning_optkit.lr_finder import _rules, _verdict

            curve = _curve(c)
            conf = _verdict.assess(curve, _rules.RULES[_default()].fn(curve)).confidence
            (conf_good if regret_at(reg, rec) <= TARGET_WITHIN else conf_bad).append(conf)
    return {"holds": holds, "strict": strict, "all_good": all_good, "k": len(widths),
            "width": statistics.median(widths) if widths else math.nan, "worse": statistics.fmean(worse) if worse else math.nan,
            "conf_good": statistics.fmean(conf_good) if conf_good else math.nan,
            "conf_bad": statistics.fmean(conf_bad) if conf_bad else math.nan}


def intervals(cache: dict[str, Any], names: list[str]) -> str:
    """How honest the default's interval and confidence are on ``names`` (:func:`interval_stats`)."""
    s = interval_stats(cache, names)
    k = s["k"]
    return (f"interval of '{_default()}' (the LR to configure): holds the best grid LR on {s['holds']}/{k} range tests "
            f"(+- half a grid step; {s['strict']}/{k} strictly), every LR in it within {TARGET_WITHIN} on "
            f"{s['all_good']}/{k}; median width {s['width']:.2f} decades; mean regret at its worse end {s['worse']:.3f}; "
            f"mean confidence {s['conf_good']:.2f} where the suggestion is within {TARGET_WITHIN}, "
            f"{s['conf_bad']:.2f} where it is not")


def _default() -> str:
    from lightning_optkit.lr_finder import DEFAULT_RULE

    return DEFAULT_RULE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refresh", action="store_true", help="rebuild the cached oracle grids and curves")
    parser.add_argument("--build-only", action="store_true", help="fill the cache and stop")
    parser.add_argument("--tune", action="store_true", help="also re-choose guarded's constants on the dev half")
    parser.add_argument("--no-blind", action="store_true",
                        help="leave the blind group (the last of GROUPS) out of build and report: while rules are chosen")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the per-task scores as JSON")
    args = parser.parse_args(argv)
    _quiet()

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    start = time.perf_counter()
    blind = [] if args.no_blind else FRESH2_TASKS
    cache = build([*TASKS, *FRESH_TASKS, *blind], args.refresh, log)
    if args.build_only:
        return 0
    dev, held = split(TASKS)
    fresh, fresh2 = sorted(t.name for t in FRESH_TASKS), sorted(t.name for t in blind)
    if args.tune:
        from lightning_optkit.lr_finder import _rules, _verdict

        current = {"margin": _rules.MARGIN, "rise": _rules.RISE, "steepest_divisor": _rules.STEEPEST_DIVISOR,
                   "RISE_NOISE_Z": _rules.RISE_NOISE_Z, "AGREEMENT_DECADES": _rules.AGREEMENT_DECADES,
                   "INTERVAL_WIDEN": _verdict.INTERVAL_WIDEN}
        for source, what in ((DEFAULT_SOURCE, "held-out loss, the default"), ("optkit", "training loss, val_batches=0")):
            chosen = tune(cache, [*dev, *held, *fresh], log, source)
            same = all(current[k] == chosen[k] for k in current) and \
                all(_rules.PEAK_EXPONENT.get(k, 1.0) == v for k, v in chosen["exponents"].items())
            print(f"tuning on the first {CHOSEN_ON} groups ({what}): {chosen} "
                  f"({'= the constants in _rules.py' if same else 'DIFFERS from _rules.py ' + repr(current)})")
    print(f"development half ({len(dev)}): {', '.join(dev)}\nheld-out half ({len(held)}): {', '.join(held)}\n"
          f"fresh 1 ({len(fresh)}): {', '.join(fresh)}\nfresh 2 ({len(fresh2)}): {', '.join(fresh2)}\n")
    print(report(cache, [dev, held, fresh, fresh2] if fresh2 else [dev, held, fresh]))
    print(f"\n{len(TASKS) + len(fresh) + len(fresh2)} tasks, {len(GRID)} grid LRs x {len(SEEDS)} seeds, range tests x {len(SEEDS)} seeds; "
          f"{time.perf_counter() - start:.0f}s (cached parts reused; torch threads: 1)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({c: score(cache, [*dev, *held, *fresh, *fresh2], f) for c, f in candidates().items()}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
