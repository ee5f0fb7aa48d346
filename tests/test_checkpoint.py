"""Checkpoint on real Trainers: top-k, ``last`` at every save, triggers, the manifest, async, verification."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import ConfigError, OptimMixin
from lightning_optkit._internal.io import atomic_write, is_tmp_name, sha256_file, tmp_path_for
from lightning_optkit.callbacks import Checkpoint, EarlyStopping
from lightning_optkit.callbacks._ckpt_store import MANIFEST, read_manifest

OPTIM = {"optimizer": {"name": "adam", "lr": 0.01}}
# scripted validation metric, one value per validation run: best at the 3rd and 5th
SCRIPT = [0.9, 0.7, 0.5, 0.8, 0.4, 0.6, 0.95, 0.45]



class Net(OptimMixin, L.LightningModule):
    """Trains a tiny regression; logs ``val_loss`` (real) and ``score`` (scripted per validation run)."""

    def __init__(self, optim: dict[str, Any] | None = None, fail_at: int = -1) -> None:
        super().__init__()
        optim = optim or OPTIM
        self.save_hyperparameters()
        self.layer = nn.Linear(4, 1)
        self.validations = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step == self.hparams.fail_at:
            raise RuntimeError("training_step failed on purpose")
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))
        self.log("score", SCRIPT[self.validations % len(SCRIPT)])

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validations += 1


def _loader(n: int = 32, batch_size: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


def _fit(callbacks: list[Callback], *, model: Net | None = None, val: bool = True, **kw: Any) -> L.Trainer:
    args: dict[str, Any] = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, num_sanity_val_steps=0, max_epochs=4)
    args.update(kw)
    trainer = L.Trainer(callbacks=callbacks, **args)
    trainer.fit(model or Net(), _loader(), _loader(16, 8) if val else None)
    return trainer


def _names(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".ckpt"))


# -- arguments ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "path"), [
    ({"mode": "minimum"}, "Checkpoint.mode"),
    ({"save_top_k": -2}, "Checkpoint.save_top_k"),
    ({"save_top_k": True}, "Checkpoint.save_top_k"),
    ({"every_n_epochs": -1}, "Checkpoint.every_n_epochs"),
    ({"every_n_train_steps": 2.5}, "Checkpoint.every_n_train_steps"),
    ({"train_time_interval": 0}, "Checkpoint.train_time_interval"),
    ({"train_time_interval": "1h"}, "Checkpoint.train_time_interval"),
    ({"filename": "sub/{epoch}"}, "Checkpoint.filename"),
    ({"filename": "last"}, "Checkpoint.filename"),
    ({"monitor": ""}, "Checkpoint.monitor"),
    ({"async_save": "yes"}, "Checkpoint.async_save"),
    ({"save_on_train_epoch_end": 1}, "Checkpoint.save_on_train_epoch_end"),
])
def test_bad_arguments_name_the_argument_and_end_with_a_hint(kwargs: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        Checkpoint(**kwargs)
    message = str(info.value)
    assert message.startswith(path + ": got ") and "HINT: " in message
    assert isinstance(info.value, ValueError)


def test_mode_typo_suggests_the_valid_value() -> None:
    with pytest.raises(ConfigError, match=r"Did you mean 'min'\?"):
        Checkpoint(mode="mni")


def test_a_misspelt_monitor_fails_at_the_first_validation_with_the_available_metrics(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Checkpoint.monitor: got 'val_los'.*available: .*val_loss.*"
                                          r"Did you mean 'val_loss'\?.*HINT"):
        _fit([Checkpoint(dirpath=tmp_path, monitor="val_los")], max_epochs=1)


# -- top-k, last, manifest -----------------------------------------------------------------------------
def test_top_k_by_monitor_with_last_and_a_verified_manifest(tmp_path: Path) -> None:
    ckpt = Checkpoint(dirpath=tmp_path, monitor="score", save_top_k=2, filename="{epoch}-{score:.2f}")
    optim = {**OPTIM, "scheduler": {"name": "warmup_cosine", "warmup": "25%"}}
    trainer = _fit([ckpt], model=Net(optim), max_epochs=6)
    # scores per epoch: 0.9 0.7 0.5 0.8 0.4 0.6 -> keep 0.4 (epoch 4) and 0.5 (epoch 2)
    assert _names(tmp_path) == ["2-0.50.ckpt", "4-0.40.ckpt", "last.ckpt"]
    assert Path(ckpt.best_model_path).name == "4-0.40.ckpt"
    assert ckpt.best_model_score == pytest.approx(0.4)
    assert sorted(ckpt.best_k_models) == ["2-0.50.ckpt", "4-0.40.ckpt"]
    entries = {e["file"]: e for e in read_manifest(tmp_path)}
    assert sorted(entries) == ["2-0.50.ckpt", "4-0.40.ckpt", "last.ckpt"]
    for name, entry in entries.items():
        assert sha256_file(tmp_path / name) == entry["sha256"]
        assert entry["bytes"] == (tmp_path / name).stat().st_size
        assert len(entry["config_hash"]) == 64  # the resolved optim config's hash
    assert entries["4-0.40.ckpt"]["epoch"] == 4 and entries["4-0.40.ckpt"]["metric"] == pytest.approx(0.4)
    assert entries["last.ckpt"]["step"] == trainer.global_step == 48
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    # the optim config as written, and the schedule resolved against this run (25% of 48 steps)
    assert last["global_step"] == 48 and last["optkit"]["optim_config"]["scheduler"]["warmup"] == "25%"
    assert last["lr_schedulers"][0]["lr_lambdas"][0]["warmup"] == 12
    assert last["lr_schedulers"][0]["lr_lambdas"][0]["total"] == 48 and "optimizer_states" in last
    # Lightning's ckpt_path="best" finds our best file
    trainer.validate(trainer.lightning_module, _loader(16, 8), ckpt_path="best", verbose=False)
    assert Path(trainer.ckpt_path).name == "4-0.40.ckpt"


class LastStep(Callback):
    """At each epoch start (after the previous epoch's save): last.ckpt's step in the manifest and in the file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: list[tuple[int, int]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 0:
            return
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, Checkpoint):
                cb.wait()
        steps = [e["step"] for e in read_manifest(self.folder) if e["file"] == "last.ckpt"]
        inside = torch.load(self.folder / "last.ckpt", weights_only=True)["global_step"]
        self.seen.append((steps[0] if steps else -1, inside))


@pytest.mark.parametrize("async_save", [False, True])
def test_last_is_written_at_every_save_event_not_only_with_a_top_k_save(tmp_path: Path, async_save: bool) -> None:
    # monitor="score" with save_top_k=1: only epochs 0, 1, 2 and 4 improve; last must follow every epoch anyway
    ckpt = Checkpoint(dirpath=tmp_path, monitor="score", save_top_k=1, async_save=async_save)
    probe = LastStep(tmp_path)
    _fit([ckpt, probe], max_epochs=6)
    assert probe.seen == [(8, 8), (16, 16), (24, 24), (32, 32), (40, 40)]
    entry = next(e for e in read_manifest(tmp_path) if e["file"] == "last.ckpt")
    assert entry["step"] == 48 and torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 48
    assert _names(tmp_path) == ["epoch=4-step=40.ckpt", "last.ckpt"]


def test_every_n_train_steps_keeps_the_newest_without_a_monitor(tmp_path: Path) -> None:
    ckpt = Checkpoint(dirpath=tmp_path, every_n_train_steps=5, save_top_k=3, save_last=False)
    _fit([ckpt], val=False, max_epochs=3)
    # steps 5, 10, 15, 20 of 24: the three newest stay
    assert _names(tmp_path) == ["epoch=1-step=10.ckpt", "epoch=1-step=15.ckpt", "epoch=2-step=20.ckpt"]
    assert [e["file"] for e in read_manifest(tmp_path)] == _names(tmp_path)


def test_a_tiny_time_interval_saves_at_every_step(tmp_path: Path) -> None:
    ckpt = Checkpoint(dirpath=tmp_path, train_time_interval=timedelta(microseconds=1), save_top_k=-1)
    _fit([ckpt], val=False, max_epochs=1)
    assert len([n for n in _names(tmp_path) if n != "last.ckpt"]) == 8


def test_a_step_save_before_validation_waits_for_it(tmp_path: Path) -> None:
    # step 8 is the last batch of epoch 0: validation follows, so the save comes after it and carries
    # the early-stopping check it made (a resume then does not lose that validation)
    es = EarlyStopping("val_loss", patience=10)
    ckpt = Checkpoint(dirpath=tmp_path, every_n_train_steps=8, every_n_epochs=0, save_top_k=-1)
    _fit([es, ckpt], max_epochs=2, check_val_every_n_epoch=1)
    state = torch.load(tmp_path / "epoch=0-step=8.ckpt", weights_only=True)
    es_state = next(v for k, v in state["callbacks"].items() if k.startswith("EarlyStopping"))
    assert es_state["checks"] == 1
    assert state["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]["total"]["completed"] == 2  # both batches


# -- asynchronous writing ---------------------------------------------------------------------------------
def _comparable(state: dict[str, Any]) -> dict[str, Any]:
    out = dict(state)
    out["callbacks"] = {k: {kk: vv for kk, vv in v.items() if "path" not in kk} for k, v in state["callbacks"].items()}
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_async_files_hold_the_state_of_their_step_like_sync_ones(tmp_path: Path) -> None:
    """The loop goes on mutating weights and optimizer state while the writer thread serializes: the
    host copy must make each asynchronous file identical to the synchronous one of the same step."""
    for mode in ("sync", "async"):
        L.seed_everything(0, verbose=False)
        ckpt = Checkpoint(dirpath=tmp_path / mode, every_n_train_steps=3, save_top_k=-1, async_save=mode == "async")
        _fit([ckpt], max_epochs=2)
        assert all(s.asynchronous == (mode == "async") for s in ckpt.stats)
    assert _names(tmp_path / "sync") == _names(tmp_path / "async")
    for name in _names(tmp_path / "sync"):
        a = torch.load(tmp_path / "sync" / name, weights_only=True)
        b = torch.load(tmp_path / "async" / name, weights_only=True)
        assert _same(_comparable(a), _comparable(b)), name


def test_stats_report_blocked_write_and_fsync_time(tmp_path: Path) -> None:
    ckpt = Checkpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=1, async_save=True)
    _fit([ckpt], val=False, max_epochs=1)
    assert len(ckpt.stats) == 2
    for s in ckpt.stats:
        assert s.blocked_s > 0 and s.write_s > 0 and s.fsync_s > 0 and s.bytes > 0


# -- verification -----------------------------------------------------------------------------------------
def test_latest_valid_skips_corrupt_truncated_unrecorded_and_partial_files(tmp_path: Path) -> None:
    _fit([Checkpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=3)], val=False, max_epochs=1)
    assert _names(tmp_path) == ["epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt", "epoch=0-step=8.ckpt", "last.ckpt"]
    assert Path(Checkpoint.latest_valid(tmp_path) or "").name == "epoch=0-step=8.ckpt"

    # a complete-looking file nobody recorded (an interrupted non-atomic copy, or another tool): never trusted
    (tmp_path / "epoch=9-step=99.ckpt").write_bytes((tmp_path / "last.ckpt").read_bytes())
    # a partial temporary file of ours
    tmp_path_for(tmp_path / "epoch=0-step=10.ckpt").write_bytes(b"PK\x03\x04partial")
    assert Path(Checkpoint.latest_valid(tmp_path) or "").name == "epoch=0-step=8.ckpt"

    # bit rot in the newest: one byte flipped
    newest = tmp_path / "epoch=0-step=8.ckpt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01
    newest.write_bytes(bytes(data))
    assert not Checkpoint.verify(newest)
    # last.ckpt is a hard link to the same bytes, so it fails too; the next one back is taken
    assert Path(Checkpoint.latest_valid(tmp_path) or "").name == "epoch=0-step=6.ckpt"

    # truncated
    older = tmp_path / "epoch=0-step=6.ckpt"
    older.write_bytes(older.read_bytes()[:1000])
    assert Path(Checkpoint.latest_valid(tmp_path) or "").name == "epoch=0-step=4.ckpt"
    assert torch.load(Checkpoint.latest_valid(tmp_path), weights_only=True)["global_step"] == 4

    # an unreadable manifest vouches for nothing
    (tmp_path / MANIFEST).write_text("{not json")
    assert Checkpoint.latest_valid(tmp_path) is None


