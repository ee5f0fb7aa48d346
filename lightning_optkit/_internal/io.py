"""Durable file writes: temporary file in the target folder, flush, fsync, rename, fsync the folder.

Every file lightning_optkit writes for later use (checkpoints, manifests, reports) goes through
these helpers, so a crash at any moment leaves either the old file or the new one under the final
name, never a partial one. Temporary files are named ``.<name>.tmp-<pid>-<token>`` in the same
folder (a rename is only atomic within one file system: a temporary folder on another disk is the
bug behind Lightning issue #19970), so a killed writer leaves at most such a file behind, which
:func:`remove_stale_tmp` clears.

This module imports nothing heavy at import time (torch is imported inside
:func:`atomic_torch_save`).

Example:
    >>> import json, tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> digest = atomic_write_json(os.path.join(folder, "state.json"), {"step": 3})
    >>> json.load(open(os.path.join(folder, "state.json")))["step"], len(digest)
    (3, 64)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "WriteResult",
    "atomic_link_or_copy",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_figure",
    "atomic_write_json",
    "fsync_dir",
    "is_tmp_name",
    "remove_stale_tmp",
    "sha256_file",
    "tmp_path_for",
]

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-(?P<token>[0-9a-f]+)$")
_CHUNK = 1 << 20


@dataclass
class WriteResult:
    """What a durable write did: the content's sha256, its size and where the time went (seconds)."""

    path: str
    sha256: str
    size: int
    write_s: float = 0.0
    fsync_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class _HashingWriter:
    """A write-only file object that hashes what passes through it (torch.save writes into it)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.hash.update(view)  # hashlib releases the GIL for large buffers
        self.size += view.nbytes
        self.raw.write(view)
        return view.nbytes

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True


def tmp_path_for(path: str | os.PathLike[str]) -> Path:
    """The temporary name a write of ``path`` uses: hidden, in the same folder, unique per process."""
    p = Path(path)
    return p.with_name(f".{p.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def is_tmp_name(name: str) -> bool:
    """Whether ``name`` (a bare file name) is one of our temporary files."""
    return _TMP_RE.match(name) is not None


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a folder so that renames and new entries in it survive a power loss (no-op on Windows)."""
    if os.name == "nt":  # pragma: no cover - folders cannot be opened on Windows
        return
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[IO[bytes]], None], *, fsync: bool = True,
    best_effort: bool = False,
) -> WriteResult:
    """Write ``path`` durably: ``write(f)`` fills a temporary file that then replaces ``path``.

    The temporary file is created in the target folder (so the rename never crosses a file
    system), flushed, fsynced, renamed over ``path`` with :func:`os.replace`, and the folder is
    fsynced. If ``write`` raises, the temporary file is removed and ``path`` is untouched.

    Args:
        path: the final file.
        write: called with a binary file object; everything written through it is hashed.
        fsync: set False to skip both fsyncs (faster, not durable across a power loss; the rename
            still makes a crashed process leave no partial file under ``path``).
        best_effort: a folder that cannot be fsynced (some network and FUSE file systems answer
            EINVAL) is not an error: for reports written from inside training, which must not stop
            it. Checkpoints keep the default (the error is raised).
    """
    target = Path(path)
    tmp = tmp_path_for(target)
    t0 = time.perf_counter()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb", buffering=0) as raw:
            writer = _HashingWriter(raw)
            write(writer)  # type: ignore[arg-type]
            raw.flush()
            t1 = time.perf_counter()
            if fsync:
                os.fsync(raw.fileno())
            t2 = time.perf_counter()
        os.replace(tmp, target)
        if fsync:
            try:
                fsync_dir(target.parent)
            except OSError:
                if not best_effort:
                    raise
        t3 = time.perf_counter()
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return WriteResult(str(target), writer.hash.hexdigest(), writer.size, write_s=t1 - t0, fsync_s=(t2 - t1) + (t3 - t2))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True,
                       best_effort: bool = False) -> str:
    """Write ``data`` to ``path`` durably; returns its sha256 (``best_effort``: see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), fsync=fsync, best_effort=best_effort).sha256


def atomic_write_figure(path: str | os.PathLike[str], fig: Any, **savefig: Any) -> str:
    """Render a matplotlib figure to PNG and write it atomically (its folder is created).

    ``savefig`` goes to ``Figure.savefig`` (default ``bbox_inches="tight"``).

    Example:
        >>> import tempfile
        >>> from matplotlib.figure import Figure
        >>> fig = Figure(); _ = fig.subplots().plot([0, 1])
        >>> atomic_write_figure(os.path.join(tempfile.mkdtemp(), "a", "f.png"), fig).endswith("f.png")
        True
    """
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **{"bbox_inches": "tight", **savefig})
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return os.fspath(path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, fsync: bool = True,
                      default: Callable[[Any], Any] | None = None, strict: bool = False) -> str:
    """Write ``obj`` as indented JSON to ``path`` durably; returns the sha256 of the bytes written.

    ``default`` is ``json.dumps``'s: it turns values JSON does not know into ones it does (e.g. ``str``).
    ``strict=True`` keeps the file strict JSON for any reader (the health callbacks' reports): non-finite
    floats become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, tensors and sets become lists,
    other unknown values their ``str``, the indent is 2 and the folder is created; and, as such a report
    is written from inside training, a folder that cannot be fsynced is not an error (``best_effort``).

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "sub", "report.json")
        >>> _ = atomic_write_json(path, {"loss": float("nan"), "ids": {3}}, strict=True)
        >>> json.load(open(path))
        {'loss': 'NaN', 'ids': [3]}
    """
    if strict:
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        text = json.dumps(_strict_json(obj), indent=2, default=default or _json_default, allow_nan=False)
    else:
        text = json.dumps(obj, indent=1, sort_keys=False, allow_nan=True, default=default)
    return atomic_write_bytes(path, (text + "\n").encode(), fsync=fsync, best_effort=strict)


def _strict_json(value: Any) -> Any:
    """Non-finite floats as the strings "NaN", "Infinity", "-Infinity": the file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    torch = sys.modules.get("torch")  # a tensor can only exist once torch is imported: never import it here
    if torch is not None and isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str], *, fsync: bool = True) -> WriteResult:
    """``torch.save(obj)`` to ``path`` durably, hashing the bytes as they are written (no re-read)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f), fsync=fsync)


def atomic_link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, fsync: bool = True) -> None:
    """Make ``dst`` a durable, atomically replaced copy of ``src`` (a hard link where the file system allows).

    A hard link costs no I/O; later replacing or deleting ``src`` does not change ``dst``.
    """
    target = Path(dst)
    tmp = tmp_path_for(target)
    try:
        os.link(src, tmp)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)

        def copy(f: IO[bytes]) -> None:
            with open(src, "rb") as s:
                while chunk := s.read(_CHUNK):
                    f.write(chunk)

        atomic_write(target, copy, fsync=fsync)
        return
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(target.parent)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's content, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # no permission: it exists
        return True
    return True


def remove_stale_tmp(dirpath: str | os.PathLike[str]) -> list[str]:
    """Delete temporary files left in ``dirpath`` by writers that no longer run; returns their names."""
    removed: list[str] = []
    try:
        names = os.listdir(dirpath)
    except FileNotFoundError:
        return removed
    for name in names:
        m = _TMP_RE.match(name)
        if m is None or _pid_alive(int(m.group("pid"))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(dirpath, name))
            removed.append(name)
    return removed
