"""Crash test: training processes SIGKILLed at random moments while checkpoints are being written.

Each run is a real Lightning training (``tests/crash_scripts/train_forever.py``) that writes a
~12 MB checkpoint (top-2, ``last`` and the manifest) at every optimizer step, every other run with
asynchronous writing. The processes are forked from a server that has imported Lightning once, so
a run costs about a second instead of an interpreter start. Once the first checkpoint is
recorded, the process is killed with SIGKILL in one of three ways, in turn: after a random delay;
a random 0-30 ms after a checkpoint's temporary file appears (a data write in progress, or the
link/manifest/delete steps right after it); the moment the manifest's temporary file appears.
After every kill:

* :meth:`Checkpoint.latest_valid` returns a checkpoint, it loads with ``weights_only=True`` and a
  real Trainer resumes from it;
* it is never a temporary (partial) file, and a manifest entry whose file does not hash to the
  recorded sha256 is never returned.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_optkit._internal.io import is_tmp_name, sha256_file
from lightning_optkit.callbacks import Checkpoint
from lightning_optkit.callbacks._ckpt_store import read_manifest

RUNS = 21
PHASES = ("random", "data", "manifest")
SCRIPT = Path(__file__).parent / "crash_scripts" / "train_forever.py"
ROOT = Path(__file__).resolve().parents[1]


def _child_module() -> Any:
    spec = importlib.util.spec_from_file_location("optkit_crash_child", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tmp_files(folder: Path) -> list[str]:
    try:
        return [n for n in os.listdir(folder) if is_tmp_name(n)]
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _crash_once(server: subprocess.Popen[str], i: int, root: Path) -> dict[str, Any]:
    rng = random.Random(1000 + i)
    phase = PHASES[i % len(PHASES)]
    folder = root / f"run{i:02d}"
    folder.mkdir()
    mode = "async" if i % 2 else "sync"
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write(f"RUN {folder} {mode}\n")
    server.stdin.flush()
    pid = int(server.stdout.readline())
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not read_manifest(folder):  # the first recorded checkpoint
            assert _alive(pid), f"run {i}: the training process died before its first checkpoint"
            assert time.monotonic() < deadline, f"run {i}: no checkpoint within 120 s"
            time.sleep(0.002)
        if phase == "random":
            time.sleep(rng.uniform(0.0, 1.0))
        else:
            time.sleep(rng.uniform(0.0, 0.5))
            suffix = ".ckpt" if phase == "data" else "checkpoints.json"
            until = time.monotonic() + 10
            while not seen and time.monotonic() < until:  # a write in progress: its temporary file exists
                seen = [n for n in _tmp_files(folder) if n.split(".tmp-")[0].endswith(suffix)]
            if phase == "data":
                time.sleep(rng.uniform(0.0, 0.03))
    finally:
        os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < end:
            time.sleep(0.01)
    assert not _alive(pid)
    return {"run": i, "phase": phase, "mode": mode, "folder": folder, "seen": seen, "left_tmp": _tmp_files(folder)}


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs fork and SIGKILL")
def test_sigkill_during_checkpoint_writes_never_leaves_a_bad_latest(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    server = subprocess.Popen([sys.executable, str(SCRIPT), "--fork-server"], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "READY"
        runs = [_crash_once(server, i, tmp_path) for i in range(RUNS)]
    finally:
        server.kill()
        server.wait()

    child = _child_module()
    torch.set_num_threads(1)
    for run in runs:
        folder: Path = run["folder"]
        latest = Checkpoint.latest_valid(folder)
        assert latest is not None, f"run {run['run']}: no valid checkpoint"
        assert not is_tmp_name(Path(latest).name)
        # every file the manifest vouches for is complete; anything else is ignored, never trusted
        for entry in read_manifest(folder):
            path = folder / entry["file"]
            if path.exists() and sha256_file(path) != entry["sha256"]:
                # only possible for a file being replaced when the kill hit (last.ckpt, a re-written name):
                # latest_valid must then have skipped it
                assert str(path) != latest
        state = torch.load(latest, weights_only=True)
        step = int(state["global_step"])
        assert step >= 1 and state["optkit"]["config_hash"]
        # resume for two more optimizer steps with a fresh model and trainer
        model = child.Net()
        trainer = child.trainer([Checkpoint(dirpath=folder, every_n_train_steps=1, save_top_k=2)], max_steps=step + 2)
        trainer.fit(model, child.loader(), ckpt_path=latest, weights_only=True)
        assert trainer.global_step == step + 2
        run["step"] = step
        run["latest"] = Path(latest).name
        run["resumed_latest"] = Path(Checkpoint.latest_valid(folder) or "").name
    interrupted = sum(bool(r["left_tmp"]) for r in runs)
    with capsys.disabled():
        print(f"\ncrash test: {RUNS} SIGKILLs; {sum(bool(r['seen']) for r in runs)} while a temporary file was "
              f"being written, {interrupted} left a partial file behind; every latest_valid loaded and resumed")
        for r in runs:
            print(f"  run {r['run']:2d} {r['phase']:8s} {r['mode']:5s} step {r['step']:4d} latest={r['latest']:24s} "
                  f"partial={r['left_tmp']}")
    assert interrupted >= 1  # the kills did land inside writes
