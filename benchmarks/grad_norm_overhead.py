"""Step-time overhead of GradNormMonitor (and of all four health callbacks) against Lightning's recipe.

The model is a 6-layer transformer encoder (d_model 128, 4 heads, feed-forward 256; with the
embedding and the head, 75 parameter tensors) on batches of 16 x 32 tokens, trained on the CPU with
one thread by a real Trainer with a CSVLogger and ``log_every_n_steps=1``. Each configuration is a
fresh fit of the same seeded model; configurations alternate within each round (the order rotates
every round) and the per-step time of a fit is the median over its steps after a warm-up. The table
reports, per configuration, the median step time over rounds and the median over rounds of the
ratio to the baseline fit of the same round (the number to quote: these machines are noisy).

Configurations:
* ``baseline``: no callback.
* ``lightning_recipe``: Lightning's documented recipe, ``self.log_dict(grad_norm(self, norm_type=2))``
  in ``on_before_optimizer_step`` (75 per-parameter norms and the total, every step).
* ``monitor_default``: ``GradNormMonitor()`` (total every logging step, groups every 10th).
* ``monitor_per_param``: ``GradNormMonitor(per_param=True, groups=None, detail_every_n_steps=1)``:
  the same 75 per-parameter norms and the total as the recipe, every step.
* ``all_four``: GradNormMonitor, NonFiniteGuard, AutoClip and TrainingDoctor, all with defaults.

Targets (issue 3): monitor_default <= 2%, monitor_per_param <= 15%, all_four <= 5% over baseline.

With ``--sync-check`` on a CUDA machine it first runs every configuration but the recipe with
``torch.cuda.set_sync_debug_mode("error")`` from the start to the end of every step that does not log
(``log_every_n_steps=10``; the batch is already on the device), so any host-device synchronization on
those steps raises. The optimizer is AdamW with ``fused=True`` there, as OptimMixin picks on CUDA.

Run:  python benchmarks/grad_norm_overhead.py [--rounds 7] [--steps 60] [--device cuda --sync-check]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import grad_norm
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_optkit.callbacks import AutoClip, GradNormMonitor, NonFiniteGuard, TrainingDoctor

VOCAB, SEQ, BATCH, D_MODEL, HEADS, FF, LAYERS = 1000, 32, 16, 128, 4, 256, 6
WARMUP_STEPS = 5


class Tokens(Dataset):
    """Random token sequences with a next-token-like target (the content does not matter for timing)."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, VOCAB, (n, SEQ), generator=g)
        self.y = torch.roll(self.x, -1, dims=1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class Encoder(L.LightningModule):
    def __init__(self, fused: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, FF, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.head = nn.Linear(D_MODEL, VOCAB)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x).flatten(0, 1), y.flatten())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-4, fused=self.fused or None)


class LightningRecipe(Encoder):
    """Lightning's documented way to log gradient norms."""

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.log_dict(grad_norm(self, norm_type=2))


class StepTimer(Callback):
    """Time from one batch start to the next: wall clock and this thread's CPU time."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.wall.append(time.perf_counter())
        self.cpu.append(time.thread_time())

    def step_time(self) -> tuple[float, float]:
        def med(ts: list[float]) -> float:
            return statistics.median([b - a for a, b in zip(ts, ts[1:])][WARMUP_STEPS:])
        return med(self.cpu), med(self.wall)


class HookClock:
    """CPU time spent inside the hooks of the given callbacks (wraps their ``on_*`` methods)."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.total = 0.0
        for cb in callbacks:
            for name in dir(type(cb)):
                if name.startswith("on_") and name in type(cb).__dict__:
                    setattr(cb, name, self._wrap(getattr(cb, name)))

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += time.thread_time() - start
        return timed


