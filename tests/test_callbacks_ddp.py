"""The health callbacks under real 2-process CPU DDP (gloo): one rank's NaN makes both ranks act, and nothing hangs.

Each test runs ``tests/ddp_scripts/health_ddp.py`` in a subprocess with a timeout; Lightning's launcher
starts the second rank. Each rank writes what it saw and did to a JSON file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "ddp_scripts" / "health_ddp.py"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # two processes importing Lightning: ~20 s per test on a busy 2-core machine


def _run(out: Path, scenario: str, timeout: float = 240) -> subprocess.CompletedProcess[str] | None:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), scenario], cwd=out, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the rank it started
        proc.communicate()
        return None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, None)


def test_nan_on_one_rank_same_actions_on_both(tmp_path: Path) -> None:
    result = _run(tmp_path, "agree")
    assert result is not None, "the DDP job hung"
    assert result.returncode == 0, result.stdout[-4000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # step 3: one event, the LR halves on both ranks; steps 8-10: three in a row, both stop after step 10
    expected = [[3, ["nonfinite_loss", "nonfinite_grad"], ["skip", "reduce_lr"]],
                [8, ["nonfinite_loss", "nonfinite_grad"], ["skip"]],
                [9, ["nonfinite_loss", "nonfinite_grad"], ["skip"]],
                [10, ["nonfinite_loss", "nonfinite_grad"], ["skip", "stop"]]]
    assert r0["events"] == r1["events"] == expected
    assert r0["global_step"] == r1["global_step"] == 11
    assert r0["lr_scale"] == r1["lr_scale"] == 0.5 and r0["lr"] == r1["lr"] == 0.025
    assert r0["stopped"] and r1["stopped"] and r0["skipped"] == r1["skipped"] == 4
    # the weights stayed finite and identical: no rank applied a step the other skipped
    assert r0["finite"] and r0["weights"] == r1["weights"]
    # the shared cache saw the all-reduced gradient: the same norms and clipping history on both ranks
    assert r0["monitor"] == r1["monitor"] and "grad_norm/total" in r0["monitor"]
    assert r0["autoclip_steps"] == r1["autoclip_steps"] == 11 and r0["autoclip_history"] == r1["autoclip_history"]
    # the doctor watches on rank 0 only (it acts on nothing) and diagnoses the NaNs there
    assert r0["doctor_active"] and not r1["doctor_active"]
    assert "NONFINITE_LOSS" in r0["doctor_codes"] and r1["doctor_codes"] == []


def test_raise_on_one_rank_ends_the_job(tmp_path: Path) -> None:
    result = _run(tmp_path, "raise")
    assert result is not None, "the DDP job hung after the guard raised"
    assert result.returncode != 0
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["raised_step"] == r1["raised_step"] == 3  # rank 0 saw no NaN, and raised with rank 1
    assert "HINT" in r0["raised"]
