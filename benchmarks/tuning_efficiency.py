"""Tuning efficiency: what pruning and the staged recipe save, and what one process per trial costs.

Part 1 -- the same trial budget on two tasks (the digits example, and a noisy two-moons MLP defined
here, 1024 training points and 4096 validation points), ``--seeds`` seeds, three methods:

  (a) random search, no pruning;  (b) TPE with Hyperband;  (c) the staged recipe (LR range test per
  optimizer, then TPE + Hyperband inside the narrowed range; the range tests' steps are counted).

For each it prints the best objective, the optimizer steps trained in all (also as epochs), and for
(b)/(c) the steps spent until a trial first reached (a)'s best of the same seed, as a fraction of
(a)'s total (target: <= 1/3). Ratios are exact (the studies are seeded); wall times are noisy.

How much of (a)'s best is luck (skip with ``--no-noise``): an *oracle* that already knows where (a)'s
best trial lies (its optimizer, its LR within a factor 2, its weight decay within a factor 3) runs
random search without pruning there with a third of the trials, and is scored like (b)/(c); and (a)'s
best config is trained again with three other seeds (the data split stays; initialization and batch
order change). When the oracle misses too, (a)'s best is a lucky draw that no method can be expected
to repeat with a third of the compute.

Part 2 -- the launcher (``workers=``, digits, ``--worker-trials`` trials of 1 epoch): the fixed
overhead per trial (wall time less training time, with 1 worker, the study's set-up included;
target <= 1.5 s) and the throughput of 2 workers against 1 (target >= 1.7x on 2 cores).
``OPTKIT_FORK_SERVER=0`` measures plain ``python -m`` trial processes instead of the fork server.

Run: ``python benchmarks/tuning_efficiency.py`` (``--trials N --seeds S --epochs E``; ``--part 1|2``).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import lightning as L
import optuna
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import OptimMixin
from lightning_optkit.tuning import tune

SEARCH = {"optimizer.name": {"choices": ["adamw", "sgd"]},
          "optimizer.lr": {"low": 1e-5, "high": 1.0, "log": True},
          "optimizer.weight_decay": {"low": 1e-6, "high": 1e-1, "log": True},
          "optimizer.momentum": {"low": 0.0, "high": 0.99, "when": {"optimizer.name": "sgd"}}}
BASE = {"optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4}, "loss": {"name": "cross_entropy"}}
# --schedule cosine: every trial decays its LR with warmup_cosine (10 % warm-up, to 1 %), as the demo does
COSINE = {"name": "warmup_cosine", "warmup": "10%", "min_lr_ratio": 0.01}
QUIET = dict(plots=False, tensorboard=False, summary=False, progress=False, reeval=0)  # search efficiency: no re-evaluation
# val_acc is Lightning's float32 mean of per-batch accuracies: two runs with the same number of correct
# predictions can differ by ~1e-7 (one prediction is 1/359 = 2.8e-3 on digits, 1/4096 = 2.4e-4 on moons)
TIE = 1e-6
# what one validation example is worth: digits logs macro accuracy (10 classes of ~36 validation images:
# one image moves one class's recall by ~1/36, the mean by ~1/360); moons logs plain accuracy of 4096 points
ONE_EXAMPLE = {"digits": 1 / 360, "moons": 1 / 4096}


class MoonsNet(OptimMixin, L.LightningModule):
    """A 2 -> 64 -> 64 -> 2 MLP on noisy two moons; logs val_acc."""

    def __init__(self, optim: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(-1) == y).float().mean())


class MoonsData(L.LightningDataModule):
    """Noisy two moons: ``n_train`` training points and a large validation set (``n_val``), so that one
    validation point is 0.02 % of val_acc, not the 0.5 % of a 20 % split of 1024 points."""

    def __init__(self, n_train: int = 1024, n_val: int = 4096, noise: float = 0.25, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = n_train + n_val
        t = torch.rand(n, generator=g) * math.pi
        upper = torch.rand(n, generator=g) < 0.5
        x = torch.stack([torch.where(upper, torch.cos(t), 1 - torch.cos(t)),
                         torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))], 1)
        x = x + noise * torch.randn(n, 2, generator=g)
        y = (~upper).long()
        self.train_ds = TensorDataset(x[:n_train], y[:n_train])
        self.val_ds = TensorDataset(x[n_train:], y[n_train:])

    def train_dataloader(self):
        return DataLoader(self.train_ds, batch_size=64, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_ds, batch_size=1024)


def build_moons(optim: dict):
    return MoonsNet(optim), MoonsData()


def _steps(study: optuna.Study) -> list[tuple[int, float | None]]:
    out = []
    for t in sorted(study.trials, key=lambda t: t.number):
        run = t.user_attrs.get("optkit.run", {})
        out.append((int(run.get("steps", 0)), t.value if t.state == optuna.trial.TrialState.COMPLETE else None))
    return out


def _task(task: str, schedule: str) -> tuple[dict, dict]:
    """``tune``'s model arguments and base config for ``task`` and ``schedule``."""
    model = dict(example="digits") if task == "digits" else dict(model=build_moons)
    return model, (BASE if schedule == "constant" else {**BASE, "scheduler": COSINE})


