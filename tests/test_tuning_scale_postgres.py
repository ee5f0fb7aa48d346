"""Several machines on one PostgreSQL study: a REAL server on loopback, two `optkit tune` launchers, SIGKILLs.

Launcher A and launcher B play two machines (each `--workers 1` on the same `--storage URL --study`).
First one of A's trial processes is killed in the middle of its trial (A fails and retries it at
once); then B is killed together with its running trial, as when a machine dies (its heartbeat
stops; A fails the stale trial and Optuna's RetryFailedTrialCallback retries it). A finishes the
study: the requested number of COMPLETE trials, both killed trials FAIL and retried with the same
parameters, and the password of the storage URL appears in no output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from test_tuning_scale import BASE, FACTORY, SEARCH, check_killed_trial_was_retried  # noqa: E402
from tuning_scale_helpers.postgres import PASSWORD, postgres_server  # noqa: E402

from lightning_optkit.tuning._pool._protocol import WORKER_KEY  # noqa: E402

N_TRIALS = 6


@pytest.fixture(scope="module")
def pg_url():
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.fail("psycopg2 is needed for the PostgreSQL tests: pip install psycopg2-binary (test extras)")
    with postgres_server() as url:
        yield url


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _kill_trial_of(parent: int, url: str, deadline_s: float = 180.0, and_parent: bool = False) -> dict:
    """SIGKILL a trial process of launcher ``parent`` once its trial has reported a validation."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            study = optuna.load_study(study_name="shared", storage=url)
        except KeyError:
            time.sleep(0.3)
            continue
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            info = t.user_attrs.get(WORKER_KEY) or {}
            pid = int(info.get("pid") or 0)
            # a trial process is the launcher's child, or its fork server's (the server is the launcher's child)
            if pid and t.intermediate_values and parent in (_ppid(pid), _ppid(_ppid(pid) or 0)):
                os.kill(int(info["pid"]), signal.SIGKILL)
                if and_parent:
                    os.kill(parent, signal.SIGKILL)
                return {"number": t.number, "params": dict(t.params), "pid": int(info["pid"])}
        time.sleep(0.2)
    raise AssertionError(f"no trial of launcher {parent} reached its first validation in time")


@pytest.mark.slow
def test_two_machines_share_a_postgres_study_and_survive_sigkills(pg_url, tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base, search = tmp_path / "base.yaml", tmp_path / "search.yaml"
    base.write_text(yaml.safe_dump(BASE))
    search.write_text(yaml.safe_dump({"search": SEARCH}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
           "OPTKIT_TEST_STEP_SLEEP": "0.1"}

    def launcher(name: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "lightning_optkit.tuning", str(base), "--factory", FACTORY, "--search",
               str(search), "--monitor", "val_loss", "--trials", str(N_TRIALS), "--pruner", "none",
               "--max-epochs", "4", "--accelerator", "cpu", "--workers", "1", "--devices", "cpu",
               "--storage", pg_url, "--study", "shared", "--resume", "--heartbeat", "2", "--max-retries", "2",
               "--no-plots", "--no-tensorboard", "--out", str(tmp_path / name)]
        log = open(tmp_path / f"{name}.out", "w")  # noqa: SIM115 - closed with the process below
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

    a = launcher("a")
    deadline = time.monotonic() + 120
    while "shared" not in [s.study_name for s in optuna.get_all_study_summaries(pg_url)]:
        assert a.poll() is None, (tmp_path / "a.out").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.3)
    b = launcher("b")
    try:
        crashed = _kill_trial_of(a.pid, pg_url)                    # a trial process dies: A retries it at once
        machine = _kill_trial_of(b.pid, pg_url, and_parent=True)   # machine B dies: heartbeat, then retry
        assert a.wait(timeout=300) == 0, (tmp_path / "a.out").read_text()
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()
    study = optuna.load_study(study_name="shared", storage=pg_url)
    check_killed_trial_was_retried(study, crashed, N_TRIALS)
    check_killed_trial_was_retried(study, machine, N_TRIALS, by="heartbeat")
    launchers = {(t.user_attrs.get(WORKER_KEY) or {}).get("pid") for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(launchers) == N_TRIALS  # every trial in its own process

    outputs = [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".out", ".log", ".csv", ".yaml")]
    assert outputs and not any(PASSWORD in text for text in outputs)
    assert "***" in (tmp_path / "a.out").read_text()  # the URL is shown, redacted
