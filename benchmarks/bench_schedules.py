"""Cost of the declarative schedules against torch's hand-written schedulers, measured in one run.

Prints a table of microseconds per ``scheduler.step()`` and the ratio ours/torch for the same
schedule (these machines are noisy: the ratio, taken in the same run with interleaved repeats, is
the number to quote), plus the one-off cost of ``build_optimizers`` on a 12-layer transformer with
parameter-group rules and layer-wise decay.

Run: ``python benchmarks/bench_schedules.py``
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.optim import lr_scheduler as L

from lightning_optkit import build_optimizers
from lightning_optkit.config import TrainingLength, load_config
from lightning_optkit.schedules import build_scheduler

STEPS = 5_000
GROUPS = 8
REPEATS = 5


def _optimizer() -> torch.optim.Optimizer:
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1} for _ in range(GROUPS)]
    return torch.optim.AdamW(groups, lr=0.1)


def _time_steps(make: Callable[[torch.optim.Optimizer], object]) -> float:
    opt = _optimizer()
    sched = make(opt)
    start = time.perf_counter()
    for _ in range(STEPS):
        sched.step()  # type: ignore[attr-defined]
    return (time.perf_counter() - start) / STEPS * 1e6


def _ours(spec: dict) -> Callable[[torch.optim.Optimizer], object]:
    cfg = load_config({"optimizer": {"name": "adamw", "lr": 0.1}, "scheduler": spec})
    length = TrainingLength(STEPS + 1, ((STEPS + 1) // 10,) * 10)
    return lambda opt: build_scheduler(cfg.blocks()[0][1], opt, length)[0]["scheduler"]


CASES = [
    ("onecycle (momentum cycled)", _ours({"name": "onecycle"}),
     lambda o: L.OneCycleLR(o, max_lr=0.1, total_steps=STEPS + 1)),
    ("cosine, no warm-up", _ours({"name": "warmup_cosine"}), lambda o: L.CosineAnnealingLR(o, T_max=STEPS)),
    ("warmup + cosine", _ours({"name": "warmup_cosine", "warmup": "5%"}),
     lambda o: L.SequentialLR(o, [L.LinearLR(o, 1e-8, 1.0, total_iters=STEPS // 20),
                                  L.CosineAnnealingLR(o, T_max=STEPS - STEPS // 20)], milestones=[STEPS // 20])),
    ("multistep", _ours({"name": "multistep", "milestones": [1000, 3000]}),
     lambda o: L.MultiStepLR(o, [1000, 3000])),
]


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))


class Transformer(nn.Module):
    def __init__(self, d: int = 128, layers: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)


def main() -> None:
    warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*before.*optimizer.step")
    print(f"scheduler.step() cost, {GROUPS} param groups, {STEPS} steps, median of {REPEATS} interleaved runs")
    print(f"{'schedule':<28}{'ours us/step':>14}{'torch us/step':>15}{'ratio':>8}")
    for name, ours, theirs in CASES:
        a, b = [], []
        for _ in range(REPEATS):
            a.append(_time_steps(ours))
            b.append(_time_steps(theirs))
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{name:<28}{ma:>14.2f}{mb:>15.2f}{ma / mb:>8.2f}")

    cfg = load_config({
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
        "param_groups": [{"params": "embed.*", "lr_scale": 0.5}, {"params": "head.*", "lr_scale": 10}],
        "layer_decay": 0.75,
        "scheduler": {"name": "warmup_cosine", "warmup": "5%"},
    })
    model = Transformer()
    n_params = sum(p.numel() for p in model.parameters())
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        opts, scheds = build_optimizers(model, cfg, length=TrainingLength(10_000, (1000,) * 10))
        times.append(time.perf_counter() - start)
    print(f"\nbuild_optimizers on a 12-layer transformer ({n_params / 1e6:.1f}M params, "
          f"{len(opts[0].param_groups)} groups): {statistics.median(times) * 1e3:.1f} ms (once per fit)")


if __name__ == "__main__":
    main()
