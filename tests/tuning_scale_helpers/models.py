"""Factories the scale-out tests tune in worker processes.

``build`` trains the tiny 4 -> 3 classifier of ``tests/ddp_scripts/tuning_models.py``; each trial
appends one JSON line per process to ``$OPTKIT_TEST_RECORD`` (when set): its pid, the
``CUDA_VISIBLE_DEVICES`` it sees, when it started and ended training, its DDP rank and world size,
its thread count and a checksum of its final weights (ranks of one trial must agree). ``$OPTKIT_TEST_STEP_SLEEP`` seconds of sleep per
training step make a trial long enough to be killed in the middle.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ddp_scripts"))
from tuning_models import TinyData, TinyNet


class RecordingNet(TinyNet):
    """TinyNet that records its device slot and its training interval, and can be slowed down."""

    def on_fit_start(self) -> None:
        self._t0 = time.time()

    def training_step(self, batch, batch_idx):
        pause = float(os.environ.get("OPTKIT_TEST_STEP_SLEEP", "0") or 0)
        if pause:
            time.sleep(pause)
        return super().training_step(batch, batch_idx)

    def on_fit_end(self) -> None:
        path = os.environ.get("OPTKIT_TEST_RECORD")
        if path:
            line = {"pid": os.getpid(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": self._t0,
                    "end": time.time(), "lr": self.hparams.optim["optimizer"]["lr"],
                    "rank": self.trainer.global_rank, "world": self.trainer.world_size,
                    "steps": self.trainer.global_step, "threads": torch.get_num_threads(),
                    "weights": [round(float(p.double().sum()), 12) for p in self.parameters()]}
            with open(path, "a") as f:
                f.write(json.dumps(line) + "\n")


def build(optim: dict) -> tuple[L.LightningModule, L.LightningDataModule]:
    """``build(optim) -> (module, datamodule)`` for ``tune(..., workers=K)``."""
    return RecordingNet(optim), TinyData()
