"""Cost on a healthy step of NonFiniteGuard keeping the module buffers of the step (issue 13).

Before each optimizer step the guard copies every module buffer (BatchNorm running statistics and
``num_batches_tracked``) into preallocated flat tensors; after a flagged step it puts them back.
On a healthy step the cost is the copy, plus, where the flag is not read on the host (fused
optimizers, AMP), a device-side ``torch.where`` restore. This measures both against the training
step of a small CNN with BatchNorm after every convolution (16 BN layers, 48 buffers), on the CPU
with one thread, in the same run: the ratio is the number to quote (these machines are noisy).

Run:  python benchmarks/guard_buffers.py [--rounds 7] [--steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from lightning_optkit.callbacks._nonfinite import _BufferGuard


def _net(blocks: int = 16, width: int = 32) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    for _ in range(blocks - 1):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def _time(fn, steps: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    guard = _BufferGuard(net)
    flag = torch.zeros((), dtype=torch.bool)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    def save() -> None:
        guard.stepped()
        guard.save()

    def save_and_where() -> None:
        save()
        guard.restore_where(flag)

    rows: dict[str, list[float]] = {"train step": [], "save": [], "save + restore_where": []}
    for _ in range(args.rounds):
        rows["train step"].append(_time(step, args.steps))
        rows["save"].append(_time(save, args.steps * 10))
        rows["save + restore_where"].append(_time(save_and_where, args.steps * 10))
    n_buf = sum(1 for _ in net.buffers())
    base = statistics.median(rows["train step"])
    print(f"{n_buf} buffers, {sum(b.numel() for b in net.buffers())} values; median of {args.rounds} rounds")
    print(f"{'what':<24}{'ms/step':>10}{'% of step':>12}")
    for name, values in rows.items():
        med = statistics.median(values)
        print(f"{name:<24}{med * 1e3:>10.3f}{100 * med / base:>11.2f}%")


if __name__ == "__main__":
    main()