def _run_method(task: str, method: str, seed: int, trials: int, epochs: int, out: Path, schedule: str = "constant"):
    model, base = _task(task, schedule)
    common = dict(search=SEARCH, config=base, monitor="val_acc", n_trials=trials, seed=seed,
                  trainer_kwargs={"max_epochs": epochs, "accelerator": "cpu", "devices": 1}, out_dir=out, **QUIET)
    if method == "random":
        studies = [tune(**model, sampler="random", pruner="none", **common)]
        extra = 0
    elif method == "tpe+hyperband":
        studies = [tune(**model, sampler="tpe", pruner="hyperband", **common)]
        extra = 0
    else:
        studies = [tune(**model, recipe="staged", **common)]
        extra = sum(int(found["range_test_steps"] or 0) for found in studies[0].user_attrs["optkit.staged"].values())
    return _steps(studies[0]), extra, studies[0]


def _near_winner(params: dict) -> dict:
    """The search space of an oracle that knows where (a)'s best trial lies: its optimizer, its LR within a
    factor 2, its weight decay within a factor 3 (and SGD's momentum within 0.05)."""
    space = {"optimizer.name": {"choices": [params["optimizer.name"]]},
             "optimizer.lr": {"low": params["optimizer.lr"] / 2, "high": params["optimizer.lr"] * 2, "log": True},
             "optimizer.weight_decay": {"low": params["optimizer.weight_decay"] / 3,
                                        "high": params["optimizer.weight_decay"] * 3, "log": True}}
    if "optimizer.momentum" in params:
        m = params["optimizer.momentum"]
        space["optimizer.momentum"] = {"low": max(0.0, m - 0.05), "high": min(0.99, m + 0.05)}
    return space


