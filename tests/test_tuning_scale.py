"""The launcher: one process per trial, device slots, journal storage, crash recovery (real processes, real Optuna)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lightning_optkit import ConfigError
from lightning_optkit.tuning import tune
from lightning_optkit.tuning._pool._protocol import ATTEMPT_KEY, RETRY_OF_KEY, WORKER_KEY
from lightning_optkit.tuning._pool._slots import DeviceSlot, plan_slots

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tuning_scale_helpers, for this process and its workers

FACTORY = "tuning_scale_helpers.models:build"
SEARCH = {"optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True}}
BASE = {"optimizer": {"name": "adamw", "lr": 1e-2}}
QUIET = dict(plots=False, tensorboard=False, summary=False, progress=False, reeval=0)  # re-evaluation: its own tests


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- slots ---------------------------------------------------------------------------------------------------

def test_plan_slots_declared_list_and_cpu_shares():
    slots = plan_slots(None, devices="0,1,2,3", devices_per_trial=2)
    assert [s.devices for s in slots] == [("0", "1"), ("2", "3")]
    assert [s.env()["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0,1", "2,3"]
    assert [s.devices for s in plan_slots(3, devices=[5, 6, 7])] == [("5",), ("6",), ("7",)]
    cpu = plan_slots(2, devices="cpu", cpu_count=2)
    assert [(s.threads, s.env()["OMP_NUM_THREADS"], s.env()["CUDA_VISIBLE_DEVICES"]) for s in cpu] == [
        (1, "1", ""), (1, "1", "")]
    assert DeviceSlot(0, ("3",)).env()["OPTKIT_SLOT"] == "0"
    ddp_cpu = plan_slots(1, devices="cpu", devices_per_trial=2, cpu_count=2)  # DDP on CPU: 2 processes, 1 thread each
    assert [(s.processes, s.threads, s.size) for s in ddp_cpu] == [(2, 1, 2)]
    assert [s.size for s in slots] == [2, 2]


@pytest.mark.parametrize("kwargs, key", [
    (dict(workers=3, devices=[0, 1]), "workers"),
    (dict(workers=None, devices=[0, 1, 2], devices_per_trial=2), "devices_per_trial"),
    (dict(workers=0, devices="cpu"), "workers"),
    (dict(workers=1, devices=[0, 0]), "devices"),
    (dict(workers=1, devices=2), "devices"),
])
def test_plan_slots_errors_name_the_argument(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        plan_slots(**kwargs)


def test_workers_reject_what_a_process_cannot_rebuild(tmp_path):
    with pytest.raises(ConfigError, match="storage"):
        tune(FACTORY, SEARCH, config=BASE, monitor="val_loss", n_trials=1, workers=1, devices="cpu", storage="memory",
             trainer_kwargs={"max_epochs": 1}, out_dir=tmp_path, **QUIET)
    with pytest.raises(ConfigError, match="source"):
        tune(lambda optim: None, SEARCH, config=BASE, monitor="val_loss", n_trials=1, workers=1, devices="cpu",
             trainer_kwargs={"max_epochs": 1}, out_dir=tmp_path, **QUIET)


@pytest.mark.parametrize("fork_server", ["1", "0"], ids=["fork-server", "plain-processes"])
def test_each_trial_sees_only_its_device_slot(tmp_path, monkeypatch, fork_server):
    """4 trials on a declared list of 2 devices (on CPU): each trial process sees exactly its slot, never shared."""
    monkeypatch.setenv("OPTKIT_FORK_SERVER", fork_server)
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("OPTKIT_TEST_RECORD", str(record))
    study = tune(FACTORY, SEARCH, config=BASE, monitor="val_loss", n_trials=4, pruner="none", workers=2,
                 devices=["0", "1"], trainer_kwargs={"max_epochs": 1, "accelerator": "cpu"}, out_dir=tmp_path / "out",
                 **QUIET)
    assert (tmp_path / "out" / "optuna.journal.log").exists()  # several local workers: the journal backend
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4
    recs = {r["pid"]: r for r in _records(record)}
    assert len(recs) == 4  # one fresh process per trial
    for t in trials:
        info = t.user_attrs[WORKER_KEY]
        seen = recs[info["pid"]]["cuda"]
        assert seen == info["devices"] == ["0", "1"][info["slot"]]
    spans = sorted(recs.values(), key=lambda r: r["start"])
    for i, a in enumerate(spans):
        for b in spans[i + 1:]:
            if b["start"] < a["end"]:  # ran at the same time
                assert a["cuda"] != b["cuda"]
    assert {r["cuda"] for r in spans} == {"0", "1"}


@pytest.mark.slow
@pytest.mark.parametrize("devices, cuda", [(["0", "1"], "0,1"), ("cpu", "")], ids=["declared-pair", "cpu-processes"])
def test_a_trial_may_itself_run_ddp_on_its_slot(tmp_path, monkeypatch, devices, cuda):
    """devices_per_trial=2: each trial is a DDP job of 2 ranks (gloo on CPU) on its slot; rank 0 owns the trial."""
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("OPTKIT_TEST_RECORD", str(record))
    study = tune(FACTORY, SEARCH, config=BASE, monitor="val_loss", n_trials=2, pruner="none", workers=1,
                 devices=devices, devices_per_trial=2, trainer_kwargs={"max_epochs": 2, "accelerator": "cpu"},
                 out_dir=tmp_path / "out", **QUIET)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2 and len(study.trials) == 2
    recs = _records(record)
    assert len(recs) == 4  # two processes per trial
    for t in trials:
        info = t.user_attrs[WORKER_KEY]
        assert info["devices"] == cuda
        rank0 = next(r for r in recs if r["pid"] == info["pid"])  # the worker that asked for the trial is rank 0
        assert rank0["rank"] == 0 and rank0["world"] == 2
        ranks = [r for r in recs if r["lr"] == t.params["optimizer.lr"]]
        assert sorted(r["rank"] for r in ranks) == [0, 1]
        assert len({r["pid"] for r in ranks}) == 2 and all(r["cuda"] == cuda for r in ranks)
        assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the ranks in step
        # 64 points, batches of 8, split over 2 ranks: 4 steps an epoch, 2 epochs
        assert ranks[0]["steps"] == ranks[1]["steps"] == t.user_attrs["optkit.run"]["steps"] == 8
        if devices == "cpu":
            assert {r["threads"] for r in ranks} == {max(1, (os.cpu_count() or 1) // 2)}


def test_trainer_devices_that_contradict_devices_per_trial_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer_kwargs\.devices.*devices_per_trial=2"):
        tune(FACTORY, SEARCH, config=BASE, monitor="val_loss", n_trials=1, workers=1, devices="cpu",
             devices_per_trial=2, trainer_kwargs={"max_epochs": 1, "devices": 3}, out_dir=tmp_path, **QUIET)
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "optuna.journal.log").exists()


# -- crash recovery --------------------------------------------------------------------------------------------

def kill_one_trial_midway(load_study, deadline_s: float = 120.0) -> dict:
    """Wait for a RUNNING trial that has reported a validation, SIGKILL its process; returns what was killed."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            study = load_study()
        except Exception:
            time.sleep(0.2)
            continue
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            info = t.user_attrs.get(WORKER_KEY)
            if info and t.intermediate_values:
                os.kill(int(info["pid"]), signal.SIGKILL)
                return {"number": t.number, "params": dict(t.params), "pid": int(info["pid"])}
        time.sleep(0.1)
    raise AssertionError("no trial reached its first validation in time")


