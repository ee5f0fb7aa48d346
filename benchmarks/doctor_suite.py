"""TrainingDoctor on deliberately broken runs (one per diagnosis) and on healthy runs of several kinds.

Every broken run must get its own diagnosis code; every healthy run must get none. Each run is a
real Lightning fit of a tiny model on synthetic data (CPU, seconds). The table lists, per run, the
expected code, the codes found and whether the run passed; the exit status is non-zero if any failed.

Run:  python benchmarks/doctor_suite.py            (all runs)
      python benchmarks/doctor_suite.py --short    (the subset the tests run)
      python benchmarks/doctor_suite.py --only overfitting,healthy_regression
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import OptimMixin
from lightning_optkit.callbacks import TrainingDoctor

# -- data -------------------------------------------------------------------------------------------


def blobs(n: int = 512, dim: int = 16, classes: int = 4, seed: int = 0, noise: float = 1.0,
          random_labels: bool = False) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 2.0
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + noise * torch.randn(n, dim, generator=g)
    if random_labels:
        y = torch.randint(0, classes, (n,), generator=g)
    return TensorDataset(x, y)


def waves(n: int = 512, dim: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, 2, generator=torch.Generator().manual_seed(7)) / math.sqrt(dim)
    h = torch.tanh(x @ w)
    y = (h[:, :1] - 0.5 * h[:, 1:]) * 2 + 0.05 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def least_squares(n: int = 512, seed: int = 0) -> TensorDataset:
    """A linear problem with one unnormalized feature (scale 3): its curvature sets the stable LR."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    x[:, 0] *= 3.0
    w = torch.randn(8, 1, generator=torch.Generator().manual_seed(5))
    return TensorDataset(x, x @ w)


SEED = [0]  # model initialization and data order; --seeds repeats the suite with others


def loader(ds: TensorDataset, batch_size: int = 32, shuffle: bool = True) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(SEED[0]))


# -- models -----------------------------------------------------------------------------------------


class Model(L.LightningModule):
    """A task head around any ``net``; optimizer and scheduler built by ``make_opt``."""

    def __init__(self, net: nn.Module, task: str, make_opt: Callable[[Any], Any]) -> None:
        super().__init__()
        self.net = net
        self.task = task
        self.make_opt = make_opt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        out = self(x)
        if self.task == "cls":
            return nn.functional.cross_entropy(out, y)
        return nn.functional.mse_loss(out, y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.loss(batch)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch))

    def configure_optimizers(self) -> Any:
        return self.make_opt(self)


class MixinModel(OptimMixin, Model):
    """The same, with ``configure_optimizers`` from an ``optim:`` block (warm-up schedules)."""

    def __init__(self, net: nn.Module, task: str, optim: dict) -> None:
        super().__init__(net, task, make_opt=lambda m: None)
        self.optim_config = optim

    def configure_optimizers(self) -> Any:
        return OptimMixin.configure_optimizers(self)


def mlp(sizes: list[int], act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def scaled_init(net: nn.Module, gain: float) -> nn.Module:
    """Weights ~ N(0, gain^2 / fan_in), zero biases: gain 1 is LeCun init."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * gain / math.sqrt(m.in_features))
                m.bias.zero_()
    return net


class WithUnused(nn.Module):
    """A classic bug: a layer built in __init__ and forgotten in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.body = mlp([16, 64, 64])
        self.extra = nn.Linear(64, 64)  # never called
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


def adam(lr: float) -> Callable[[Any], Any]:
    return lambda m: torch.optim.Adam(m.parameters(), lr=lr)


def sgd(lr: float, momentum: float = 0.0) -> Callable[[Any], Any]:
    return lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum)


def with_sched(opt_fn: Callable[[Any], Any], make: Callable[[Any, Any], Any], interval: str = "step",
               monitor: str | None = None) -> Callable[[Any], Any]:
    def build(m: Any) -> Any:
        opt = opt_fn(m)
        cfg = {"scheduler": make(opt, m), "interval": interval}
        if monitor:
            cfg["monitor"] = monitor
        return {"optimizer": opt, "lr_scheduler": cfg}
    return build


# -- the runs ---------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    expected: str | None  # the diagnosis code; None for a healthy run
    build: Callable[[], tuple[L.LightningModule, DataLoader, DataLoader | None, dict[str, Any]]]
    what: str


def _cls(make_opt: Callable[[Any], Any], net: nn.Module | None = None, epochs: int = 8, val: bool = True,
         batch_size: int = 32, **trainer: Any) -> tuple[Any, ...]:
    torch.manual_seed(SEED[0])
    model = Model(net if net is not None else mlp([16, 64, 64, 4]), "cls", make_opt)
    return model, loader(blobs(), batch_size), loader(blobs(256, seed=1), 64, False) if val else None, \
        {"max_epochs": epochs, **trainer}


