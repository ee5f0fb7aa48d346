"""LabelIssueFinder: the cheap in-run screen for suspect labels on the validation set."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch.utils.data import Dataset

from .._internal.checks import check_int, check_number
from ..config import ConfigError
from ._label_issues import LabelIssues

__all__ = ["IndexedDataset", "LabelIssueFinder"]

_OWNER = "LabelIssueFinder"


class IndexedDataset(Dataset):
    """Wrap a dataset of ``(x, y, ...)`` items so each item is ``(x, y, index)``.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> ds = IndexedDataset(TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 0])))
        >>> ds[2][2], len(ds)
        (2, 3)
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        item = self.dataset[i]
        return item[0], item[1], i


class LabelIssueFinder(Callback):
    """Flag validation samples that the model gets confidently wrong in several epochs.

    After every validation run (sanity checks excluded, from epoch ``start_epoch`` on; with
    ``val_check_interval < 1`` each run counts as one "epoch" of the vote) each validation sample is scored: *confidently wrong* when the predicted class differs from its label with a
    probability of at least ``threshold``. Samples confidently wrong in at least ``min_epochs``
    epochs are reported by :meth:`issues`, ranked by their mean self-confidence (the probability of
    their label, lowest first), and written to ``csv_path`` at the end of fit when one is given.

    **What the module must provide.** The callback needs each validation sample's index, label and
    the model's output. ``validation_step`` returns a dict with ``"logits"`` (or ``"probs"``), shape
    ``(B, C)``; the index and label come from ``outputs["index"]`` / ``outputs["target"]`` when present,
    else from the batch ``(x, y, index)``: wrap the validation dataset in
    :meth:`LabelIssueFinder.indexed` (:class:`IndexedDataset`) to get that third element.

    **How it differs from cross-fitting** (:func:`find_label_issues`): it costs nothing beyond the
    validation passes that run anyway, and the validation samples are out-of-sample as the method
    requires, but (1) only the validation set is screened, never the training set, where wrong labels
    do their damage; (2) the model changes between epochs and early epochs are weak, hence the
    ``min_epochs`` vote; (3) it is the simple confident-wrong rule with one global threshold, not
    confident learning's per-class thresholds and noise-rate pruning, so it misses errors into
    classes the model is unsure about. Use it as a screen during training; use cross-fitting for an
    inventory of the whole dataset.

    The per-batch work stays on the device (no host sync); one transfer per validation epoch. Under
    DDP the epoch's records are all-gathered (each rank's validation shard must have the same length,
    as with Lightning's default ``DistributedSampler``). A sample is counted once per validation run
    even when it is seen twice (``DistributedSampler`` pads the shards by repeating samples).

    **Several validation loaders**: records are kept per ``(dataloader_idx, index)``, since each
    loader's indices start at 0; :meth:`issues` takes the loader's ``dataloader_idx`` (default 0),
    and with ``csv_path`` loader ``k > 0`` is written beside it as ``<stem>_dl<k><suffix>``.

    Args:
        threshold: probability of the predicted class needed to count as confidently wrong.
        min_epochs: epochs a sample must be confidently wrong in to be reported.
        start_epoch: first epoch whose validation counts (skip the untrained first epochs).
        csv_path: where to write the ranked table at the end of fit (atomically), or ``None``.

    Example:
        >>> finder = LabelIssueFinder(threshold=0.9, min_epochs=2)
        >>> len(finder.issues()), finder.epochs_seen
        (0, 0)
    """

    indexed = IndexedDataset

    def __init__(self, threshold: float = 0.9, min_epochs: int = 2, start_epoch: int = 0,
                 csv_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.threshold = float(check_number(_OWNER, "threshold", threshold, 0.0, 1.0) or 0.9)
        self.min_epochs = int(check_int(_OWNER, "min_epochs", min_epochs) or 1)
        self.start_epoch = int(check_int(_OWNER, "start_epoch", start_epoch, minimum=0) or 0)
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        self.epochs_seen = 0
        # (dataloader_idx, index) -> [seen, wrong, sum self-conf, last pred, label]
        self._records: dict[tuple[int, int], list[float]] = {}
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(threshold=self.threshold, min_epochs=self.min_epochs)

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_seen": self.epochs_seen,
                "records": [[dl, idx, *rec] for (dl, idx), rec in self._records.items()]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs_seen = int(state_dict.get("epochs_seen", 0))
        records = state_dict.get("records", [])
        if isinstance(records, Mapping):  # the earlier format: index -> record, one loader
            self._records = {(0, int(k)): list(v) for k, v in records.items()}
        else:
            self._records = {(int(r[0]), int(r[1])): list(r[2:]) for r in records}

    @property
    def dataloaders(self) -> list[int]:
        """The ``dataloader_idx`` of every validation loader recorded so far."""
        return sorted({dl for dl, _ in self._records})

    def _active(self, trainer: Any) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch >= self.start_epoch

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if not self._active(trainer):
            return
        out, index, target = _unpack(outputs, batch)
        probs = out.detach().float().softmax(-1) if "logits" in outputs else out.detach().float()
        conf, pred = probs.max(-1)
        target = target.to(probs.device).long().reshape(-1)
        own = probs.gather(1, target[:, None])[:, 0]
        wrong = (pred != target) & (conf >= self.threshold)
        index = index.to(probs.device).long().reshape(-1)
        ints = torch.stack([torch.full_like(index, int(dataloader_idx)), index, wrong.long(), pred, target], 1)
        self._pending.append((ints, own))

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._active(trainer):
            self._pending.clear()
            return
        if not self._pending:
            return
        ints = torch.cat([p[0] for p in self._pending])
        own = torch.cat([p[1] for p in self._pending])
        self._pending.clear()
        if getattr(trainer, "world_size", 1) > 1:
            ints = pl_module.all_gather(ints).reshape(-1, ints.shape[1])
            own = pl_module.all_gather(own).reshape(-1)
        counted: set[tuple[int, int]] = set()
        for (dl, idx, wrong, pred, label), own_p in zip(ints.cpu().tolist(), own.cpu().tolist()):  # one transfer
            key = (int(dl), int(idx))
            if key in counted:  # a repeat in this run (DistributedSampler padding): count each sample once
                continue
            counted.add(key)
            rec = self._records.setdefault(key, [0, 0, 0.0, 0, int(label)])
            rec[0] += 1
            rec[1] += int(wrong)
            rec[2] += own_p
            rec[3], rec[4] = int(pred), int(label)
        self.epochs_seen += 1

    def issues(self, dataloader_idx: int = 0) -> LabelIssues:
        """The samples of validation loader ``dataloader_idx`` confidently wrong in at least ``min_epochs``
        epochs, lowest mean self-confidence first (``indices`` are positions in that loader's dataset)."""
        keep = [(k, v) for (dl, k), v in self._records.items() if dl == dataloader_idx and v[1] >= self.min_epochs]
        mean_conf = np.array([v[2] / v[0] for _, v in keep], dtype=np.float64)
        idx = np.array([k for k, _ in keep], dtype=np.int64)
        order = np.lexsort((idx, mean_conf)) if len(keep) else np.zeros(0, dtype=np.int64)
        times = np.array([v[1] for _, v in keep], dtype=np.int64)
        return LabelIssues(
            indices=idx[order], given_label=np.array([v[4] for _, v in keep], dtype=np.int64)[order],
            predicted_label=np.array([v[3] for _, v in keep], dtype=np.int64)[order],
            self_confidence=mean_conf[order], score=mean_conf[order], method="confident_wrong_in_run",
            ranked_by="mean_self_confidence",
            info={"times_wrong": times[order].tolist(), "epochs_seen": self.epochs_seen, "threshold": self.threshold,
                  "dataloader_idx": dataloader_idx},
        )

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.csv_path is not None:
            self._write(self.csv_path)

    @rank_zero_only
    def _write(self, path: str) -> None:
        stem, suffix = os.path.splitext(path)
        for dl in self.dataloaders or [0]:
            target = path if dl == 0 else f"{stem}_dl{dl}{suffix}"
            issues = self.issues(dl)
            issues.to_csv(target)
            rank_zero_info(f"{_OWNER}: {len(issues)} suspect validation labels written to {target}")


def _unpack(outputs: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits or probs, index, target) from the validation_step output and the batch."""
    if not isinstance(outputs, Mapping) or not ({"logits", "probs"} & set(outputs)):
        raise ConfigError(f"{_OWNER}.validation_step", type(outputs).__name__,
                          "validation_step returning a dict with 'logits' (or 'probs') of shape (B, C)",
                          hint="return {'loss': loss, 'logits': logits} from validation_step")
    out = outputs["logits"] if "logits" in outputs else outputs["probs"]
    index = outputs.get("index")
    target = outputs.get("target")
    seq = batch if isinstance(batch, (list, tuple)) else ()
    if index is None:
        if len(seq) < 3:
            raise ConfigError(f"{_OWNER}.batch", f"a batch of {len(seq)} elements",
                              "validation batches (x, y, index) or an 'index' entry in validation_step's output",
                              hint="wrap the validation dataset: LabelIssueFinder.indexed(dataset)")
        index = seq[2]
    if target is None:
        target = seq[1]
    return out, torch.as_tensor(index), torch.as_tensor(target)