def check_killed_trial_was_retried(study: optuna.Study, killed: dict, n_trials: int, by: str = "launcher") -> None:
    """``by="launcher"``: the launcher saw its process die; ``"heartbeat"``: a stale heartbeat (Optuna's retry)."""
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == n_trials
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    dead = study.trials[killed["number"]]
    assert dead.state == TrialState.FAIL
    if by == "launcher":
        retries = [t for t in complete if t.user_attrs.get(RETRY_OF_KEY) == killed["number"]]
    else:
        retries = [t for t in complete if t.system_attrs.get("failed_trial") == killed["number"]]
    assert len(retries) == 1
    assert retries[0].params == killed["params"] == dead.params


@pytest.mark.slow
def test_journal_two_workers_trial_killed_is_failed_and_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTKIT_TEST_STEP_SLEEP", "0.1")  # 8 steps an epoch: ~0.8 s per epoch
    out = tmp_path / "out"
    journal = out / "optuna.journal.log"
    result: dict = {}

    def run():
        try:
            result["study"] = tune(FACTORY, SEARCH, config=BASE, monitor="val_loss", n_trials=4, pruner="none",
                                   workers=2, devices="cpu", study_name="crash", max_retries=1,
                                   trainer_kwargs={"max_epochs": 4, "accelerator": "cpu"}, out_dir=out, **QUIET)
        except BaseException as exc:  # pragma: no cover - reported below
            import traceback

            result["error"] = "".join(traceback.format_exception(exc))

    thread = threading.Thread(target=run)
    thread.start()

    def load():
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        if not journal.exists():
            raise FileNotFoundError(journal)
        return optuna.load_study(study_name="crash", storage=JournalStorage(JournalFileBackend(str(journal))))

    killed = kill_one_trial_midway(load)
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    study = result["study"]
    check_killed_trial_was_retried(study, killed, 4)
    retry = next(t for t in study.trials if t.user_attrs.get(RETRY_OF_KEY) == killed["number"])
    assert retry.user_attrs[ATTEMPT_KEY] == 2
    assert "died" in study.trials[killed["number"]].user_attrs["optkit.fail_reason"]

    # re-running resumes: nothing finished is lost, only the missing trials run
    again = tune(FACTORY, SEARCH, config=BASE, monitor="val_loss", n_trials=5, pruner="none", workers=2,
                 devices="cpu", study_name="crash", resume=True,
                 trainer_kwargs={"max_epochs": 1, "accelerator": "cpu"}, out_dir=out, **QUIET)
    assert len(again.get_trials(states=(TrialState.COMPLETE,))) == 5
    assert [t.params for t in again.trials[:len(study.trials)]] == [t.params for t in study.trials]