def _reg(make_opt: Callable[[Any], Any], net: nn.Module | None = None, epochs: int = 8, val: bool = True,
         batch_size: int = 32, **trainer: Any) -> tuple[Any, ...]:
    torch.manual_seed(SEED[0])
    model = Model(net if net is not None else mlp([8, 64, 64, 1], nn.Tanh), "reg", make_opt)
    return model, loader(waves(), batch_size), loader(waves(256, seed=1), 64, False) if val else None, \
        {"max_epochs": epochs, **trainer}


def _diverging() -> tuple[Any, ...]:
    torch.manual_seed(SEED[0])
    model = Model(nn.Linear(8, 1), "reg", sgd(0.128))  # 2 / lambda_max = 0.124 on this data
    return model, loader(least_squares(), 128), None, {"max_epochs": 40}


def _above_edge() -> tuple[Any, ...]:
    from lightning_optkit.diagnostics import SharpnessMonitor

    torch.manual_seed(SEED[0])
    model = Model(nn.Linear(8, 1), "reg", sgd(0.2))  # 2 / lambda_max = 0.124 on this data
    monitor = SharpnessMonitor(every_n_epochs=2, num_batches=2, iters=20, loss_fn=nn.MSELoss())
    return model, loader(least_squares(), 128), None, {"max_epochs": 4, "callbacks": [monitor]}


def _too_small() -> tuple[Any, ...]:
    torch.manual_seed(SEED[0])
    model = Model(mlp([16, 1, 4]), "cls", adam(1e-2))  # one hidden unit for 4 classes in 16 dimensions
    # no accuracy is logged, so the verdict is on loss scores: it acts only with a loss threshold of its own
    doctor = {"thresholds": {"capacity_loss_low": 0.7}}
    return (model, loader(blobs(noise=2.0)), loader(blobs(256, noise=2.0, seed=1), 64, False),
            {"max_epochs": 30, "doctor": doctor})


def _oscillating() -> tuple[Any, ...]:
    torch.manual_seed(SEED[0])
    model = Model(mlp([16, 64, 64, 4]), "cls", adam(0.05))
    return model, loader(blobs(noise=2.5), 4), None, {"max_epochs": 1}


def _overfit() -> tuple[Any, ...]:
    torch.manual_seed(SEED[0])
    model = Model(mlp([16, 256, 256, 4]), "cls", adam(3e-3))
    train = blobs(48, noise=3.0, random_labels=True, seed=3)
    return model, loader(train, 16), loader(blobs(256, noise=3.0, seed=4), 64, False), {"max_epochs": 40}


def _frozen() -> tuple[Any, ...]:
    torch.manual_seed(SEED[0])
    net = nn.Sequential(mlp([16, 64, 64]), nn.ReLU(), nn.Linear(64, 4))
    for p in net[0].parameters():
        p.requires_grad_(False)
    model = Model(net, "cls", lambda m: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3))
    return model, loader(blobs()), loader(blobs(256, seed=1), 64, False), {"max_epochs": 8}


def _warmup_healthy() -> tuple[Any, ...]:
    torch.manual_seed(SEED[0])
    optim = {"optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
             "scheduler": {"name": "warmup_cosine", "warmup": "10%"}}
    model = MixinModel(mlp([16, 64, 64, 4]), "cls", optim)
    return model, loader(blobs()), loader(blobs(256, seed=1), 64, False), {"max_epochs": 8}


def _steps(epochs: int = 8, batches: int = 16) -> int:
    return epochs * batches


