"""The files behind :class:`~lightning_optkit.callbacks.Checkpoint`: durable writes, the manifest, async I/O.

A checkpoint folder holds the checkpoint files, ``last.ckpt`` and ``checkpoints.json``, the
manifest. The manifest lists every checkpoint with its sha256, epoch, step, metric and the hash of
the resolved optim config, and is itself replaced atomically after each write. The order of
operations makes every crash safe:

1. the new file is written to a temporary name, fsynced and renamed (:mod:`lightning_optkit._internal.io`);
2. ``last.ckpt`` is re-pointed at it (a hard link, renamed into place);
3. the manifest is replaced;
4. files that left the top-k are deleted.

A process killed anywhere leaves a folder in which every file the manifest names with a matching
checksum is complete. :func:`latest_valid` trusts nothing else: a file with no recorded checksum,
or whose bytes no longer hash to it, is skipped. Emergency files written on an exception (any rank,
without collective calls, so without the manifest) carry their checksum in a ``<file>.sha256``
sidecar.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._internal.io import atomic_link_or_copy, atomic_torch_save, atomic_write_json, is_tmp_name, sha256_file

__all__ = [
    "MANIFEST",
    "AsyncWriter",
    "CheckpointStore",
    "HostSnapshot",
    "SaveJob",
    "candidates",
    "latest_valid",
    "read_manifest",
    "verify",
    "write_emergency",
]

MANIFEST = "checkpoints.json"
SIDECAR = ".sha256"
FORMAT = "lightning_optkit.checkpoints/1"


# -- manifest -------------------------------------------------------------------------------------
def read_manifest(dirpath: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The manifest's entries (``[]`` when there is none or it cannot be read)."""
    path = Path(dirpath) / MANIFEST
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except (OSError, ValueError):
        return []  # unreadable: nothing in it can be trusted
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("sha256"), str)]


def _sidecar_entries(dirpath: Path) -> Iterator[dict[str, Any]]:
    try:
        names = os.listdir(dirpath)
    except OSError:
        return
    for name in names:
        if not name.endswith(SIDECAR) or is_tmp_name(name):
            continue
        try:
            with open(dirpath / name, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and isinstance(meta.get("sha256"), str):
            meta = dict(meta)
            meta["file"] = name[: -len(SIDECAR)]
            yield meta


def _order_key(entry: dict[str, Any]) -> tuple[float, int, int, int]:
    # newest write first; at equal time the named file before its ``last`` twin
    return (float(entry.get("time") or 0.0), int(entry.get("seq") or 0), int(entry.get("step") or 0),
            0 if entry.get("kind") == "last" else 1)


def candidates(dirpath: str | os.PathLike[str], *, include_emergency: bool = False) -> list[dict[str, Any]]:
    """Checkpoint entries with a recorded checksum, newest first (nothing is verified here)."""
    folder = Path(dirpath)
    entries = [dict(e) for e in read_manifest(folder)]
    if include_emergency:
        entries += [e for e in _sidecar_entries(folder) if e.get("kind", "emergency") == "emergency"]
    for e in entries:
        e["path"] = str(folder / e["file"])
    return sorted(entries, key=_order_key, reverse=True)


def verify(path: str | os.PathLike[str], sha256: str) -> bool:
    """Whether the file at ``path`` exists and its bytes hash to ``sha256``."""
    try:
        return sha256_file(path) == sha256
    except OSError:
        return False


def latest_valid(dirpath: str | os.PathLike[str], *, include_emergency: bool = False) -> str | None:
    """The newest checkpoint in ``dirpath`` whose sha256 matches the one recorded when it was written."""
    for entry in candidates(dirpath, include_emergency=include_emergency):
        if verify(entry["path"], entry["sha256"]):
            return entry["path"]
    return None


# -- host snapshots for asynchronous saving ---------------------------------------------------------
_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), torch.dtype, torch.device, torch.Size)