@pytest.mark.slow
def test_resume_fails_trials_left_running_by_a_dead_launcher(tmp_path):
    """A launcher killed with its trials: the journal keeps them RUNNING; the next run fails and retries them."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    out = tmp_path / "out"
    out.mkdir()
    storage = JournalStorage(JournalFileBackend(str(out / "optuna.journal.log")))
    study = optuna.create_study(study_name="zombie", storage=storage)
    dead = study.ask({"optimizer.lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)})
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that is gone
    storage.set_trial_user_attr(dead._trial_id, WORKER_KEY, {"token": "x", "host": socket.gethostname(),
                                                            "pid": proc.pid, "slot": 0, "devices": ""})
    from lightning_optkit.tuning._runner import TrialPlan
    from lightning_optkit.tuning._sources import FactorySource
    from lightning_optkit.tuning._space import SearchSpace

    plan = TrialPlan(FactorySource(FACTORY), SearchSpace.from_dict(SEARCH), BASE, ("val_loss",), ("minimize",),
                     {"max_epochs": 1, "accelerator": "cpu"}, 0, out)
    study.set_user_attr("optkit.plan", plan.describe())
    study.set_user_attr("optkit.monitor", ["val_loss"])
    resumed = tune(FACTORY, SEARCH, config=BASE, monitor="val_loss", n_trials=1, pruner="none", workers=1,
                   devices="cpu", study_name="zombie", resume=True, enqueue_base=False,
                   trainer_kwargs={"max_epochs": 1, "accelerator": "cpu"}, out_dir=out, **QUIET)
    assert resumed.trials[0].state == TrialState.FAIL
    assert resumed.trials[1].state == TrialState.COMPLETE
    assert resumed.trials[1].params == resumed.trials[0].params


def test_cli_scale_flags_map_to_tune_arguments():
    from lightning_optkit.tuning._cli import build_parser, tune_kwargs

    args = build_parser().parse_args(["--example", "digits", "--workers", "2", "--devices", "0,1",
                                      "--devices-per-trial", "1", "--max-retries", "3", "--heartbeat", "5",
                                      "--storage", "postgresql://u:pw@h/db", "--study", "s", "--resume"])
    kw = tune_kwargs(args)
    assert (kw["workers"], kw["devices"], kw["devices_per_trial"], kw["max_retries"], kw["heartbeat_interval"]) == (
        2, "0,1", 1, 3, 5)
    assert "devices" not in kw["trainer_kwargs"]  # with --workers, --devices is the pool the workers share
    assert tune_kwargs(build_parser().parse_args(["--example", "digits", "--recipe", "staged"]))["recipe"] == "staged"
    plain = tune_kwargs(build_parser().parse_args(["--example", "digits", "--devices", "2"]))
    assert plain["trainer_kwargs"]["devices"] == 2 and "workers" not in plain


def test_staged_recipe_narrows_lr_per_optimizer_with_a_range_test(tmp_path):
    """`recipe="staged"`: find_lr per candidate optimizer, its LR narrowed to /4..x4, one study over all of them."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        search = {"optimizer.name": {"choices": ["adamw", "sgd"]},
                  "optimizer.momentum": {"low": 0.0, "high": 0.99, "when": {"optimizer.name": "sgd"}},
                  "optimizer.lr": {"low": 1e-5, "high": 1.0, "log": True},
                  "optimizer.weight_decay": {"low": 1e-6, "high": 1e-2, "log": True}}
        study = tune(example="digits", search=search, recipe="staged", n_trials=5, trainer_kwargs={"max_epochs": 1},
                     out_dir=tmp_path, **QUIET)
    finally:
        torch.set_num_threads(saved)
    from optuna.storages import RDBStorage

    storage = RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == [study.study_name] == ["digits"]
    info = study.user_attrs["optkit.staged"]
    assert sorted(info) == ["adamw", "sgd"]
    for found in info.values():
        low, high = found["lr_range"]
        assert 1e-5 <= low < found["recommended_lr"] <= high <= 1.0
        assert high / low <= 16 * (1 + 1e-9)
        assert 0 < found["range_test_steps"] <= 100  # find_lr's default num_steps (fewer when the loss diverges)
    assert info["sgd"]["recommended_lr"] > info["adamw"]["recommended_lr"]
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) == 5
    # the first trials: the base config with each optimizer at its recommended LR (SGD's momentum: torch's default)
    first = [t.user_attrs["optkit.config"]["optimizer"] for t in study.trials[:2]]
    assert [(o["name"], o["lr"]) for o in first] == [(n, info[n]["recommended_lr"]) for n in ("adamw", "sgd")]
    assert first[1]["momentum"] == 0
    for t in study.trials:
        name = t.params["optimizer.name"]
        low, high = info[name]["lr_range"]
        assert set(k for k in t.params if k.startswith("optimizer.lr")) == {f"optimizer.lr@{name}"}
        assert low <= t.params[f"optimizer.lr@{name}"] == t.user_attrs["optkit.config"]["optimizer"]["lr"] <= high
        assert t.user_attrs["optkit.config"]["optimizer"]["name"] == name
    best_yaml = (tmp_path / "digits" / "best_config.yaml").read_text()
    assert f"lr: {study.best_trial.user_attrs['optkit.config']['optimizer']['lr']}" in best_yaml
    with pytest.raises(ConfigError, match="recipe"):
        tune(example="digits", recipe="nope", out_dir=tmp_path)