def _noise(task: str, best: optuna.trial.FrozenTrial, trials: int, seed: int, epochs: int, out: Path,
           schedule: str) -> tuple[list[tuple[int, float | None]], list[float]]:
    """How much of (a)'s best is luck: (1) an oracle that searches only around (a)'s best config (random
    search, no pruning) with one third of (a)'s trials; (2) (a)'s best config itself trained again with
    three other seeds."""
    model, base = _task(task, schedule)
    common = dict(config=base, monitor="val_acc", pruner="none", enqueue_base=False, out_dir=out,
                  trainer_kwargs={"max_epochs": epochs, "accelerator": "cpu", "devices": 1}, **QUIET)
    oracle = tune(**model, search=_near_winner(best.params), sampler="random", n_trials=max(1, trials // 3),
                  seed=seed, study_name=f"oracle-{seed}", **common)
    again = []
    for other in range(1, 4):
        study = tune(**model, search=SEARCH, enqueue=[best.params], n_trials=1, seed=seed + 1000 * other,
                     study_name=f"again-{seed}-{other}", **common)
        again.append(study.best_value)
    return _steps(oracle), again


def _reach(seq: list[tuple[int, float | None]], extra: int, target: float) -> int | None:
    """Steps spent (range tests first) until a trial's value first reached ``target``."""
    spent = extra
    for steps, v in seq:
        spent += steps
        if v is not None and v >= target - TIE:
            return spent
    return None


def _score(task: str, method: str, seed: int, seq: list[tuple[int, float | None]], extra: int, ref_best: float,
           ref_steps: int, fractions: dict[str, list[float]], loose: dict[str, list[float]]) -> None:
    """Print one method's row against (a)'s best and steps, and keep its fractions for the summary."""
    values = [v for _, v in seq if v is not None]
    best = max(values) if values else float("nan")
    reach = _reach(seq, extra, ref_best)
    near = _reach(seq, extra, ref_best - ONE_EXAMPLE[task])
    frac = float("inf") if reach is None else reach / ref_steps
    frac_near = float("inf") if near is None else near / ref_steps
    fractions.setdefault(method, []).append(frac)
    loose.setdefault(method, []).append(frac_near)
    print(f"{task:7} {method:14} {seed:>4} {best:>7.4f} {extra + sum(s for s, _ in seq):>7} "
          f"{reach if reach is not None else 'never':>13} {frac:>9.2f} {frac_near:>13.2f}", flush=True)


def _print_noise(task: str, best: float, again: list[float], luck: dict[str, list[tuple[float, bool]]]) -> None:
    luck.setdefault(task, []).append(((best - sum(again) / len(again)) / ONE_EXAMPLE[task], best > max(again) + TIE))
    print(f"{'':7} (a)'s best config, 3 other seeds: {' '.join(f'{v:.4f}' for v in again)} "
          f"(mean {sum(again) / len(again):.4f}; (a)'s best {best:.4f})", flush=True)


def part1(trials: int, seeds: int, epochs: int, schedule: str = "constant", noise: bool = True,
          first_seed: int = 0) -> None:
    print(f"part 1: {trials} trials of <= {epochs} epochs, {seeds} seeds, {schedule} LR "
          "(steps: optimizer steps trained)")
    print("  fraction: steps until a trial first reached (a)'s best / (a)'s steps (target <= 1/3)")
    print("  within 1 ex.: the same, for (a)'s best less one validation example's worth "
          f"({', '.join(f'{t}: {v:.2e}' for t, v in ONE_EXAMPLE.items())})")
    print(f"{'task':7} {'method':14} {'seed':>4} {'best':>7} {'steps':>7} {'to reach (a)':>13} {'fraction':>9} "
          f"{'within 1 ex.':>13}")
    fractions: dict[str, list[float]] = {}
    loose: dict[str, list[float]] = {}
    luck: dict[str, list[tuple[float, bool]]] = {}
    for task in ("digits", "moons"):
        for seed in range(first_seed, first_seed + seeds):
            ref_best = ref_steps = None
            for method in ("random", "tpe+hyperband", "staged"):
                with tempfile.TemporaryDirectory() as tmp:
                    seq, extra, study = _run_method(task, method, seed, trials, epochs, Path(tmp), schedule)
                    if method == "random" and noise:
                        oracle_seq, again = _noise(task, study.best_trial, trials, seed, epochs, Path(tmp), schedule)
                if ref_best is None:  # (a): the reference
                    ref_best, ref_steps = max(v for _, v in seq if v is not None), sum(s for s, _ in seq)
                    print(f"{task:7} {method:14} {seed:>4} {ref_best:>7.4f} {ref_steps:>7} {'-':>13}", flush=True)
                    if noise:
                        _score(task, "oracle", seed, oracle_seq, 0, ref_best, ref_steps, fractions, loose)
                        _print_noise(task, ref_best, again, luck)
                    continue
                _score(task, method, seed, seq, extra, ref_best, ref_steps, fractions, loose)
    for method in fractions:
        for label, fr in (("random search's best", fractions[method]),
                          ("random search's best within 1 validation example", loose[method])):
            ok = sum(f <= 1 / 3 for f in fr)
            print(f"{method}: reached {label} with <= 1/3 of its steps in {ok}/{len(fr)} runs "
                  f"(median fraction {sorted(fr)[len(fr) // 2]:.2f})")
    for task, runs in luck.items():
        gaps = sorted(g for g, _ in runs)
        print(f"{task}: (a)'s best config trained again with 3 other seeds: their mean lies "
              f"{gaps[len(gaps) // 2]:.1f} validation examples below (a)'s best (median of {len(gaps)} runs; "
              f"{gaps[0]:.1f} to {gaps[-1]:.1f}); (a)'s best beats all three in {sum(a for _, a in runs)}/{len(runs)}")


def part2(trials: int) -> None:
    print(f"\npart 2: the launcher, digits, {trials} trials of 1 epoch, pruning off")
    walls = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            study = tune(example="digits", n_trials=trials, pruner="none", workers=workers, devices="cpu",
                         enqueue_base=False, trainer_kwargs={"max_epochs": 1}, out_dir=tmp, **QUIET)
            walls[workers] = time.perf_counter() - t0
            train = sum(t.user_attrs.get("optkit.run", {}).get("seconds", 0.0) for t in study.trials)
            if workers == 1:
                overhead = (walls[1] - train) / trials
        print(f"workers={workers}: {walls[workers]:.1f} s wall for {trials} trials "
              f"({trials / walls[workers] * 60:.1f} trials/min)", flush=True)
    print(f"fixed overhead per trial process (1 worker): {overhead:.2f} s (target <= 1.5 s)")
    print(f"throughput 2 workers / 1 worker: {walls[1] / walls[2]:.2f}x (target >= 1.7x; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first_seed .. first_seed + seeds - 1")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--worker-trials", type=int, default=12)
    p.add_argument("--part", choices=("1", "2", "all"), default="all")
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                   help="the trials' LR schedule (base config): constant, or warmup_cosine as in the demo")
    p.add_argument("--no-noise", action="store_true",
                   help="skip the oracle and the re-runs of (a)'s best config (they cost ~half of (a) again)")
    args = p.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.part in ("1", "all"):
        part1(args.trials, args.seeds, args.epochs, args.schedule, noise=not args.no_noise, first_seed=args.first_seed)
    if args.part in ("2", "all"):
        part2(args.worker_trials)


if __name__ == "__main__":
    main()
