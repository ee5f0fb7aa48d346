"""DDP (2 CPU processes, gloo): decisions agree across ranks, and a failing rank cannot hang the job.

Each test runs a standalone script under ``tests/ddp_scripts`` in a subprocess with a timeout;
Lightning's launcher starts the second rank. Results come back as JSON files and checkpoints.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_optkit.callbacks import Checkpoint

SCRIPTS = Path(__file__).parent / "ddp_scripts"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # two processes importing Lightning: ~20 s each


def _run(script: str, out: Path, timeout: float) -> tuple[subprocess.CompletedProcess[str] | None, float]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / script), str(out)], cwd=out, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the rank it started
        proc.communicate()
        return None, time.time()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, None), time.time()


def test_ranks_with_different_metric_values_stop_together(tmp_path: Path) -> None:
    result, _ = _run("es_and_ckpt_agree.py", tmp_path, timeout=240)
    assert result is not None, "the DDP job hung"
    assert result.returncode == 0, result.stdout[-4000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # rank 0 alone sees 1.0, 1.2, 0.55, 1.16, 0.57 and rank 1 alone 1.0, 0.6, 1.15, 0.56, 1.17: on its own
    # each would stop elsewhere; the mean 1.0, 0.9, 0.85, 0.86, 0.87 stops after two checks without improvement
    assert r0["es"] == r1["es"]
    assert r0["global_step"] == r1["global_step"] == 20
    assert r0["es"]["stopped_epoch"] == 4 and r0["es"]["stop_reason"] == "patience"
    assert r0["es"]["best_epoch"] == 2 and abs(r0["es"]["best_score"] - 0.85) < 1e-6
    assert r0["should_stop"] and r1["should_stop"]
    # Checkpoint ranks by the same mean, and both ranks hold the same bookkeeping
    assert r0["ckpt"] == r1["ckpt"]
    assert sorted(r0["ckpt"]["best_k_models"]) == ["epoch=2-step=12.ckpt", "epoch=3-step=16.ckpt"]
    best = r0["ckpt"]["best_model_path"]
    assert Path(best).name == "epoch=2-step=12.ckpt" and Checkpoint.verify(best)
    latest = Checkpoint.latest_valid(tmp_path / "ckpt")
    assert latest is not None and torch.load(latest, weights_only=True)["global_step"] == 20


def test_exception_on_one_rank_ends_the_job_with_an_emergency_checkpoint(tmp_path: Path) -> None:
    result, ended = _run("ckpt_exception.py", tmp_path, timeout=240)
    assert result is not None, "the DDP job hung after rank 1 raised"
    assert result.returncode != 0
    assert "rank 1 failed on purpose" in result.stdout
    raised = json.loads((tmp_path / "raised.json").read_text())
    assert ended - raised["time"] < 60, "the job took over 60 s to end after the exception"
    folder = tmp_path / "ckpt"
    emergency = folder / "emergency-rank1-epoch=0-step=5.ckpt"
    assert emergency.exists() and Checkpoint.verify(emergency)
    state = torch.load(emergency, weights_only=True)
    assert state["global_step"] == 5 and "state_dict" in state and "optimizer_states" in state
    sidecar = json.loads((folder / (emergency.name + ".sha256")).read_text())
    assert sidecar["rank"] == 1 and "rank 1 failed on purpose" in sidecar["exception"]
    # the regular checkpoints are intact and preferred by latest_valid
    latest = Checkpoint.latest_valid(folder)
    assert latest is not None and Path(latest).name in ("epoch=0-step=4.ckpt", "last.ckpt")