class HostSnapshot:
    """Copies a checkpoint's tensors to host memory, reusing the buffers of the previous copy.

    The training loop mutates parameters and optimizer state in place right after a save, so an
    asynchronous writer needs its own copy. Buffers are kept between saves (keyed by their place in
    the checkpoint) because a fresh 200 MB allocation spends most of its time in page faults; the
    caller must not take a new snapshot while a writer still reads the previous one.
    """

    def __init__(self) -> None:
        self._pool: dict[tuple[Any, ...], torch.Tensor] = {}
        self.bytes = 0

    def copy(self, obj: Any) -> Any:
        memo: dict[int, torch.Tensor] = {}
        seen: set[tuple[Any, ...]] = set()
        cuda = [False]
        out = self._copy(obj, (), memo, seen, cuda)
        for key in [k for k in self._pool if k not in seen]:
            del self._pool[key]
        self.bytes = sum(t.numel() * t.element_size() for t in self._pool.values())
        if cuda[0]:
            torch.cuda.synchronize()
        return out

    def _tensor(self, t: torch.Tensor, key: tuple[Any, ...], memo: dict[int, torch.Tensor],
                seen: set[tuple[Any, ...]], cuda: list[bool]) -> torch.Tensor:
        hit = memo.get(id(t))
        if hit is not None:
            return hit
        t = t.detach()
        if t.layout != torch.strided or t.is_quantized or t.is_nested or t.device.type == "meta":
            out = t.to("cpu", copy=True)
        else:
            buf = self._pool.get(key)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                pin = t.is_cuda and torch.cuda.is_available()
                buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin)
                self._pool[key] = buf
            seen.add(key)
            buf.copy_(t, non_blocking=t.is_cuda)
            cuda[0] |= t.is_cuda
            out = buf
        if isinstance(t, torch.nn.Parameter):
            out = torch.nn.Parameter(out, requires_grad=t.requires_grad)
        memo[id(t)] = out
        return out

    def _copy(self, obj: Any, key: tuple[Any, ...], memo: dict[int, torch.Tensor], seen: set[tuple[Any, ...]],
              cuda: list[bool]) -> Any:
        if isinstance(obj, torch.Tensor):
            return self._tensor(obj, key, memo, seen, cuda)
        if isinstance(obj, _IMMUTABLE):
            return obj
        if isinstance(obj, dict):
            new = copy.copy(obj)
            for k, v in obj.items():
                new[k] = self._copy(v, (*key, k), memo, seen, cuda)
            return new
        if isinstance(obj, list):
            return [self._copy(v, (*key, i), memo, seen, cuda) for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            items = [self._copy(v, (*key, i), memo, seen, cuda) for i, v in enumerate(obj)]
            return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
        return copy.deepcopy(obj)


# -- writing ----------------------------------------------------------------------------------------
@dataclass
class SaveJob:
    """One save event: the checkpoint, the file to write (if any), ``last`` and the files to drop."""

    checkpoint: dict[str, Any]
    file: str | None
    write_last: bool
    remove: list[str]
    meta: dict[str, Any]
    blocked_s: float = 0.0


@dataclass
class SaveStats:
    """Timings of one save (seconds): time the loop was blocked, time writing, the part spent in fsync."""

    step: int
    file: str
    bytes: int
    blocked_s: float
    write_s: float
    fsync_s: float
    asynchronous: bool
    extra: dict[str, float] = field(default_factory=dict)


class CheckpointStore:
    """Writes checkpoints into one folder and keeps its manifest (used on the saving rank only)."""

    def __init__(self, dirpath: str | os.PathLike[str], *, fsync: bool = True, last_name: str = "last.ckpt") -> None:
        self.dirpath = Path(dirpath)
        self.fsync = fsync
        self.last_name = last_name
        self.entries = read_manifest(self.dirpath)
        self.seq = max((int(e.get("seq") or 0) for e in self.entries), default=0)
        self.stats: list[SaveStats] = []
        self._lock = threading.Lock()

    def execute(self, job: SaveJob, *, asynchronous: bool = False) -> SaveStats:
        """Do a job's file work in the crash-safe order (see the module docstring)."""
        with self._lock:
            t0 = time.perf_counter()
            self.seq += 1
            base = {**job.meta, "seq": self.seq, "time": time.time()}
            new_entries: list[dict[str, Any]] = []
            result = None
            if job.file is not None:
                result = atomic_torch_save(job.checkpoint, self.dirpath / job.file, fsync=self.fsync)
                new_entries.append({**base, "file": job.file, "sha256": result.sha256, "bytes": result.size})
            if job.write_last:
                last = self.dirpath / self.last_name
                if result is not None:
                    atomic_link_or_copy(result.path, last, fsync=self.fsync)
                    new_entries.append({**new_entries[0], "file": self.last_name, "kind": "last"})
                else:
                    result = atomic_torch_save(job.checkpoint, last, fsync=self.fsync)
                    new_entries.append({**base, "file": self.last_name, "kind": "last", "sha256": result.sha256,
                                        "bytes": result.size})
            t1 = time.perf_counter()
            dropped = set(job.remove) | {e["file"] for e in new_entries}
            self.entries = [e for e in self.entries if e["file"] not in dropped] + new_entries
            atomic_write_json(self.dirpath / MANIFEST, {"format": FORMAT, "entries": self.entries}, fsync=self.fsync)
            for name in job.remove:
                if name not in {e["file"] for e in new_entries}:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.dirpath / name)
            t2 = time.perf_counter()
            stats = SaveStats(
                step=int(job.meta.get("step", -1)), file=job.file or self.last_name,
                bytes=result.size if result is not None else 0, blocked_s=job.blocked_s, write_s=t2 - t0,
                fsync_s=result.fsync_s if result is not None else 0.0, asynchronous=asynchronous,
                extra={"data_s": t1 - t0, "manifest_s": t2 - t1},
            )
            self.stats.append(stats)
            return stats


