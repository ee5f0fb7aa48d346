"""A study's budget, its first start and its last trials, with several launchers at once (real processes).

PostgreSQL tests run a REAL server on loopback (each test on its own empty database); the journal
tests share one journal file between launchers on this machine. Launchers are `optkit tune`
processes (`python -m lightning_optkit.tuning`) that play separate machines: same command, same
`--storage`, `--study NAME --resume`.
"""

from __future__ import annotations

import os
import re
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
from test_tuning_scale import BASE, FACTORY, SEARCH  # noqa: E402
from tuning_scale_helpers.postgres import create_database, postgres_server  # noqa: E402

from lightning_optkit.tuning._pool._protocol import ATTEMPT_KEY, RETRY_OF_KEY, WORKER_KEY  # noqa: E402

HELD = (TrialState.COMPLETE, TrialState.PRUNED)
RAN = re.compile(r"this run finished (\d+) of them")


@pytest.fixture(scope="module")
def pg_server():
    with postgres_server() as url:
        yield url


def _files(tmp_path: Path) -> tuple[Path, Path]:
    base, search = tmp_path / "base.yaml", tmp_path / "search.yaml"
    base.write_text(yaml.safe_dump(BASE))
    search.write_text(yaml.safe_dump({"search": SEARCH}))
    return base, search


