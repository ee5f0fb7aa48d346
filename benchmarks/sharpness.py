"""Sharpness probes against the exact Hessian: error and cost in Hessian-vector products and seconds.

Models small enough for an exact Hessian (``torch.autograd.functional.hessian`` + ``eigvalsh``), each
on a fixed set of 2 batches of 128 samples, cross-entropy loss, float64:

* ``mlp-227``: 10 -> 16 (tanh) -> 3 on a synthetic 3-class problem;
* ``digits-610``: sklearn digits, 64 -> 8 (tanh) -> 10;
* ``cnn-1490``: digits as 8x8 images, conv 3x3 (4 channels, ReLU) -> linear 144 -> 10.

Each model is first trained a little (SGD, 100 full-batch steps) so the point probed is not the
initialization. Reported: relative error of the top eigenvalue (Lanczos, tol 1e-3; power iteration,
tol 1e-4), of the top 3 (Lanczos), and of Hutchinson's trace (100 and 1000 Rademacher samples, with
the estimated standard error), each with its HVP count and seconds; the exact Hessian's seconds and
the ratio exact / Lanczos from the same run.

A last section times a short digits fit with and without :class:`SharpnessMonitor` (overhead ratio
measured in the same run).

Run: ``python benchmarks/sharpness.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import time

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.func import functional_call

from lightning_optkit.diagnostics import hessian_eigenvalues, hessian_trace


def _batches(x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[:128], y[:128]), (x[128:256], y[128:256])]


class _Cnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x.view(-1, 1, 8, 8)).relu().flatten(1))


def problems() -> dict[str, tuple[nn.Module, list]]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 10, generator=g) * 1.5
    ys = torch.randint(0, 3, (256,), generator=g)
    xs = centers[ys] + torch.randn(256, 10, generator=g)
    xd, yd = load_digits(return_X_y=True)
    xd = torch.tensor(xd / 16.0, dtype=torch.float64)[:256]
    yd = torch.tensor(yd)[:256]
    return {
        "mlp-227": (nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3)).double(), _batches(xs.double(), ys)),
        "digits-610": (nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10)).double(), _batches(xd, yd)),
        "cnn-1490": (_Cnn().double(), _batches(xd, yd)),
    }


def _train(net: nn.Module, batches: list, steps: int = 100) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        sum(nn.functional.cross_entropy(net(x), y) / len(batches) for x, y in batches).backward()
        opt.step()


def exact_spectrum(net: nn.Module, batches: list) -> tuple[torch.Tensor, float]:
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    n = sum(len(b[0]) for b in batches)

    def loss(flat: torch.Tensor) -> torch.Tensor:
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            size = torch.Size(shape).numel()
            params[name] = flat[start:start + size].view(shape)
            start += size
        return sum(nn.functional.cross_entropy(functional_call(net, params, (x,)), y) * len(x) / n for x, y in batches)

    t0 = time.perf_counter()
    evals = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat0))
    return evals, time.perf_counter() - t0


def main() -> None:
    torch.set_num_threads(1)
    ce = nn.CrossEntropyLoss()
    print(f"{'model':<12}{'probe':<26}{'rel. error':>12}{'HVPs':>7}{'seconds':>9}{'exact s':>9}{'exact/probe':>12}")
    for name, (net, batches) in problems().items():
        _train(net, batches)
        evals, exact_s = exact_spectrum(net, batches)
        top, top3, trace = evals[-1].item(), evals.flip(0)[:3], evals.sum().item()
        rows = []
        res = hessian_eigenvalues(net, batches, ce, k=1, iters=200, tol=1e-3)
        rows.append(("lambda_max lanczos", abs(res.eigenvalues[0] - top) / top, res.hvps, res.seconds))
        res = hessian_eigenvalues(net, batches, ce, k=1, iters=500, method="power", tol=1e-4)
        rows.append(("lambda_max power", abs(res.eigenvalues[0] - top) / top, res.hvps, res.seconds))
        res = hessian_eigenvalues(net, batches, ce, k=3, iters=200, tol=1e-3)
        err3 = ((torch.tensor(res.eigenvalues, dtype=torch.float64) - top3).abs() / top3.abs()).max().item()
        rows.append(("top-3 lanczos (max err)", err3, res.hvps, res.seconds))
        for samples in (100, 1000):
            tr = hessian_trace(net, batches, ce, samples=samples, seed=1)
            label = f"trace hutch {samples} (se {tr.stderr / abs(trace):.1%})"
            rows.append((label, abs(tr.trace - trace) / abs(trace), tr.hvps, tr.seconds))
        for label, err, hvps, secs in rows:
            print(f"{name:<12}{label:<26}{err:>12.2e}{hvps:>7}{secs:>9.3f}{exact_s:>9.2f}{exact_s / secs:>12.1f}")
        print(f"{'':<12}lambda_max = {top:.4g}, trace = {trace:.4g}, {evals.numel()} parameters")


def monitor_overhead(epochs: int = 20) -> None:
    """Wall time of a digits fit with and without SharpnessMonitor (one check per epoch + one at start)."""
    import logging

    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_optkit.diagnostics import SharpnessMonitor

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    xd, yd = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(xd / 16.0, dtype=torch.float32), torch.tensor(yd))

    class Net(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
            self.loss_fn = nn.CrossEntropyLoss()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            return self.loss_fn(self(batch[0]), batch[1])

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def fit(callbacks: list) -> float:
        torch.manual_seed(0)
        loader = DataLoader(data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
        trainer = L.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
        t0 = time.perf_counter()
        trainer.fit(Net(), loader)
        return time.perf_counter() - t0

    fit([])  # warm-up
    plain = fit([])
    steps = -(-len(data) // 64)
    print(f"\nSharpnessMonitor on digits (MLP 64-64-10, SGD lr 0.1 momentum 0.9, {epochs} epochs of {steps} steps; "
          "each check: 2 fixed batches x <= 20 HVPs):")
    print(f"{'every_n_epochs':>15}{'checks':>7}{'HVPs':>7}{'check s':>9}{'fit s':>8}{'fit+monitor s':>15}{'overhead':>10}")
    for every in (1, 5):
        monitor = SharpnessMonitor(every_n_epochs=every, num_batches=2, iters=20)
        watched = fit([monitor])
        hvps = sum(h["hvps"] for h in monitor.history)
        secs = sum(h["seconds"] for h in monitor.history)
        print(f"{every:>15}{len(monitor.history):>7}{hvps:>7}{secs:>9.2f}{plain:>8.2f}{watched:>15.2f}"
              f"{watched / plain - 1:>10.0%}")
    last = monitor.history[-1]
    print(f"last check: lambda_max = {last['lambda_max']:.4g}, edge (2 + 2 beta) / lr = {last['edge']:.4g}, "
          f"ratio {last['ratio']:.3f}")


if __name__ == "__main__":
    main()
    monitor_overhead()