def write_emergency(checkpoint: dict[str, Any], dirpath: str | os.PathLike[str], name: str, meta: dict[str, Any],
                    *, fsync: bool = True) -> str:
    """Write an emergency checkpoint and its ``.sha256`` sidecar; touches no shared file (any rank may call it)."""
    folder = Path(dirpath)
    folder.mkdir(parents=True, exist_ok=True)
    result = atomic_torch_save(checkpoint, folder / name, fsync=fsync)
    atomic_write_json(folder / (name + SIDECAR),
                      {**meta, "kind": "emergency", "sha256": result.sha256, "bytes": result.size, "time": time.time()},
                      fsync=fsync)
    return result.path


def save_emergency(trainer: Any, dirpath: str | os.PathLike[str], exception: BaseException, *, fsync: bool,
                   ext: str = ".ckpt") -> str:
    """Dump this rank's checkpoint and write it with :func:`write_emergency` (no collective call); its path."""
    rank = trainer.global_rank
    checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
    name = f"emergency-rank{rank}-epoch={trainer.current_epoch}-step={trainer.global_step}{ext}"
    optkit = checkpoint.get("optkit") if isinstance(checkpoint.get("optkit"), dict) else {}
    meta = {"epoch": trainer.current_epoch, "step": trainer.global_step, "rank": rank,
            "exception": f"{type(exception).__name__}: {exception}"[:500],
            "config_hash": optkit.get("config_hash")}
    return write_emergency(checkpoint, dirpath, name, meta, fsync=fsync)


class AsyncWriter:
    """Runs one :class:`SaveJob` at a time on a background thread; errors surface at the next call.

    Only one write is in flight: :meth:`submit` first waits for the previous one, so a run that
    saves faster than the disk writes is slowed down rather than queueing copies in memory.
    """

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._failed_file: str | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, job: SaveJob) -> None:
        try:
            self.store.execute(job, asynchronous=True)
        except BaseException as exc:  # reported by the next wait()
            self._error = exc
            self._failed_file = job.file or self.store.last_name

    def submit(self, job: SaveJob) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(job,), name="optkit-checkpoint-writer", daemon=False)
        self._thread.start()

    def wait(self, timeout: float | None = None, *, raise_error: bool = True) -> bool:
        """Wait for the write in flight; ``False`` if it is still running after ``timeout`` seconds."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
            self._thread = None
        if self._error is not None and raise_error:
            error, name = self._error, self._failed_file
            self._error = self._failed_file = None
            raise RuntimeError(f"Checkpoint: the asynchronous write of {name!r} failed: {error!r}") from error
        return True