CASES: list[Case] = [
    Case("nonfinite_loss", "NONFINITE_LOSS",
         lambda: _reg(sgd(2.0, 0.9), epochs=4), "regression, SGD lr=2 with momentum: the loss overflows"),
    Case("not_decreasing", "LOSS_NOT_DECREASING",
         lambda: _cls(sgd(1e-5)), "classification, SGD lr=1e-5: far too low"),
    Case("diverging", "LOSS_DIVERGING", _diverging,
         "least squares with an unnormalized feature, SGD lr just above 2/curvature: falls, then rises"),
    Case("oscillating", "LOSS_OSCILLATING", _oscillating, "noisy classification, Adam lr=0.05 on batches of 4"),
    Case("overfitting", "OVERFITTING", _overfit, "48 noisy samples, a wide MLP, 40 epochs"),
    Case("exploding", "EXPLODING_GRADIENTS",
         lambda: _cls(adam(1e-3), net=scaled_init(mlp([16] + [64] * 16 + [4], nn.Tanh), 4.0), epochs=2, val=False),
         "17-layer tanh MLP initialized with gain 4 (the chaotic regime)"),
    Case("vanishing", "VANISHING_GRADIENTS",
         lambda: _cls(adam(1e-3), net=mlp([16] + [64] * 12 + [4], nn.Sigmoid), epochs=2, val=False),
         "13-layer sigmoid MLP"),
    Case("zero_gradients", "ZERO_GRADIENTS",
         lambda: _cls(adam(1e-3), net=WithUnused(), epochs=2, val=False), "a layer defined but never called"),
    Case("lr_never_decays", "LR_NEVER_DECAYS",
         lambda: _cls(with_sched(adam(1e-3), lambda o, m: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10_000))),
         "CosineAnnealingLR(T_max=10000) on a 128-step run"),
    Case("warmup_too_long", "WARMUP_TOO_LONG",
         lambda: _cls(with_sched(adam(1e-3), lambda o, m: torch.optim.lr_scheduler.SequentialLR(
             o, [torch.optim.lr_scheduler.LinearLR(o, 0.01, 1.0, total_iters=96),
                 torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=32)], milestones=[96]))),
         "LinearLR warm-up over 96 of 128 steps"),
    Case("interval_mismatch", "SCHEDULE_INTERVAL_MISMATCH",
         lambda: _cls(with_sched(adam(1e-3), lambda o, m: torch.optim.lr_scheduler.OneCycleLR(
             o, max_lr=3e-3, total_steps=_steps()), interval="epoch")),
         "OneCycleLR(total_steps=128) stepped per epoch"),
    Case("plateau_never_fires", "PLATEAU_NEVER_FIRES",
         lambda: _cls(with_sched(adam(1e-3), lambda o, m: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=10),
                                 interval="epoch", monitor="val_loss")),
         "ReduceLROnPlateau(patience=10) over 8 epochs"),
    Case("underfitting", "UNDERFITTING", _too_small, "one hidden unit for 4 classes, 30 epochs: poor and flat"),
    Case("above_edge", "ABOVE_STABILITY_EDGE", _above_edge,
         "least squares, SGD lr=0.2 > 2/lambda_max=0.124, with a SharpnessMonitor"),
    Case("healthy_classification", None, lambda: _cls(adam(1e-3)), "MLP classifier, Adam 1e-3"),
    Case("healthy_regression", None, lambda: _reg(adam(3e-3)), "MLP regression, Adam 3e-3"),
    Case("healthy_warmup", None, _warmup_healthy, "OptimMixin: AdamW + warmup_cosine (10% warm-up)"),
    Case("healthy_finetune", None, _frozen, "frozen backbone, trained head"),
]

SHORT = ["nonfinite_loss", "overfitting", "vanishing", "zero_gradients", "interval_mismatch", "healthy_classification",
         "healthy_finetune"]


def run_case(case: Case, root: str, check_every_n_steps: int = 50) -> tuple[list[str], TrainingDoctor]:
    """Fit one case with a TrainingDoctor and return the codes it found."""
    model, train, val, trainer_kwargs = case.build()
    doctor = TrainingDoctor(check_every_n_steps=check_every_n_steps, max_warnings=0, **trainer_kwargs.pop("doctor", {}))
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=root,
        callbacks=[doctor, *trainer_kwargs.pop("callbacks", [])], **trainer_kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train, val)
    return doctor.codes, doctor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="only the subset the tests run")
    parser.add_argument("--only", default="", help="comma-separated case names")
    parser.add_argument("--verbose", action="store_true", help="print each diagnosis")
    parser.add_argument("--seeds", type=int, default=1, help="repeat with this many seeds (init and data order)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    names = [n for n in args.only.split(",") if n] or (SHORT if args.short else [c.name for c in CASES])
    cases = [c for c in CASES if c.name in names]
    rows, failed, total = [], 0, 0
    start = time.perf_counter()
    for case in cases:
        found, oks, took = [], [], 0.0
        for seed in range(args.seeds):
            SEED[0] = seed
            with tempfile.TemporaryDirectory() as root:
                t0 = time.perf_counter()
                codes, doctor = run_case(case, root)
                took += time.perf_counter() - t0
            ok = codes == [] if case.expected is None else case.expected in codes
            oks.append(ok)
            found.append(",".join(codes) or "(none)")
            if args.verbose:
                for d in doctor.diagnoses:
                    print(f"  {case.name} (seed {seed}): {d.line()}")
        failed += oks.count(False)
        total += len(oks)
        shown = found[0] if len(set(found)) == 1 else " | ".join(found)
        rows.append((case.name, case.expected or "(none)", shown, f"{oks.count(True)}/{len(oks)} ok",
                     f"{took:.1f}s"))
    header = ("run", "expected", "found", "", "time")
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(5)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    broken = sum(c.expected is not None for c in cases)
    print(f"\n{total - failed}/{total} runs as expected ({broken} broken and {len(cases) - broken} healthy "
          f"configurations x {args.seeds} seed(s)) in {time.perf_counter() - start:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
