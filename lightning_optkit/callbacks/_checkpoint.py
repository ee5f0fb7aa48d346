"""Checkpoint: atomic, verifiable checkpoints with top-k, ``last`` at every save, async writing, exact resume.

This module wires the callback into Lightning's hooks (when to save, what to record); each concept
lives in its own module:

* :mod:`._ckpt_args`: the checks of ``Checkpoint(...)``'s arguments;
* :mod:`._ckpt_plan`: top-k planning (which file a save writes and which it removes), pure functions;
* :mod:`._ckpt_triggers`: facts of the fit loop that decide when a save happens;
* :mod:`._ckpt_store`: writing files (atomic, fsynced, hashed), the manifest, the background writer;
* :mod:`._ckpt_resume`: exact resume (random states, fast-forwarding the loader), as a mixin.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Checkpoint as _LightningCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from .._internal.ranks import mean_over_ranks
from ..config import ConfigError
from ._ckpt_args import EXT as _EXT
from ._ckpt_args import check_arguments
from ._ckpt_plan import best_of, format_name, missing_monitor, plan_top_k, ranking_score
from ._ckpt_resume import ResumeHooks
from ._ckpt_store import (
    AsyncWriter,
    CheckpointStore,
    HostSnapshot,
    SaveJob,
    SaveStats,
    candidates,
    latest_valid,
    save_emergency,
    verify,
)
from ._ckpt_triggers import epoch_save_at_train_end, optimizer_stepped, validation_follows

__all__ = ["Checkpoint"]

_SHARDED = ("FSDP", "DeepSpeed", "ModelParallel")


class Checkpoint(ResumeHooks, _LightningCheckpoint):
    """Checkpoints that survive crashes: atomic files, a verified manifest, ``last`` at every save.

    Every save writes the checkpoint to a temporary file in the target folder, fsyncs it, renames
    it into place and fsyncs the folder; ``last.ckpt`` is re-pointed at it (a hard link) at every
    save event, whether or not the file made the top-k; then ``checkpoints.json`` (file, epoch,
    step, metric, sha256, hash of the resolved optim config) is replaced atomically. A process
    killed at any moment leaves only complete files under their final names, and
    :meth:`latest_valid` returns the newest one whose checksum still verifies, for ``ckpt_path=``.

    Saves happen every ``every_n_epochs`` epochs (the default, 1), every ``every_n_train_steps``
    optimizer steps and/or every ``train_time_interval``. With ``monitor`` the ``save_top_k``
    best by that metric are kept (reduced over ranks, so every rank agrees); without it, the
    ``save_top_k`` newest. A step or time save that falls on a batch after which validation runs is
    taken after that validation, so the checkpoint holds the validation's effects (early-stopping
    counters, plateau steps) and the resume does not skip them.

    With ``async_save=True`` the training loop only waits for the checkpoint to be copied to host
    memory (buffers are reused between saves, so this costs a memory copy of the checkpoint); a
    background thread serializes, hashes, writes and fsyncs. One write is in flight at a time.

    Each checkpoint also carries the random states of every rank and of the start of the epoch, and
    a resumed run fast-forwards the training loader to the saved batch, so resuming in the middle of
    an epoch repeats the uninterrupted run exactly for map-style datasets (any sampler whose order
    depends on the epoch and the global random state, ``shuffle=True`` included). Loaders with their
    own ``state_dict`` (torchdata's ``StatefulDataLoader``) are restored by Lightning instead.

    On an exception each rank that sees it writes ``emergency-rank<r>-epoch=<e>-step=<s>.ckpt``
    with a ``.sha256`` sidecar, without any collective call, so a failure on one rank cannot hang
    the others. Emergency files are a salvage copy taken mid-step; :meth:`latest_valid` considers
    them only with ``include_emergency=True``.

    Checkpoints load with ``torch.load(..., weights_only=True)`` (what Lightning does by default),
    and :meth:`load` verifies the checksum first.

    Args:
        dirpath: folder for the files (default: ``<log_dir or default_root_dir>/checkpoints``).
        filename: name template without extension: ``{epoch}``, ``{step}`` and logged metrics, with
            an optional format spec (``"{epoch}-{val_loss:.3f}"``). A metric name may hold ``/``
            (``"val_acc={val/acc:.3f}"``: only its value goes into the name); the text outside the
            braces may not (it would be a folder).
        monitor: metric that ranks checkpoints for ``save_top_k``; None keeps the newest.
        mode: ``"min"`` or ``"max"``.
        save_top_k: how many named checkpoints to keep (-1: all, 0: none, only ``last``).
        save_last: write ``last.ckpt`` at every save event.
        every_n_epochs: save every N epochs (default 1 when no other trigger is given; 0 = off).
        every_n_train_steps: save every N optimizer steps (0 or None = off).
        train_time_interval: save when this much time (``timedelta`` or seconds) has passed.
        save_on_train_epoch_end: take epoch saves at the end of the training epoch (True) or after
            validation (False); None decides as Lightning does (after the epoch when validation runs
            once per epoch at its end or not at all).
        async_save: write on a background thread; the loop waits only for the copy to host memory.
        fsync: fsync files and folder (durable across power loss); False keeps crash-atomicity only.
        save_on_exception: write an emergency checkpoint on each rank that sees an exception.
        restore_rng: save and restore random states for exact resume.
        verbose: print a line for each save.

    Example:
        (Lines marked ``+SKIP`` are not run as doctests: needs your model; tests/test_checkpoint*.py run it for real.)
        >>> import lightning as L
        >>> ckpt = Checkpoint(monitor="val_loss", save_top_k=2, every_n_train_steps=500, async_save=True)
        >>> trainer = L.Trainer(callbacks=[ckpt], logger=False)  # doctest: +SKIP
        >>> trainer.fit(model, ckpt_path=Checkpoint.latest_valid("lightning_logs/checkpoints"))  # doctest: +SKIP
    """

    FILE_EXTENSION = _EXT
    LAST_NAME = "last"

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str = "epoch={epoch}-step={step}",
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 1,
        save_last: bool = True,
        every_n_epochs: int | None = None,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | float | None = None,
        save_on_train_epoch_end: bool | None = None,
        async_save: bool = False,
        fsync: bool = True,
        save_on_exception: bool = True,
        restore_rng: bool = True,
        verbose: bool = False,
    ) -> None:
        super().__init__()
        flags = {"save_last": save_last, "async_save": async_save, "fsync": fsync,
                 "save_on_exception": save_on_exception, "restore_rng": restore_rng}
        filename, self.every_n_epochs, self.every_n_train_steps, self.train_time_interval = check_arguments(
            filename=filename, monitor=monitor, mode=mode, save_top_k=save_top_k, every_n_epochs=every_n_epochs,
            every_n_train_steps=every_n_train_steps, train_time_interval=train_time_interval,
            save_on_train_epoch_end=save_on_train_epoch_end, flags=flags, last_name=self.LAST_NAME)

        self._dirpath_arg = None if dirpath is None else Path(dirpath)
        self.dirpath: Path | None = None
        self.filename = filename
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.save_on_train_epoch_end = save_on_train_epoch_end
        self.async_save = async_save
        self.fsync = fsync
        self.save_on_exception = save_on_exception
        self.restore_rng = restore_rng
        self.verbose = verbose

        # bookkeeping (identical on every rank; rank 0 decides and broadcasts)
        self.best_k_models: dict[str, float] = {}
        self.best_model_path = ""
        self.best_model_score: float | None = None
        self.last_model_path = ""
        self.emergency_path = ""
        self._last_saved_step = -1
        self._deferred = False
        self._warned_missing: set[str] = set()

        # rank 0 only
        self._store: CheckpointStore | None = None
        self._writer: AsyncWriter | None = None
        self._snapshot = HostSnapshot()

        # resume
        self._last_time = time.monotonic()
        self._saving_rng: dict[str, Any] | None = None
        self._rng_epoch: dict[str, Any] | None = None
        self._rng_epoch_index = -1
        self._pending: dict[str, Any] | None = None
        self._epoch_start_seen = False
        self._plateau_epoch = -1
        self._warning_filter: Any = None

    # -- public helpers ----------------------------------------------------------------------------
    @staticmethod
    def latest_valid(dirpath: str | os.PathLike[str], *, include_emergency: bool = False) -> str | None:
        """The newest checkpoint in ``dirpath`` whose sha256 verifies, or None; pass it to ``ckpt_path=``.

        Only files recorded with a checksum are candidates (the manifest, and with
        ``include_emergency`` the ``.sha256`` sidecars of emergency files); a partial, truncated
        or altered file fails its checksum and is skipped, and so is a file written after the
        manifest was last replaced.

        Example:
            >>> Checkpoint.latest_valid("/nonexistent") is None
            True
        """
        return latest_valid(dirpath, include_emergency=include_emergency)

    @staticmethod
    def verify(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is recorded (manifest or sidecar) in its folder and its bytes match the checksum."""
        p = Path(path)
        for entry in candidates(p.parent, include_emergency=True):
            if entry["file"] == p.name:
                return verify(p, entry["sha256"])
        return False

    @staticmethod
    def load(path: str | os.PathLike[str], *, map_location: Any = "cpu", weights_only: bool = True,
             check: bool = True) -> dict[str, Any]:
        """``torch.load`` a checkpoint with ``weights_only=True``, after checking its sha256 (``check``).

        Raises:
            ValueError: when ``check`` is set and the file is not recorded or fails its checksum.
        """
        if check and not Checkpoint.verify(path):
            raise ValueError(f"Checkpoint.load: {os.fspath(path)!r} is not a recorded checkpoint whose sha256 "
                             "verifies. HINT: use Checkpoint.latest_valid(folder), or check=False for a file "
                             "written elsewhere")
        return torch.load(path, map_location=map_location, weights_only=weights_only)

    @property
    def stats(self) -> list[SaveStats]:
        """Per-save timings on the saving rank: time the loop was blocked, write time, fsync time, bytes."""
        return [] if self._store is None else list(self._store.stats)

    def wait(self) -> None:
        """Block until the asynchronous write in flight (if any) is on disk; raise its error if it failed."""
        if self._writer is not None:
            self._writer.wait()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, filename=self.filename,
                                        every_n_epochs=self.every_n_epochs,
                                        every_n_train_steps=self.every_n_train_steps)

    # -- setup ---------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self._dirpath_arg is not None:
            dirpath = self._dirpath_arg
        else:
            root = trainer.log_dir if trainer.loggers else None
            dirpath = Path(root or trainer.default_root_dir) / "checkpoints"
        strategy = type(trainer.strategy).__name__
        if any(name in strategy for name in _SHARDED):
            raise ConfigError("Checkpoint", strategy, "a strategy whose full checkpoint one rank can write "
                              "(single device, DDP, DDP spawn)",
                              hint="with sharded strategies use Lightning's ModelCheckpoint, which writes "
                                   "per-rank shards")
        dirpath = Path(trainer.strategy.broadcast(str(dirpath.resolve()), 0))
        for other in trainer.callbacks:  # type: ignore[attr-defined]
            if other is not self and isinstance(other, Checkpoint) and other.dirpath == dirpath:
                raise ConfigError("Checkpoint.dirpath", str(dirpath), "a folder no other Checkpoint callback "
                                  "writes to (each folder has one manifest)",
                                  hint="give each Checkpoint its own dirpath, e.g. .../best and .../periodic")
        self.dirpath = dirpath
        if trainer.is_global_zero:
            from .._internal.io import remove_stale_tmp

            dirpath.mkdir(parents=True, exist_ok=True)
            remove_stale_tmp(dirpath)
            self._store = CheckpointStore(dirpath, fsync=self.fsync, last_name=self.LAST_NAME + _EXT)
            self._writer = AsyncWriter(self._store) if self.async_save else None

    def _warn_earlier_run(self, trainer: pl.Trainer) -> None:
        # Lightning sets trainer.ckpt_path when it restores the checkpoint: after setup(), and for strategies
        # that restore after their own setup (FSDP, DeepSpeed, ModelParallel) only after on_fit_start. By
        # on_train_start every strategy has restored, so the decision is taken there.
        if not trainer.is_global_zero or self._store is None or not self._store.entries or trainer.ckpt_path:
            return
        rank_zero_warn(
            f"Checkpoint: {str(self.dirpath)!r} already holds {len(self._store.entries)} checkpoints of an earlier "
            "run, and this fit does not resume it. They stay in the folder's manifest and this run does not count "
            "them in its top-k (it never prunes them), but it replaces any file of the same name when it saves one "
            f"({self.LAST_NAME}{_EXT}, or a name its filename template repeats); latest_valid() returns this run's "
            "files once it has saved. HINT: to continue that run, pass ckpt_path=Checkpoint.latest_valid(dirpath) "
            "to fit; to keep both runs apart, give this one its own dirpath")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._warn_earlier_run(trainer)
        self._last_time = time.monotonic()
        self._prepare_resume(trainer)

    # -- triggers ------------------------------------------------------------------------------------
    def _skip(self, trainer: pl.Trainer) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        return (bool(trainer.fast_dev_run) or trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking
                or self.dirpath is None)

    def _epoch_save_at_train_end(self, trainer: pl.Trainer) -> bool:
        return epoch_save_at_train_end(trainer, self.save_on_train_epoch_end)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._skip(trainer):
            return
        stepped = optimizer_stepped(trainer)
        due = bool(stepped and self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0)
        if self.train_time_interval is not None:
            now = time.monotonic()
            timed = stepped and now - self._last_time >= self.train_time_interval
            if trainer.world_size > 1:
                timed = trainer.strategy.broadcast(timed, 0)
            if timed:
                self._last_time = now
                due = True
        if not due or trainer.global_step == self._last_saved_step:
            return
        if validation_follows(trainer):
            self._deferred = True  # save once validation has run, with its effects in the checkpoint
            return
        self._save(trainer, "step")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._skip(trainer):
            return
        at_epoch_end = trainer.fit_loop.epoch_loop._num_ready_batches_reached()
        if self._epoch_save_at_train_end(trainer) and at_epoch_end:
            return  # on_train_epoch_end saves
        epoch_due = bool(self.every_n_epochs) and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if (epoch_due and not self._epoch_save_at_train_end(trainer)) or self._deferred:
            self._deferred = False
            self._save(trainer, "validation")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._skip(trainer):
            return
        epoch_due = bool(self.every_n_epochs) and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if (epoch_due and self._epoch_save_at_train_end(trainer)) or self._deferred:
            self._deferred = False
            self._save(trainer, "epoch")
        self._take_skipped_plateau_step(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._skip(trainer) and self.save_last and trainer.global_step != self._last_saved_step:
            self._save(trainer, "end", force_last_only=True)
        self.wait()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._unsilence()
        if self._writer is not None:
            self._writer.wait(raise_error=False)  # errors were raised by on_train_end

    # -- saving --------------------------------------------------------------------------------------
    def _metrics(self, trainer: pl.Trainer) -> dict[str, Any]:
        return dict(trainer.callback_metrics)

    def _reduced_monitor(self, trainer: pl.Trainer) -> float | None:
        """The monitored value averaged over ranks (None if a rank lacks it); a collective call."""
        if self.monitor is None:
            return None
        return mean_over_ranks(trainer, self.monitor)

    def _format(self, trainer: pl.Trainer, metrics: dict[str, Any]) -> str:
        name, missing = format_name(self.filename, trainer.current_epoch, trainer.global_step, metrics)
        for key in missing:
            if key not in self._warned_missing:
                self._warned_missing.add(key)
                rank_zero_warn(f"Checkpoint.filename: {{{key}}} is not a logged metric yet; written as 'na'. "
                               f"Available: {sorted(metrics)}")
        return name

    def _plan(self, trainer: pl.Trainer, value: float | None, trigger: str, force_last_only: bool) -> dict[str, Any]:
        """Rank 0's decision for one save event (broadcast to every rank)."""
        metrics = self._metrics(trainer)
        error = missing_monitor(self.monitor, value, trigger, metrics)
        if error is not None:
            return {"error": error}
        higher_better = self.monitor is None or self.mode == "max"
        file: str | None = None
        remove: list[str] = []
        best_k = dict(self.best_k_models)
        score: float | None = None
        if not force_last_only and self.save_top_k != 0:
            score = ranking_score(self.monitor, value, trainer.global_step, higher_better=higher_better)
            if score is not None:
                file, remove, best_k = plan_top_k(self.best_k_models, self._format(trainer, metrics), score,
                                                  save_top_k=self.save_top_k, higher_better=higher_better)
        if file is None and not self.save_last:
            return {"skip": True}
        best = best_of(best_k, higher_better=higher_better)
        best_path = "" if best is None else str(self.dirpath / best)  # type: ignore[operator]
        return {"file": file, "remove": remove, "best_k": best_k, "best_model_path": best_path,
                "best_model_score": None if best is None else best_k[best], "metric": value, "score": score}

    def _save(self, trainer: pl.Trainer, trigger: str, force_last_only: bool = False) -> None:
        t0 = time.perf_counter()
        value = self._reduced_monitor(trainer)
        plan = self._plan(trainer, value, trigger, force_last_only) if trainer.is_global_zero else None
        if trainer.world_size > 1:
            plan = trainer.strategy.broadcast(plan, 0)
        assert plan is not None
        if "error" in plan:
            path, val, expected, sugg, hint = plan["error"]
            raise ConfigError(path, val, expected, suggestions=sugg, hint=hint)
        if plan.get("skip"):
            return
        assert self.dirpath is not None
        self.best_k_models = plan["best_k"]
        self.best_model_path = plan["best_model_path"]
        self.best_model_score = plan["best_model_score"]
        if self.save_last:
            self.last_model_path = str(self.dirpath / (self.LAST_NAME + _EXT))
        self._last_saved_step = trainer.global_step
        self._saving_rng = self._gather_rng(trainer) if self.restore_rng else None
        try:
            if self._writer is not None:
                self._writer.wait()
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        finally:
            self._saving_rng = None
        if not trainer.is_global_zero:
            return
        assert self._store is not None
        optkit = checkpoint.get("optkit") if isinstance(checkpoint.get("optkit"), dict) else {}
        meta = {"kind": "top_k" if self.monitor is not None else "recent", "epoch": trainer.current_epoch,
                "step": trainer.global_step, "monitor": self.monitor, "metric": plan["metric"],
                "trigger": trigger, "config_hash": optkit.get("config_hash")}
        job = SaveJob(checkpoint, plan["file"], self.save_last, plan["remove"], meta)
        if self._writer is not None:
            job.checkpoint = self._snapshot.copy(checkpoint)
            job.blocked_s = time.perf_counter() - t0
            self._writer.submit(job)
        else:
            stats = self._store.execute(job)
            stats.blocked_s = time.perf_counter() - t0
        if self.verbose:
            what = plan["file"] or (self.LAST_NAME + _EXT)
            rank_zero_info(f"Checkpoint: saved {what} at epoch {trainer.current_epoch}, step {trainer.global_step}"
                           + (f" ({self.monitor}={plan['metric']:.6g})" if plan["metric"] is not None else "")
                           + (" [writing in the background]" if self._writer is not None else ""))

    # -- exceptions ----------------------------------------------------------------------------------
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Write this rank's emergency checkpoint. No collective call: other ranks may be gone or stuck."""
        from lightning.pytorch.trainer.states import TrainerFn

        self._unsilence()
        if (not self.save_on_exception or self.dirpath is None or trainer.state.fn != TrainerFn.FITTING
                or trainer.sanity_checking or trainer.global_step == 0):
            return
        rank = trainer.global_rank
        try:
            if self._writer is not None:
                self._writer.wait(timeout=30, raise_error=False)
            self._saving_rng = None
            self.emergency_path = save_emergency(trainer, self.dirpath, exception, fsync=self.fsync, ext=_EXT)
            print(f"[rank {rank}] Checkpoint: {type(exception).__name__} raised; emergency checkpoint written to "
                  f"{self.emergency_path}", file=sys.stderr)
        except Exception as err:  # never mask the original exception
            print(f"[rank {rank}] Checkpoint: the emergency checkpoint could not be written: {err!r}", file=sys.stderr)

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rng = self._saving_rng
        if rng is None and self.restore_rng:
            rng = self._local_rng()  # saved by someone else (trainer.save_checkpoint, an emergency)
        return {
            "version": 1,
            "dirpath": None if self.dirpath is None else str(self.dirpath),
            "monitor": self.monitor,
            "mode": self.mode,
            "best_k_models": dict(self.best_k_models),
            "best_model_path": self.best_model_path,
            "best_model_score": self.best_model_score,
            "last_model_path": self.last_model_path,
            "last_saved_step": self._last_saved_step,
            "rng": rng,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # top-k entries are file names: keep those present in this run's folder (the same one, or a copy)
        saved = dict(state_dict.get("best_k_models", {}))
        folder = self.dirpath
        kept = {n: s for n, s in saved.items() if folder is not None and (folder / n).exists()}
        if len(kept) != len(saved):
            rank_zero_warn(f"Checkpoint: {len(saved) - len(kept)} of the resumed run's top-k files are not in "
                           f"{None if folder is None else str(folder)!r}; they are left out of the top-k list.")
        self.best_k_models = kept
        best = best_of(kept, higher_better=self.monitor is None or self.mode == "max")
        if best is not None and folder is not None:
            self.best_model_path, self.best_model_score = str(folder / best), kept[best]
        if self.save_last and folder is not None and (folder / (self.LAST_NAME + _EXT)).exists():
            self.last_model_path = str(folder / (self.LAST_NAME + _EXT))
        self._last_saved_step = int(state_dict.get("last_saved_step", -1))
        self._pending = {"rng": state_dict.get("rng")}