def test_load_checks_the_sha256_and_loads_weights_only(tmp_path: Path) -> None:
    ckpt = Checkpoint(dirpath=tmp_path)
    _fit([ckpt], max_epochs=1)
    state = Checkpoint.load(ckpt.last_model_path)
    assert state["global_step"] == 8
    other = tmp_path / "copy.ckpt"
    other.write_bytes(Path(ckpt.last_model_path).read_bytes())
    with pytest.raises(ValueError, match=r"not a recorded checkpoint.*HINT"):
        Checkpoint.load(other)
    assert Checkpoint.load(other, check=False)["global_step"] == 8


def test_setup_removes_temporary_files_of_dead_writers(tmp_path: Path) -> None:
    stale = tmp_path / ".epoch=0-step=2.ckpt.tmp-999999999-deadbeef"  # no such pid
    tmp_path.mkdir(exist_ok=True)
    stale.write_bytes(b"partial")
    _fit([Checkpoint(dirpath=tmp_path)], val=False, max_epochs=1)
    assert not stale.exists()
    assert not [n for n in os.listdir(tmp_path) if is_tmp_name(n)]


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")

    def half(f: Any) -> None:
        f.write(b"new, half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.bin"]


# -- exceptions ------------------------------------------------------------------------------------------
def test_an_exception_writes_an_emergency_checkpoint_with_a_sidecar(tmp_path: Path) -> None:
    ckpt = Checkpoint(dirpath=tmp_path, every_n_train_steps=3, async_save=True)
    with pytest.raises(RuntimeError, match="failed on purpose"):
        _fit([ckpt], model=Net(fail_at=5), max_epochs=2)
    path = tmp_path / "emergency-rank0-epoch=0-step=5.ckpt"
    assert ckpt.emergency_path == str(path) and Checkpoint.verify(path)
    sidecar = json.loads((tmp_path / (path.name + ".sha256")).read_text())
    assert sidecar["step"] == 5 and sidecar["rank"] == 0 and "failed on purpose" in sidecar["exception"]
    assert torch.load(path, weights_only=True)["global_step"] == 5
    assert Path(Checkpoint.latest_valid(tmp_path) or "").name == "epoch=0-step=3.ckpt"  # emergencies: opt-in
    assert Checkpoint.latest_valid(tmp_path, include_emergency=True) == str(path)


def test_no_emergency_checkpoint_when_disabled(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        _fit([Checkpoint(dirpath=tmp_path, save_on_exception=False)], model=Net(fail_at=5), max_epochs=1)
    assert not [n for n in os.listdir(tmp_path) if n.startswith("emergency")]


def test_default_folder_is_under_the_trainer_root(tmp_path: Path) -> None:
    ckpt = Checkpoint()
    _fit([ckpt], max_epochs=1, default_root_dir=tmp_path)
    assert ckpt.dirpath == (tmp_path / "checkpoints").resolve()
    assert Checkpoint.latest_valid(ckpt.dirpath) is not None


def test_two_checkpoints_cannot_share_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Checkpoint.dirpath: .*one manifest.*HINT"):
        _fit([Checkpoint(dirpath=tmp_path), Checkpoint(dirpath=tmp_path, monitor="val_loss")], max_epochs=1)
