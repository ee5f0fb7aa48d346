"""2-process CPU DDP run of the health callbacks; only rank 1 sees NaNs. Writes rank<r>.json into argv[1].

Scenario ``agree`` (default): GradNormMonitor, NonFiniteGuard(reduce_lr, max_consecutive=3), AutoClip and
TrainingDoctor. Rank 1's batch gets a NaN at step 3 (one event: both ranks must reduce the LR) and at steps
8, 9 and 10 (three in a row: both ranks must stop after step 10). Scenario ``raise``: NonFiniteGuard("raise"),
NaN on rank 1 at step 3: both ranks must raise, and the job must end.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit.callbacks import AutoClip, GradNormMonitor, NonFiniteError, NonFiniteGuard, TrainingDoctor


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.head(torch.tanh(self.blocks(x))), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class NanOnRank1(Callback):
    def __init__(self, *steps: int) -> None:
        self.steps = set(steps)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_rank == 1 and trainer.global_step in self.steps:
            batch[0][0, 0] = float("nan")


def main() -> None:
    out = Path(sys.argv[1])
    scenario = sys.argv[2] if len(sys.argv) > 2 else "agree"
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 4, generator=g)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True).tanh()), batch_size=8)
    if scenario == "raise":
        guard = NonFiniteGuard("raise")
        callbacks: list[Callback] = [guard, NanOnRank1(3)]
    else:
        guard = NonFiniteGuard("reduce_lr", max_consecutive=3, cooldown=100)
        monitor = GradNormMonitor(log_every_n_steps=1, detail_every_n_steps=2)
        clip = AutoClip()
        doctor = TrainingDoctor(check_every_n_steps=5)
        callbacks = [monitor, guard, clip, doctor, NanOnRank1(3, 8, 9, 10)]
    model = Net()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=20, callbacks=callbacks,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(out), use_distributed_sampler=False)
    result: dict[str, Any] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, loader)
    except NonFiniteError as err:
        result["raised"] = str(err)
        result["raised_step"] = err.event.step if err.event else None
        (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))
        raise
    result.update(
        global_step=trainer.global_step,
        events=[[e.step, e.kinds, e.actions] for e in guard.events],
        lr_scale=guard.lr_scale,
        lr=trainer.optimizers[0].param_groups[0]["lr"],
        stopped=guard.stopped,
        skipped=guard.skipped_steps,
        finite=all(bool(torch.isfinite(p).all()) for p in model.parameters()),
        weights=[float(p.double().sum()) for p in model.parameters()],
        monitor=monitor.last,
        autoclip_steps=clip.steps,
        autoclip_history=clip.state_dict()["history"][: clip.steps].tolist(),
        doctor_active=doctor._active,
        doctor_codes=doctor.codes,
    )
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
    if torch.distributed.is_initialized():  # join gloo's threads before exit: without it an exit rarely aborts
        torch.distributed.destroy_process_group()  # ("terminate called without an active exception")
