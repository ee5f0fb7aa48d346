"""The batches a range test reads: the training stream, the held-out batches, and the mode of a probe."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from ..config import ConfigError
from ._settings import AUTO_VAL_BATCHES, RangeTestSettings

__all__ = ["BatchStream", "flatten", "held_out_loaders", "probe_mode", "training_loaders"]


def training_loaders(trainer: Any) -> Any:
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()
    loaders = trainer.train_dataloader
    if loaders is None:
        raise ConfigError("train_dataloaders", None, "training data (train_dataloaders, a datamodule or the "
                          "module's train_dataloader()) with at least one batch",
                          hint="check Trainer(limit_train_batches=...) is not 0")
    return loaders


def _val_loaders(trainer: Any) -> Any:
    loop = trainer.fit_loop.epoch_loop.val_loop
    if not trainer.enable_validation:
        raise ConfigError("val_batches", None, "validation data to measure the held-out loss on",
                          hint="give val_dataloaders (or a datamodule with val_dataloader()) and a validation_step, "
                               "check limit_val_batches, or set val_batches=0")
    if trainer.val_dataloaders is None:
        state = trainer.state.stage
        trainer.validating = True
        try:
            loop.setup_data()
        finally:
            trainer.state.stage = state
    loaders = trainer.val_dataloaders
    if loaders is None:
        raise ConfigError("val_batches", None, "validation data to measure the held-out loss on",
                          hint="give val_dataloaders (or a datamodule with val_dataloader()), or set val_batches=0")
    return loaders


def held_out_loaders(trainer: Any, settings: RangeTestSettings) -> tuple[Any, int]:
    """The validation loaders and the number of held-out batches per step (``None, 0``: training loss only).

    ``val_batches="auto"`` takes :data:`AUTO_VAL_BATCHES` when validation is enabled and has data and the
    module uses automatic optimization (a manual ``training_step`` steps the optimizer itself, so it
    cannot be run on held-out data); otherwise the test reads the training loss, silently.
    """
    if settings.val_batches != "auto":
        count = int(settings.val_batches)
        return (_val_loaders(trainer), count) if count > 0 else (None, 0)
    if not trainer.lightning_module.automatic_optimization:
        return None, 0
    try:
        return _val_loaders(trainer), AUTO_VAL_BATCHES
    except ConfigError:  # validation disabled or no validation data
        return None, 0


def flatten(loaders: Any) -> list[Any]:
    from lightning.pytorch.utilities import CombinedLoader

    if isinstance(loaders, CombinedLoader):
        return list(loaders.flattened)
    return list(CombinedLoader(loaders, "max_size_cycle").flattened)


class BatchStream:
    """Endless batches from the trainer's training loader(s), restarting after ``limit`` batches."""

    def __init__(self, loaders: Any, limit: float) -> None:
        from lightning.pytorch.utilities import CombinedLoader

        self.loader = CombinedLoader(loaders, "max_size_cycle")
        self.limit = int(limit) if math.isfinite(limit) and limit > 0 else None
        self.iterator: Iterator[Any] | None = None
        self.count = 0

    def next(self) -> tuple[Any, int]:
        for _attempt in range(2):
            if self.iterator is None or (self.limit is not None and self.count >= self.limit):
                self.iterator = iter(self.loader)
                self.count = 0
            try:
                batch, _idx, _dl = next(self.iterator)
            except StopIteration:
                self.iterator = None
                continue
            idx = self.count
            self.count += 1
            return batch, idx
        raise ConfigError("train_dataloaders", None, "a training loader that yields at least one batch")


@contextlib.contextmanager
def probe_mode(module: torch.nn.Module, batch_stats: bool = True) -> Iterator[None]:
    """Evaluation mode for the held-out probes, except that BatchNorm layers normalize with the probe
    batch's own statistics (their running statistics are put back afterwards, bit for bit).

    During a sweep the running statistics lag the weights (momentum 0.1 averages ~10 steps while the LR
    grows ~20 % a step), so an eval-mode probe measures stale statistics rather than the weights, and
    the held-out loss rises early on BatchNorm nets at LRs that train well. ``batch_stats=False``: plain
    evaluation mode (for probe batches of one sample, where batch statistics do not exist).
    """
    modes = [(m, m.training) for m in module.modules()]
    norms = [m for m in module.modules() if batch_stats and isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in norms]
    module.eval()
    for m in norms:
        m.train()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for m, buffers in zip(norms, saved):
                for name, value in buffers.items():
                    getattr(m, name).copy_(value)