def test_staged_keeps_a_user_range_that_the_recommendation_misses(tmp_path, capsys):
    search = {"optimizer.lr": {"low": 1e-6, "high": 1e-5, "log": True}}  # far below any useful AdamW LR
    study = tune(example="digits", search=search, recipe="staged", n_trials=2, trainer_kwargs={"max_epochs": 1},
                 out_dir=tmp_path, plots=False, tensorboard=False, summary=False)
    info = study.user_attrs["optkit.staged"]["adamw"]
    assert info["lr_range"] == [1e-6, 1e-5] and info["recommended_lr"] == 1e-5
    assert "lies outside your optimizer.lr range" in capsys.readouterr().out
    assert study.trials[0].params == {"optimizer.lr": 1e-5}
    assert all(1e-6 <= t.params["optimizer.lr"] <= 1e-5 for t in study.trials)


def test_staged_candidates_start_from_the_optimizer_defaults_inside_the_searched_range():
    from lightning_optkit.tuning import SearchSpace
    from lightning_optkit.tuning._staged import _candidate_config

    space = SearchSpace.from_dict({"optimizer.name": {"choices": ["adamw", "sgd"]},
                                   "optimizer.momentum": {"low": 0.8, "high": 0.98, "when": {"optimizer.name": "sgd"}},
                                   "optimizer.nesterov": {"choices": [True, False], "when": {"optimizer.name": "sgd"}},
                                   "optimizer.lr": {"low": 1e-4, "high": 1.0, "log": True}})
    base = {"optimizer": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.95]}}
    params = list(space.params.values())
    sgd = _candidate_config(base, "sgd", params)["optimizer"]
    assert sgd["name"] == "sgd" and sgd["lr"] == 1e-3 and "betas" not in sgd  # AdamW's betas do not fit SGD
    assert sgd["momentum"] == 0.8 and sgd["nesterov"] is False  # torch's 0 moved into [0.8, 0.98]
    assert _candidate_config(base, "adamw", params)["optimizer"] == base["optimizer"]