def launcher(tmp_path: Path, storage: str, name: str, *, trials: int, workers: int | None = 1, epochs: int = 2,
             sleep: float = 0.05, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """An `optkit tune` process on the shared study `shared` (its output in tmp_path/NAME.out);
    ``workers=None``: every trial in the process itself (no ``--workers``)."""
    base, search = _files(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
           "OPTKIT_TEST_STEP_SLEEP": str(sleep)}
    cmd = [sys.executable, "-m", "lightning_optkit.tuning", str(base), "--factory", FACTORY, "--search", str(search),
           "--monitor", "val_loss", "--trials", str(trials), "--pruner", "none", "--max-epochs", str(epochs),
           "--accelerator", "cpu", *(() if workers is None else ("--workers", str(workers), "--devices", "cpu")),
           "--storage", storage,
           "--study", "shared", "--resume", "--no-plots", "--no-tensorboard", "--out", str(tmp_path / name), *extra]
    log = open(tmp_path / f"{name}.out", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_all(procs: list[subprocess.Popen], tmp_path: Path, names: list[str], timeout: float = 300) -> list[str]:
    """Wait for every launcher; each must exit 0. Returns their outputs."""
    end = time.monotonic() + timeout
    try:
        for p, name in zip(procs, names):
            rc = p.wait(timeout=max(end - time.monotonic(), 1))
            assert rc == 0, (tmp_path / f"{name}.out").read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(tmp_path / f"{name}.out").read_text() for name in names]


def check_budget(study: optuna.Study, n_trials: int, outputs: list[str]) -> None:
    """Exactly ``n_trials`` finished trials, none left running or waiting, and the runs' own counts add up."""
    assert len(study.get_trials(states=HELD)) == n_trials
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    ran = [int(RAN.search(out).group(1)) for out in outputs]
    assert sum(ran) == n_trials, outputs
    assert all(f"the study holds {n_trials} finished trials" in out for out in outputs)
    base_trials = [t for t in study.trials if t.user_attrs.get("optkit.enqueued") == "base config"]
    assert len(base_trials) == 1  # the first trials are enqueued once, by whichever process created the study


# -- 1. a budget that holds -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_launchers_of_two_workers_share_one_budget_on_postgres(pg_server, tmp_path):
    url = create_database(pg_server, "budget2x2")
    names = ["a", "b"]
    procs = [launcher(tmp_path, url, n, trials=8, workers=2) for n in names]
    outputs = wait_all(procs, tmp_path, names)
    check_budget(optuna.load_study(study_name="shared", storage=url), 8, outputs)


@pytest.mark.slow
def test_two_launchers_share_one_budget_on_a_journal_file(tmp_path):
    journal = f"journal:{tmp_path / 'shared.journal.log'}"
    names = ["a", "b"]
    procs = [launcher(tmp_path, journal, n, trials=8, workers=2) for n in names]
    outputs = wait_all(procs, tmp_path, names)
    from lightning_optkit.tuning._storage import resolve_storage

    store, _ = resolve_storage(journal, tmp_path)
    check_budget(optuna.load_study(study_name="shared", storage=store), 8, outputs)


def test_two_in_process_runs_share_one_budget_on_sqlite(tmp_path):
    """Two `optkit tune --resume --trials 6` without --workers on one SQLite file: each trial is claimed."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    names = ["a", "b"]
    procs = [launcher(tmp_path, url, n, trials=6, workers=None, epochs=1) for n in names]
    outputs = wait_all(procs, tmp_path, names)
    check_budget(optuna.load_study(study_name="shared", storage=url), 6, outputs)


def test_an_in_process_run_claims_no_place_held_by_a_trial_running_elsewhere(tmp_path):
    """The study's only place is held by a RUNNING trial of another (live) process: this run starts none."""
    from lightning_optkit.tuning._budget import process_record

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    study = optuna.create_study(study_name="shared", storage=url, direction="minimize")
    elsewhere = study.ask()
    elsewhere.set_user_attr(WORKER_KEY, process_record(slot="test"))  # this test process: alive
    proc = launcher(tmp_path, url, "a", trials=1, workers=None, epochs=1)
    out = wait_all([proc], tmp_path, ["a"])[0]
    assert RAN.search(out).group(1) == "0", out
    assert len(optuna.load_study(study_name="shared", storage=url).get_trials(states=HELD)) == 0


# -- 2. safe concurrent start -----------------------------------------------------------------------------------

OPEN_AT_ONCE = """
import os, sys, time
from lightning_optkit.tuning import make_pruner, make_sampler
from lightning_optkit.tuning._storage import resolve_storage
from lightning_optkit.tuning._study import open_study
url, folder, me = sys.argv[1], sys.argv[2], sys.argv[3]
open(os.path.join(folder, "ready-" + me), "w").close()
while not os.path.exists(os.path.join(folder, "go")):  # released together, once every process has imported
    time.sleep(0.001)
store, display = resolve_storage(url, folder)
study, _ = open_study(store, display, "shared", ["minimize"], make_sampler("random"), make_pruner("none"),
                      resume=True, attrs={"optkit.monitor": ["val_loss"]},
                      first_trials=[({"x": 1.0}, {"optkit.enqueued": "base config"})])
print("opened", study.study_name)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgres", "journal"])
def test_many_processes_open_one_study_on_an_empty_storage_at_the_same_instant(pg_server, tmp_path, backend):
    """6 processes released at one instant: one schema, one study, its first trial enqueued once; none fails."""
    url = create_database(pg_server, "atonce") if backend == "postgres" else f"journal:{tmp_path / 'j.log'}"
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    n = 6
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, url, str(tmp_path), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(n)]
    end = time.monotonic() + 180
    while len(list(tmp_path.glob("ready-*"))) < n and time.monotonic() < end:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outputs)
    assert all("opened shared" in out for out in outputs)
    from lightning_optkit.tuning._storage import resolve_storage

    store, _ = resolve_storage(url, tmp_path)
    assert [s.study_name for s in optuna.get_all_study_summaries(store)] == ["shared"]
    study = optuna.load_study(study_name="shared", storage=store)
    assert [t.state for t in study.trials] == [TrialState.WAITING]


@pytest.mark.slow
def test_four_launchers_started_at_once_on_an_empty_postgres_database(pg_server, tmp_path):
    url = create_database(pg_server, "four")
    names = ["a", "b", "c", "d"]
    procs = [launcher(tmp_path, url, n, trials=4, workers=1, epochs=1, sleep=0.0) for n in names]
    outputs = wait_all(procs, tmp_path, names)
    check_budget(optuna.load_study(study_name="shared", storage=url), 4, outputs)


# -- 3. no trial left RUNNING by a dead process ---------------------------------------------------------------

def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def kill_launcher_and_its_trial(proc: subprocess.Popen, load, min_finished: int = 0, deadline_s: float = 180) -> dict:
    """SIGKILL a launcher and its running trial's process (a machine dies) once that trial reported a validation."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        assert proc.poll() is None, "the launcher ended before its trial could be killed"
        try:
            study = load()
        except Exception:  # not created yet
            time.sleep(0.2)
            continue
        finished = len(study.get_trials(deepcopy=False, states=HELD))
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = int((t.user_attrs.get(WORKER_KEY) or {}).get("pid") or 0)
            # the launcher's trial process: its child, or its fork server's (the server is the launcher's child)
            if pid and t.intermediate_values and finished >= min_finished and proc.pid in (_ppid(pid),
                                                                                            _ppid(_ppid(pid) or 0)):
                os.kill(proc.pid, signal.SIGKILL)  # the launcher first: it must not see its trial die
                os.kill(pid, signal.SIGKILL)
                proc.wait()
                return {"number": t.number, "params": dict(t.params), "trial_id": t._trial_id, "finished": finished}
        time.sleep(0.1)
    raise AssertionError("no trial reached its first validation in time")


def _on_another_machine(url: str, killed: dict) -> None:
    """Make the killed trial's record say it ran on another machine: only its heartbeat can tell it is dead."""
    storage = optuna.storages.RDBStorage(url)
    info = dict(storage.get_trial(killed["trial_id"]).user_attrs[WORKER_KEY])
    storage.set_trial_user_attr(killed["trial_id"], WORKER_KEY, {**info, "host": "another-machine"})


@pytest.mark.slow
def test_a_dead_machines_trial_is_failed_and_retried_before_the_final_command_returns(pg_server, tmp_path):
    url = create_database(pg_server, "zombie_retry")
    hb = ("--heartbeat", "1", "--max-retries", "2")
    b = launcher(tmp_path, url, "b", trials=4, epochs=4, sleep=0.1, extra=hb)
    killed = kill_launcher_and_its_trial(b, lambda: optuna.load_study(study_name="shared", storage=url))
    _on_another_machine(url, killed)
    (out,) = wait_all([launcher(tmp_path, url, "a", trials=4, epochs=1, sleep=0.0, extra=hb)], tmp_path, ["a"])
    study = optuna.load_study(study_name="shared", storage=url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert study.trials[killed["number"]].state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed["number"]]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == killed["params"]


@pytest.mark.slow
def test_a_final_command_with_the_budget_spent_fails_a_dead_machines_trial(pg_server, tmp_path):
    """The study already holds --trials finished trials, and a dead machine's trial is still RUNNING."""
    url = create_database(pg_server, "zombie_spent")
    hb = ("--heartbeat", "1")
    b = launcher(tmp_path, url, "b", trials=6, epochs=4, sleep=0.1, extra=hb)
    killed = kill_launcher_and_its_trial(b, lambda: optuna.load_study(study_name="shared", storage=url),
                                         min_finished=1)
    _on_another_machine(url, killed)
    trials = killed["finished"]
    (out,) = wait_all([launcher(tmp_path, url, "a", trials=trials, extra=hb)], tmp_path, ["a"])
    study = optuna.load_study(study_name="shared", storage=url)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    dead = study.trials[killed["number"]]
    assert dead.state == TrialState.FAIL and "budget" in dead.user_attrs["optkit.fail_reason"]
    assert f"trial {killed['number']} (host another-machine" in out and "not retried" in out
    assert len(study.get_trials(states=HELD)) == trials


@pytest.mark.slow
def test_journal_a_launcher_killed_with_its_trial_is_failed_and_retried_by_the_other(tmp_path):
    """Two launchers on one journal file; one dies with its trial: the other fails it (its liveness record: a
    process that is gone on this machine), retries it with the same parameters and ends with the full budget."""
    journal = f"journal:{tmp_path / 'shared.journal.log'}"
    from lightning_optkit.tuning._storage import resolve_storage

    a = launcher(tmp_path, journal, "a", trials=4, epochs=3, sleep=0.1)
    b = launcher(tmp_path, journal, "b", trials=4, epochs=3, sleep=0.1)

    def load():
        return optuna.load_study(study_name="shared", storage=resolve_storage(journal, tmp_path)[0])

    try:
        killed = kill_launcher_and_its_trial(b, load)
    except BaseException:
        a.kill()
        raise
    wait_all([a], tmp_path, ["a"], timeout=240)
    study = load()
    assert len(study.get_trials(states=HELD)) == 4
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    dead = study.trials[killed["number"]]
    assert dead.state == TrialState.FAIL and "was gone" in dead.user_attrs["optkit.fail_reason"]
    retry = next(t for t in study.trials if t.user_attrs.get(RETRY_OF_KEY) == killed["number"])
    assert retry.state == TrialState.COMPLETE and retry.params == killed["params"] and retry.user_attrs[ATTEMPT_KEY] == 2


# -- 4. drivers -----------------------------------------------------------------------------------------------

def _as(url: str, scheme: str) -> str:
    return scheme + "://" + url.split("://", 1)[1]


def test_each_postgres_url_form_opens_the_storage_with_its_driver(pg_server, tmp_path):
    """`postgresql://` (what Optuna's docs and users write), `+psycopg` and `+psycopg2` all open a real server."""
    from lightning_optkit.tuning._storage import resolve_storage

    url = create_database(pg_server, "drivers")
    for scheme, module in [("postgresql+psycopg", "psycopg"), ("postgresql+psycopg2", "psycopg2"),
                           ("postgresql", None)]:
        store, display = resolve_storage(_as(url, scheme), tmp_path)
        assert display.startswith(scheme + "://tuner:***@")
        if module is not None:
            assert store.engine.dialect.driver == module
        optuna.create_study(storage=store, study_name=scheme)
    assert sorted(s.study_name for s in optuna.get_all_study_summaries(url)) == [
        "postgresql", "postgresql+psycopg", "postgresql+psycopg2"]


def test_a_plain_postgresql_url_runs_a_study(pg_server, tmp_path):
    from lightning_optkit.tuning import tune

    url = _as(create_database(pg_server, "plain"), "postgresql")
    study = tune(FACTORY, SEARCH, config=BASE, monitor="val_loss", n_trials=2, pruner="none", storage=url,
                 study_name="plain", trainer_kwargs={"max_epochs": 1, "accelerator": "cpu"}, out_dir=tmp_path,
                 plots=False, tensorboard=False, summary=False, progress=False)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    assert optuna.load_study(study_name="plain", storage=url).best_value == study.best_value


BLOCKED_DRIVER = """
import sys
sys.modules["psycopg"] = None  # as if psycopg 3 were not installed
from lightning_optkit import ConfigError
from lightning_optkit.tuning._storage import resolve_storage
try:
    resolve_storage(sys.argv[1], sys.argv[2])
except ConfigError as err:
    print(err)
"""


def test_a_missing_driver_is_a_config_error_that_names_the_package(pg_server, tmp_path):
    from lightning_optkit import ConfigError
    from lightning_optkit.tuning._storage import resolve_storage

    url = create_database(pg_server, "nodriver")
    with pytest.raises(ConfigError, match=r"storage.*'pg8000' driver.*pip install pg8000") as info:
        resolve_storage(_as(url, "postgresql+pg8000"), tmp_path)
    assert "pw-Secret-42" not in str(info.value)
    # SQLAlchemy 2.1 reads postgresql:// as psycopg 3: without it, the error says what to install
    out = subprocess.run([sys.executable, "-c", BLOCKED_DRIVER, _as(url, "postgresql"), str(tmp_path)],
                         env={**os.environ, "PYTHONPATH": str(TESTS.parent)}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "storage" in out.stdout and "'psycopg' driver" in out.stdout
    assert "pip install 'psycopg[binary]'" in out.stdout and "lightning-optkit[postgres]" in out.stdout
    assert "pw-Secret-42" not in out.stdout


# -- --study-timeout ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [None, 1], ids=["in-process", "launcher"])
def test_study_timeout_counts_from_the_studys_creation(tmp_path, workers, capsys):
    from lightning_optkit import ConfigError
    from lightning_optkit.tuning import tune
    from lightning_optkit.tuning._budget import STARTED_AT_KEY

    common = dict(config=BASE, monitor="val_loss", pruner="none", study_name="timed", out_dir=tmp_path,
                  trainer_kwargs={"max_epochs": 1, "accelerator": "cpu"}, plots=False, tensorboard=False,
                  progress=False, workers=workers, devices="cpu" if workers else None)
    first = tune(FACTORY, SEARCH, n_trials=1, study_timeout=600, **common)
    created = first.user_attrs[STARTED_AT_KEY]
    assert abs(created - time.time()) < 120
    time.sleep(1.0)
    again = tune(FACTORY, SEARCH, n_trials=5, study_timeout=0.5, resume=True, **common)  # its deadline has passed
    assert len(again.trials) == 1 and again.user_attrs[STARTED_AT_KEY] == created
    assert "this run finished 0 of them" in capsys.readouterr().out
    more = tune(FACTORY, SEARCH, n_trials=2, study_timeout=600, resume=True, **common)
    assert len(more.get_trials(states=HELD)) == 2
    with pytest.raises(ConfigError, match="study_timeout"):
        tune(FACTORY, SEARCH, n_trials=2, study_timeout=0, resume=True, **common)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_lock_taken_through_a_studys_own_storage_excludes_a_second_holder(backend, pg_server, tmp_path):
    # Optuna wraps an RDBStorage in a caching layer (study._storage has no engine of its own): the claim
    # and re-evaluation locks are taken through that wrapper and must still lock the database.
    import threading
    import time

    import optuna

    from lightning_optkit.tuning._budget import storage_lock

    url = create_database(pg_server, "lockwrap") if backend == "postgres" else f"sqlite:///{tmp_path / 'o.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    first = optuna.create_study(storage=url, study_name="s")
    second = optuna.load_study(storage=optuna.storages.RDBStorage(url), study_name="s")
    events: list[tuple[str, float]] = []
    held = threading.Event()

    def hold() -> None:
        with storage_lock(first._storage, "claim:s"):
            events.append(("first in", time.monotonic()))
            held.set()
            time.sleep(0.5)
            events.append(("first out", time.monotonic()))

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(30)
    with storage_lock(second._storage, "claim:s"):
        events.append(("second in", time.monotonic()))
    thread.join()
    assert [name for name, _ in events] == ["first in", "first out", "second in"]
