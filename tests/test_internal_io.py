"""Durable writes of the internal toolbox: a folder that cannot be fsynced (EINVAL on some network and
FUSE file systems) stops a checkpoint write but not a health report written from inside training."""

from __future__ import annotations

import errno
import json

import pytest

from lightning_optkit._internal import io


def _no_dir_fsync(path):
    raise OSError(errno.EINVAL, "Invalid argument", str(path))


def test_a_report_survives_a_folder_that_cannot_be_fsynced(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "fsync_dir", _no_dir_fsync)
    path = tmp_path / "doctor.json"
    io.atomic_write_json(path, {"loss": float("nan")}, strict=True)  # the health callbacks' form
    assert json.loads(path.read_text()) == {"loss": "NaN"}
    assert [p.name for p in tmp_path.iterdir()] == ["doctor.json"]  # no temporary file left


def test_a_checkpoint_write_still_raises_when_the_folder_cannot_be_fsynced(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "fsync_dir", _no_dir_fsync)
    with pytest.raises(OSError, match="Invalid argument"):
        io.atomic_write_json(tmp_path / "manifest.json", {"entries": []})
    with pytest.raises(OSError):
        io.atomic_write_bytes(tmp_path / "x.bin", b"x")
    io.atomic_write_bytes(tmp_path / "y.bin", b"y", best_effort=True)
    assert (tmp_path / "y.bin").read_bytes() == b"y"