def test_a_trial_that_raises_in_its_process_stops_the_study_with_its_error(tmp_path):
    from lightning_optkit.tuning._pool._launcher import TrialProcessError

    with pytest.raises(TrialProcessError, match="val_missing") as info:
        tune(FACTORY, SEARCH, config=BASE, monitor="val_missing", direction="minimize", n_trials=3, workers=1,
             devices="cpu", trainer_kwargs={"max_epochs": 1, "accelerator": "cpu"}, out_dir=tmp_path, **QUIET)
    assert "trial 0 failed" in str(info.value)
    study = optuna.load_study(study_name="models", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.FAIL]  # not retried: the error is the trial's, not a crash


def test_efficiency_benchmark_budgets_studies_and_measures_truth_like_a_trial(load_benchmark, tmp_path):
    """benchmarks/tuning_efficiency.py on a real study: the test split is apart, a study stops at its step
    budget, truncation counts the range tests first, the product's re-evaluation runs on a prefix, and a
    re-training with the study's seed gives the trial's own value (so the truth is measured as trials train)."""
    bench = load_benchmark("tuning_efficiency")
    task = bench.TASKS["moons"]
    data = task.data()
    rows = {tuple(r) for r in data.x_train.tolist()} | {tuple(r) for r in data.x_val.tolist()}
    assert not rows & {tuple(r) for r in data.x_test.tolist()}  # no study ever sees a test point

    search = bench.Search(trials=[], steps=[10, 5, 10], extra=7, attrs={}, seconds=0.0)
    assert (search.fit(22), search.used(2), search.fit(21), search.fit(6), search.fit(100)) == (2, 22, 1, 0, 3)

    st = bench.Settings(trials=3, seeds=1, retrain_seeds=1, reeval=1, reeval_seeds=1, cap=4.0, tasks=("moons",))
    budget = st.trials * task.steps_per_trial()
    found = bench.run_search(task, "tpe+hb", 0, st, tmp_path)
    assert sum(found.steps[:-1]) < budget <= sum(found.steps)  # stopped by the budget, after the crossing trial
    assert len(found.trials) < st.cap * st.trials

    best = bench.search_best(task, found.trials)
    chosen, reported, record = bench.reeval_prefix(task, found, len(found.trials), 0, st, tmp_path, {})
    assert chosen.number == best.number  # K = 1: the best search trial is the one re-evaluated
    (run,) = record["runs"][str(best.number)].values()
    assert reported == pytest.approx((best.value + run["value"]) / 2)

    retrain = bench.Retrainer()
    val, test = retrain(task, best.user_attrs["optkit.config"], 0)
    assert val == pytest.approx(best.value, abs=1e-6) and 0.0 <= test <= 1.0
    assert retrain(task, best.user_attrs["optkit.config"], 0) == (val, test) and retrain.runs == 1  # cached
