"""tune() under strategy="ddp" on 2 CPU processes (gloo): rank 0 owns every trial, the other rank follows.

The study runs in a subprocess (tests/ddp_scripts/tuning_ddp.py), once with Lightning's own launcher
(which re-runs the script for rank 1) and once under torchrun (which starts both ranks).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "ddp_scripts" / "tuning_ddp.py"
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(command: list[str], out: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK",
                                                           "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["MASTER_PORT"] = str(_free_port())
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-5000:]


def _check(out: Path) -> None:
    trials = json.loads((out / "study.json").read_text())
    # exactly 3 trials, none from the re-launched rank
    assert [t["number"] for t in trials] == [0, 1, 2]
    assert [t["state"] for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    # both ranks return the same study
    assert json.loads((out / "done0.json").read_text()) == json.loads((out / "done1.json").read_text()) == {
        "trials": 3, "name": "ddp"}
    ranks = {}
    for r in (0, 1):
        events = [json.loads(line) for line in (out / f"rank{r}.jsonl").read_text().splitlines()]
        runs: list[dict] = []
        for e in events:
            if e["event"] == "build":
                assert e["world"] == 2  # the process group exists before the first model is built
                runs.append({"optim": e["optim"], "steps": []})
            else:
                assert e["world"] == 2
                runs[-1]["steps"].append(e["step"])
        ranks[r] = runs
    # 3 trials, then re-evaluation (default: top 3 configs x 2 seeds) of the 2 complete ones, on both ranks
    assert len(ranks[0]) == len(ranks[1]) == 3 + 2 * 2
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    reeval = json.loads((out / "reeval.json").read_text())
    assert sorted(reeval["runs"]) == sorted(str(t["number"]) for t in complete) and reeval["seeds"] == [1000, 2000]
    assert all(r["steps"] == 12 and r["value"] is not None for runs in reeval["runs"].values() for r in runs.values())
    for a, b in zip(ranks[0][3:], ranks[1][3:]):  # the ranks re-trained the same configs in step, unpruned
        assert a["optim"] == b["optim"] and a["steps"] == b["steps"] == [4, 8, 12]
    assert sorted(json.dumps(a["optim"], sort_keys=True) for a in ranks[0][3:]) == sorted(
        json.dumps(t["config"], sort_keys=True) for t in complete for _ in range(2))
    for n, (a, b, t) in enumerate(zip(ranks[0], ranks[1], trials)):
        # both ranks trained with the hyperparameters rank 0 sampled
        assert a["optim"] == b["optim"] == t["config"], f"trial {n}"
        assert a["steps"] == b["steps"], f"trial {n}: the ranks validated at different steps"
    # every validation reported at its optimizer step (4 batches of 8 per rank and epoch)
    assert sorted(int(s) for s in trials[0]["intermediate"]) == ranks[0][0]["steps"] == [4, 8, 12]
    # the pruned trial stopped both ranks at its first validation; both went on to trial 2 together
    assert ranks[0][1]["steps"] == ranks[1][1]["steps"] == [4]
    assert list(trials[1]["intermediate"]) == ["4"]
    assert ranks[0][2]["steps"] == [4, 8, 12]
    assert len({json.dumps(t["config"], sort_keys=True) for t in trials}) == 3


@pytest.mark.slow
def test_ddp_with_lightnings_launcher(tmp_path):
    _run([sys.executable, str(SCRIPT), str(tmp_path)], tmp_path)
    _check(tmp_path)


@pytest.mark.slow
def test_ddp_under_torchrun(tmp_path):
    port = _free_port()
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
          str(SCRIPT), str(tmp_path)], tmp_path)
    _check(tmp_path)
