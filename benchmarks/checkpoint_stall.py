"""How long the training loop stalls for a checkpoint: synchronous vs asynchronous saving, and fsync's cost.

A LightningModule with a single 8192 x 6400 linear layer (52.4 M float32 parameters, 210 MB; plain
SGD, so the checkpoint is the weights) trains on CPU with ``Checkpoint(every_n_train_steps=N)``.
The stall of a save is the time the training loop spends inside it (``Checkpoint.stats[i].blocked_s``):
for a synchronous save, serializing, hashing, writing and fsyncing; for an asynchronous one, the
copy of the checkpoint into host buffers that are reused from one save to the next (the first
asynchronous save also allocates them, so it is reported apart). Saves are spaced so that each
background write ends before the next save. Runs alternate (sync, async, sync without fsync) and
the table shows medians over all steady-state saves, plus the ratio async/sync measured in this
run. The fsync cost is the median fsync time inside synchronous saves and the difference between
synchronous saves with and without fsync. The step-time column shows what the background writer
costs the steps that run while it writes (it shares the CPU and the memory bandwidth).

Run: ``python benchmarks/checkpoint_stall.py [--repeats 2] [--dir /path/on/the/disk/to/test]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit.callbacks import Checkpoint

IN, OUT = 8192, 6400
SAVE_EVERY = 10
STEPS = 4 * SAVE_EVERY


class Big(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(IN, OUT)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x,) = batch
        return self.layer(x).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-6)


class StepTimer(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._t = time.perf_counter()

    def on_before_optimizer_step(self, *args: Any) -> None:  # forward + backward, before any save
        self.times.append(time.perf_counter() - self._t)


def run(mode: str, folder: Path) -> dict[str, Any]:
    ckpt = Checkpoint(dirpath=folder, every_n_train_steps=SAVE_EVERY, every_n_epochs=0, save_top_k=1,
                      save_last=False, async_save=mode == "async", fsync=mode != "sync, no fsync")
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[timer, ckpt])
    data = DataLoader(TensorDataset(torch.randn(STEPS, IN)), batch_size=1)
    torch.manual_seed(0)
    trainer.fit(Big(), data)
    ckpt.wait()
    stats = ckpt.stats
    size = stats[0].bytes
    # steps right after an async save run while the writer works
    after_save = [timer.times[i] for i in range(len(timer.times)) if i % SAVE_EVERY in (0, 1, 2) and i >= SAVE_EVERY]
    quiet = [timer.times[i] for i in range(len(timer.times)) if i % SAVE_EVERY in (5, 6, 7, 8)]
    shutil.rmtree(folder, ignore_errors=True)
    return {"blocked": [s.blocked_s for s in stats], "write": [s.write_s for s in stats],
            "fsync": [s.fsync_s for s in stats], "bytes": size, "after_save": after_save, "quiet": quiet}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="folder on the disk to test (default: a temp dir)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="optkit-ckpt-bench-"))
    modes = ["sync", "async", "sync, no fsync"]
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    try:
        for r in range(args.repeats):
            for mode in modes:
                results[mode].append(run(mode, root / f"{mode.replace(', ', '-').replace(' ', '')}-{r}"))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def pooled(mode: str, key: str, skip_first: bool = False) -> list[float]:
        return [v for res in results[mode] for i, v in enumerate(res[key]) if not (skip_first and i == 0)]

    size_mb = results["sync"][0]["bytes"] / 1e6
    med = statistics.median
    sync_block = med(pooled("sync", "blocked"))
    async_block = med(pooled("async", "blocked", skip_first=True))
    async_first = med([res["blocked"][0] for res in results["async"]])
    nofsync_block = med(pooled("sync, no fsync", "blocked"))
    fsync_inside = med(pooled("sync", "fsync"))
    async_write = med(pooled("async", "write"))
    quiet = med(pooled("sync", "quiet") + pooled("async", "quiet"))
    after_async = med(pooled("async", "after_save"))

    print(f"checkpoint: {size_mb:.0f} MB (52.4 M float32 parameters), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.repeats} runs x {STEPS // SAVE_EVERY} saves per mode")
    print(f"{'':34s}{'median (ms)':>12s}")
    print(f"{'sync save: loop stalled':34s}{sync_block * 1e3:12.1f}")
    print(f"{'  of which fsync (file + folder)':34s}{fsync_inside * 1e3:12.1f}")
    print(f"{'sync save without fsync: stalled':34s}{nofsync_block * 1e3:12.1f}")
    print(f"{'async save: loop stalled':34s}{async_block * 1e3:12.1f}")
    print(f"{'async, first save (allocates)':34s}{async_first * 1e3:12.1f}")
    print(f"{'async: background write':34s}{async_write * 1e3:12.1f}")
    print(f"{'step time, no write running':34s}{quiet * 1e3:12.1f}")
    print(f"{'step time, async write running':34s}{after_async * 1e3:12.1f}")
    print()
    print(f"stall ratio async/sync: {async_block / sync_block:.3f} (target <= 0.10)")
    print(f"fsync cost: {fsync_inside * 1e3:.1f} ms per save inside sync saves "
          f"({fsync_inside / sync_block:.0%} of the stall); sync stall with/without fsync: "
          f"{sync_block / nofsync_block:.2f}x")


if __name__ == "__main__":
    main()
