"""The LR finder under 2-process CPU DDP: one curve (loss averaged over ranks), one suggestion, on both ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "ddp_scripts" / "lr_finder_ddp.py"
ROOT = Path(__file__).resolve().parents[1]


def test_two_ranks_get_the_same_curve_and_suggestion(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)  # a launcher variable would make Lightning think it is a child process
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (rank0["rank"], rank1["rank"]) == (0, 1)
    r0, r1 = rank0["result"], rank1["result"]
    # each rank trained on its own shard: the local losses differ, the recorded (averaged) curve does not
    assert rank0["local_losses"] != rank1["local_losses"]
    assert r0["losses"] == r1["losses"] and r0["lrs"] == r1["lrs"]
    for k in range(5):
        mean = (rank0["local_losses"][k] + rank1["local_losses"][k]) / 2
        assert abs(r0["losses"][k] - mean) < 1e-5
    assert r0["suggestions"] == r1["suggestions"] and r0["suggestions"][r0["rule"]] is not None
    assert r0["applied"] and r1["applied"]
    assert rank0["written_lr"] == rank1["written_lr"] == r0["recommended_lr"]
    # the test's steps are not training steps, and the ranks stayed in sync afterwards
    assert rank0["global_step"] == rank1["global_step"] == 16
    assert rank0["weights"] == rank1["weights"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0.json", "rank1.json"]
