"""Train and checkpoint at every optimizer step until killed (the crash test SIGKILLs this process).

Usage:
    python train_forever.py OUTDIR {sync,async}   one training process
    python train_forever.py --fork-server         reads ``RUN OUTDIR MODE`` lines on stdin; for each it
                                                  forks a training process and prints its pid

The fork server imports torch and Lightning once, so each crash run costs a fork instead of a
4-second interpreter start; every run is still its own process, killed with SIGKILL.

The model (about 1M parameters with Adam state, so about 12 MB per checkpoint) makes each write
take long enough for a kill to land inside it. The test imports :class:`Net` and :func:`loader` from
this file to resume the checkpoints it leaves behind.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import OptimMixin
from lightning_optkit.callbacks import Checkpoint

OPTIM = {"optimizer": {"name": "adam", "lr": 1e-3}}


class Net(OptimMixin, L.LightningModule):
    def __init__(self, optim: dict | None = None) -> None:
        super().__init__()
        optim = optim or OPTIM
        self.save_hyperparameters()
        self.body = nn.Linear(1000, 1000)
        self.head = nn.Linear(1000, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.head(torch.tanh(self.body(x))), y)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1000, generator=g)
    return DataLoader(TensorDataset(x, x[:, :1]), batch_size=16)


def trainer(callbacks: list, **kw) -> L.Trainer:
    args = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                limit_val_batches=0, max_epochs=100_000)
    args.update(kw)
    return L.Trainer(callbacks=callbacks, **args)


def main(out: Path, mode: str) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    ckpt = Checkpoint(dirpath=out, every_n_train_steps=1, save_top_k=2, async_save=mode == "async")
    trainer([ckpt]).fit(Net(), loader())


def fork_server() -> None:
    import os
    import signal
    import threading

    assert threading.active_count() == 1, "fork needs a single-threaded server"
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed children are reaped automatically
    print("READY", flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] != "RUN":
            break
        pid = os.fork()
        if pid == 0:  # the training process
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = 0
            try:
                sys.stdin.close()
                main(Path(parts[1]), parts[2])
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        print(pid, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--fork-server":
        fork_server()
    else:
        main(Path(sys.argv[1]), sys.argv[2])