class SyncCheck(Callback):
    """Make any host-device sync raise on steps that do not log (CUDA only)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.checked = 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if (trainer.global_step + 1) % self.every != 0 and trainer.global_step > 2:
            torch.cuda.set_sync_debug_mode("error")
            self.checked += 1

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        torch.cuda.set_sync_debug_mode(0)


CONFIGS: dict[str, tuple[type[Encoder], Callable[[], list[Callback]]]] = {
    "baseline": (Encoder, lambda: []),
    "lightning_recipe": (LightningRecipe, lambda: []),
    "monitor_default": (Encoder, lambda: [GradNormMonitor()]),
    "monitor_per_param": (Encoder, lambda: [GradNormMonitor(per_param=True, groups=None, detail_every_n_steps=1)]),
    "all_four": (Encoder, lambda: [GradNormMonitor(), NonFiniteGuard(), AutoClip(), TrainingDoctor()]),
}
TARGETS = {"monitor_default": 1.02, "monitor_per_param": 1.15, "all_four": 1.05}


def fit_once(name: str, steps: int, device: str, root: str, log_every: int = 1,
             sync_check: bool = False) -> tuple[float, float, float]:
    cls, make_callbacks = CONFIGS[name]
    torch.manual_seed(0)
    model = cls(fused=device == "cuda")
    timer = StepTimer()
    ours = make_callbacks()
    clock = HookClock(ours)
    callbacks = [*ours, timer]
    if sync_check:
        callbacks.append(SyncCheck(log_every))
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_steps=steps,
        logger=CSVLogger(root, name=name), log_every_n_steps=log_every, callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    loader = DataLoader(Tokens(BATCH * steps), batch_size=BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader)
    cpu, wall = timer.step_time()
    return cpu, wall, clock.total / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sync-check", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated configurations (baseline is always run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    n_params = len(list(Encoder().parameters()))
    names = ["baseline"] + [n for n in CONFIGS if n != "baseline" and (not args.only or n in args.only.split(","))]

    if args.sync_check:
        if args.device != "cuda" or not torch.cuda.is_available():
            print("--sync-check needs --device cuda on a machine with a GPU")
            return 2
        for name in names:
            if name == "lightning_recipe":
                continue  # it syncs once per parameter on every step by design
            with tempfile.TemporaryDirectory() as root:
                fit_once(name, 40, "cuda", root, log_every=10, sync_check=True)
            print(f"sync check: {name}: no host-device sync on non-logging steps")

    # per configuration: (cpu, wall) step times per round, and the ratios to that round's baseline
    times: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as root:
        fit_once("baseline", 10, args.device, root)  # warm caches and lazy imports
        for r in range(args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            got = {n: fit_once(n, args.steps, args.device, root) for n in order}
            for n in names:
                times[n].append(got[n])
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{n} {got[n][0] * 1e3:.1f}/{got[n][1] * 1e3:.1f} ms" for n in names), file=sys.stderr)

    def ratio(n: str, k: int) -> float:
        return statistics.median(t[k] / b[k] for t, b in zip(times[n], times["baseline"]))

    print(f"\n{LAYERS}-layer transformer encoder, {n_params} parameter tensors, batch {BATCH}x{SEQ} tokens, "
          f"{args.device}, {torch.get_num_threads()} thread(s), CSVLogger, log_every_n_steps=1, "
          f"{args.rounds} rounds x {args.steps} steps")
    print("step time = median over a fit's steps; ratio = median over rounds of (config / baseline of the round);")
    print("cpu = this thread's CPU time (robust to other processes on a shared machine), wall = wall clock;")
    print("in-hook = CPU time inside the health callbacks' own hooks per step, as a share of the baseline step")
    print(f"{'configuration':20s} {'cpu ms':>8s} {'ratio':>7s} {'wall ms':>8s} {'ratio':>7s} {'in-hook':>8s}"
          "  target (on cpu ratio)")
    base_cpu = statistics.median(t[0] for t in times["baseline"])
    failed = 0
    for n in names:
        cpu_r, wall_r = ratio(n, 0), ratio(n, 1)
        target = TARGETS.get(n)
        mark = ""
        if target is not None:
            ok = cpu_r <= target
            failed += not ok
            mark = f"<= {target:.2f} " + ("ok" if ok else "MISSED")
        cpu_ms = statistics.median(t[0] for t in times[n]) * 1e3
        wall_ms = statistics.median(t[1] for t in times[n]) * 1e3
        hook = statistics.median(t[2] for t in times[n]) / base_cpu
        hook_s = f"{100 * hook:7.2f}%" if hook else "       -"
        print(f"{n:20s} {cpu_ms:8.2f} {cpu_r:7.3f} {wall_ms:8.2f} {wall_r:7.3f} {hook_s}  {mark}")
    if "lightning_recipe" in names and "monitor_per_param" in names:
        recipe, ours = ratio("lightning_recipe", 0), ratio("monitor_per_param", 0)
        print(f"\nper-parameter norms every step: ours {100 * (ours - 1):+.1f}%, Lightning's recipe "
              f"{100 * (recipe - 1):+.1f}% (cpu time ratios; the in-hook column is the less noisy measure)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
