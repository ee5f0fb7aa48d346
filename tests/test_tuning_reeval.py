"""Re-evaluation of the top configs after a search (issue 15, item 5): real Optuna studies, real Trainers.

The task (tests/tuning_reeval_helpers.py) makes the search-time best a lucky draw: the ``noisy``
config scores ``z(seed)``, the ``stable`` one a constant set between the noisy config's search-time
value and its mean over the search seed and the two re-evaluation seeds. The search must rank noisy
first and re-evaluation must choose stable.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from lightning_optkit import ConfigError
from lightning_optkit.tuning import best_by_reeval, fit_run, tune
from lightning_optkit.tuning._cli import add_parser, tune_kwargs
from lightning_optkit.tuning._reeval import REEVAL_KEY, reeval_seeds, top_trials
from lightning_optkit.tuning._sources import ClassSource

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers, here and in worker processes
from tuning_reeval_helpers import OPTIM, noisy_score

MODEL, DATA = "tuning_reeval_helpers.SeedNoise", "tuning_reeval_helpers.Zeros"
SEARCH = {"model.variant": {"choices": ["noisy", "stable"]}}
RUN = {"monitor": "val_score", "direction": "maximize", "n_trials": 2, "enqueue_base": False, "plots": False,
       "tensorboard": False, "trainer_kwargs": {"max_epochs": 1, "accelerator": "cpu", "devices": 1}}


def _case() -> tuple[float, float, list[float]]:
    """``(sign, stable score, the noisy config's scores at seeds 0, 1000, 2000)``: search-best != mean-best."""
    seeds = [0, *reeval_seeds(0, 2)]
    z = [noisy_score(s) for s in seeds]
    sign = 1.0 if z[0] > statistics.fmean(z) else -1.0
    noisy = [sign * v for v in z]
    return sign, (noisy[0] + statistics.fmean(noisy)) / 2, noisy


def _source(sign: float, stable: float) -> ClassSource:
    return ClassSource(MODEL, DATA, model_args={"sign": sign, "stable_score": stable})


def _sampler() -> optuna.samplers.BaseSampler:
    return optuna.samplers.GridSampler({"model.variant": ["noisy", "stable"]}, seed=0)


def _by_variant(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    return {t.params["model.variant"]: t for t in study.trials}


def test_seeds_are_derived_from_the_study_seed_and_never_equal_it():
    assert reeval_seeds(0, 2) == [1000, 2000] and reeval_seeds(0, 2) == reeval_seeds(0, 2)
    for seed in (0, 5, 2**32 - 1000, 2**32 - 1):
        new = reeval_seeds(seed, 3)
        assert seed not in new and len(set(new)) == 3 and all(0 <= s < 2**32 for s in new)


def test_top_configs_are_chosen_by_the_mean_and_reported(tmp_path, capsys):
    sign, stable, noisy = _case()
    study = tune(_source(sign, stable), SEARCH, config=OPTIM, sampler=_sampler(), out_dir=tmp_path, **RUN)
    trials = _by_variant(study)
    assert study.best_trial.number == trials["noisy"].number  # the search ranks the lucky draw first
    assert trials["noisy"].value == pytest.approx(noisy[0])
    assert len(study.trials) == 2  # re-evaluation runs are no trials: the sampler never sees them
    assert best_by_reeval(study).number == trials["stable"].number
    record = study.user_attrs[REEVAL_KEY]
    assert record["seeds"] == [1000, 2000]
    runs = record["runs"]
    assert [runs[str(trials["noisy"].number)][str(s)]["value"] for s in (1000, 2000)] == pytest.approx(noisy[1:])
    assert [runs[str(trials["stable"].number)][str(s)]["value"] for s in (1000, 2000)] == pytest.approx([stable] * 2)

    out = capsys.readouterr().out
    assert "re-evaluation: top 2 configs x 2 new seeds (1000, 2000)" in out
    assert "cost: 4 runs, 4 optimizer steps = 200% of the search's 2" in out
    assert (f"best trial {trials['stable'].number}: val_score = {stable:.4f} ± 0.0000 (mean of 3 runs: seeds 0, "
            f"1000, 2000; search-time {stable:.4f})") in out

    best = tmp_path / study.study_name / "best_config.yaml"
    text = best.read_text()
    data = yaml.safe_load(text)
    assert data["run"]["model"] == {"variant": "stable"}
    block = data["reeval"]
    assert block["mean"] == pytest.approx(stable) and block["sd"] == pytest.approx(0.0, abs=1e-6)
    assert block["runs"] == 3 and block["seeds"] == [0, 1000, 2000]
    assert block["search_value"] == pytest.approx(stable)
    noisy_row = next(c for c in block["candidates"] if c["trial"] == trials["noisy"].number)
    assert noisy_row["mean"] == pytest.approx(statistics.fmean(noisy), abs=1e-5)
    assert noisy_row["sd"] == pytest.approx(statistics.stdev(noisy), abs=1e-5)
    assert noisy_row["search_value"] == pytest.approx(noisy[0], abs=1e-5)
    assert block["cost"]["optimizer_steps"] == 4 and block["cost"]["search_optimizer_steps"] == 2
    assert "# Chosen by re-evaluation of the top 2 configs" in text
    # `optkit fit best_config.yaml` trains the chosen config (with the search seed)
    trainer = fit_run(best, log_dir=tmp_path / "refit")
    assert float(trainer.callback_metrics["val_score"]) == pytest.approx(stable)

    # a rerun of the command redoes no finished re-evaluation
    again = tune(_source(sign, stable), SEARCH, config=OPTIM, sampler=_sampler(), out_dir=tmp_path,
                 study_name=study.study_name, resume=True, progress=True, **RUN)
    captured = capsys.readouterr()
    assert "re-evaluating" not in captured.err and "re-evaluation: trial" not in captured.err
    assert again.user_attrs[REEVAL_KEY] == record
    assert len(again.trials) == 2
    assert f"best trial {trials['stable'].number}: val_score" in captured.out
    # turned off on a later run: the search-time best again, everywhere; the recorded runs are kept
    off = tune(_source(sign, stable), SEARCH, config=OPTIM, sampler=_sampler(), out_dir=tmp_path,
               study_name=study.study_name, resume=True, reeval=0, **RUN)
    assert best_by_reeval(off).number == trials["noisy"].number
    assert yaml.safe_load(best.read_text())["run"]["model"] == {"variant": "noisy"}
    assert off.user_attrs[REEVAL_KEY]["runs"] == record["runs"]


def test_zero_turns_it_off_and_the_flags(tmp_path, capsys):
    sign, stable, _ = _case()
    for k, r in ((0, 2), (3, 0)):
        study = tune(_source(sign, stable), SEARCH, config=OPTIM, sampler=_sampler(), out_dir=tmp_path / f"{k}{r}",
                     reeval=k, reeval_seeds=r, **RUN)
        assert REEVAL_KEY not in study.user_attrs
        assert best_by_reeval(study).number == study.best_trial.number
        data = yaml.safe_load((tmp_path / f"{k}{r}" / study.study_name / "best_config.yaml").read_text())
        assert "reeval" not in data and data["run"]["model"] == {"variant": "noisy"}  # the search-time best
        out = capsys.readouterr().out
        assert "re-evaluation" not in out and f"best trial {study.best_trial.number}: val_score = " in out
    with pytest.raises(ConfigError, match=r"reeval_seeds.*-1.*integer >= 0"):
        tune(_source(sign, stable), SEARCH, config=OPTIM, reeval_seeds=-1, out_dir=tmp_path / "bad", **RUN)
    with pytest.raises(ConfigError, match=r"reeval.*'3'.*integer >= 0"):
        tune(_source(sign, stable), SEARCH, config=OPTIM, reeval="3", out_dir=tmp_path / "bad", **RUN)

    parser = add_parser(argparse.ArgumentParser(prog="optkit").add_subparsers())
    kwargs = tune_kwargs(parser.parse_args(["--example", "digits", "--reeval", "1", "--reeval-seeds", "4"]))
    assert (kwargs["reeval"], kwargs["reeval_seeds"]) == (1, 4)
    defaults = tune_kwargs(parser.parse_args(["--example", "digits"]))
    assert (defaults["reeval"], defaults["reeval_seeds"]) == (3, 2)
    with pytest.raises(SystemExit):
        parser.parse_args(["--example", "digits", "--reeval", "-1"])
    assert "--reeval: expected an integer >= 0, got '-1'" in capsys.readouterr().err


def test_workers_reevaluate_in_the_launcher(tmp_path, capsys):
    sign, stable, noisy = _case()
    study = tune(_source(sign, stable), SEARCH, config=OPTIM, sampler=_sampler(), out_dir=tmp_path, workers=2,
                 devices="cpu", **RUN)
    trials = _by_variant(study)
    runs = study.user_attrs[REEVAL_KEY]["runs"]
    assert [runs[str(trials["noisy"].number)][str(s)]["value"] for s in (1000, 2000)] == pytest.approx(noisy[1:])
    assert runs[str(trials["stable"].number)]["2000"]["value"] == pytest.approx(stable)
    assert len(study.trials) == 2
    data = yaml.safe_load((tmp_path / study.study_name / "best_config.yaml").read_text())
    assert data["run"]["model"] == {"variant": "stable"} and data["reeval"]["runs"] == 3
    assert not list((tmp_path / study.study_name / "workers").glob("reeval_*.json"))  # results read and removed
    assert f"best trial {trials['stable'].number}: val_score = {stable:.4f} ± 0.0000" in capsys.readouterr().out


def test_two_processes_on_one_study_reevaluate_each_run_once(tmp_path):
    """Two `optkit tune --study S --resume` processes on one journal file: each re-evaluation run happens once."""
    import json
    import os
    import re
    import subprocess

    sign, stable, _ = _case()
    base, search = tmp_path / "base.yaml", tmp_path / "search.yaml"
    base.write_text(yaml.safe_dump(OPTIM))
    search.write_text(yaml.safe_dump({"search": SEARCH}))
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])}
    storage = tmp_path / "shared.log"
    cmd = [sys.executable, "-m", "lightning_optkit.tuning", str(base), "--model", MODEL, "--data", DATA,
           "--model-args", json.dumps({"sign": sign, "stable_score": stable}), "--search", str(search),
           "--monitor", "val_score", "--direction", "maximize", "--trials", "4", "--sampler", "random", "--no-base",
           "--max-epochs", "1", "--accelerator", "cpu", "--storage", str(storage), "--study", "shared", "--resume",
           "--no-plots", "--no-tensorboard"]
    procs = [subprocess.Popen([*cmd, "--out", str(tmp_path / f"out{i}")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    done = [m for out in outputs for m in re.findall(r"re-evaluation: trial (\d+) seed (\d+)", out)]
    assert len(done) == len(set(done))  # no run twice
    study = optuna.load_study(study_name="shared", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage))))
    runs = study.user_attrs[REEVAL_KEY]["runs"]
    assert sorted(done) == sorted((n, s) for n, by_seed in runs.items() for s in by_seed)
    assert set(done) == {(str(t.number), s) for t in top_trials(study, 3) for s in ("1000", "2000")}
    assert len(study.trials) == 4


def test_reevaluation_stops_at_the_timeout_and_says_so(tmp_path, capsys):
    """A resumed study whose search is done, with a tiny ``timeout``: no re-evaluation run starts, the summary
    says it was cut by the timeout, and the best config stays the search-time best until a rerun finishes it."""
    sign, stable, _ = _case()
    study = tune(_source(sign, stable), SEARCH, config=OPTIM, sampler=_sampler(), out_dir=tmp_path, reeval=0, **RUN)
    noisy_number = _by_variant(study)["noisy"].number
    capsys.readouterr()
    cut = tune(_source(sign, stable), SEARCH, config=OPTIM, sampler=_sampler(), out_dir=tmp_path,
               study_name=study.study_name, resume=True, timeout=1e-6, **RUN)
    captured = capsys.readouterr()
    assert "re-evaluation: trial" not in captured.err
    assert not cut.user_attrs[REEVAL_KEY].get("runs") and cut.user_attrs[REEVAL_KEY]["timed_out"] is True
    assert "re-evaluation cut by the timeout: 4 run(s) not done" in captured.out
    assert best_by_reeval(cut).number == noisy_number
    best = tmp_path / study.study_name / "best_config.yaml"
    assert yaml.safe_load(best.read_text())["run"]["model"] == {"variant": "noisy"}
    done = tune(_source(sign, stable), SEARCH, config=OPTIM, sampler=_sampler(), out_dir=tmp_path,
                study_name=study.study_name, resume=True, **RUN)  # a rerun with time finishes them
    assert done.user_attrs[REEVAL_KEY]["timed_out"] is False
    assert "cut by the timeout" not in capsys.readouterr().out
    assert yaml.safe_load(best.read_text())["run"]["model"] == {"variant": "stable"}


def test_best_by_reeval_reads_the_recorded_seeds_and_a_resume_keeps_the_study_seed(tmp_path):
    """best_by_reeval() reads the seeds the runs were recorded with (not ones rebuilt from the stored plan), and a
    resume with another explicit seed is refused rather than mixing seeds."""
    sign, stable, _ = _case()
    study = tune(_source(sign, stable), SEARCH, config=OPTIM, sampler=_sampler(), out_dir=tmp_path, **RUN)
    stable_number = _by_variant(study)["stable"].number
    assert best_by_reeval(study).number == stable_number
    plan = dict(study.user_attrs["optkit.plan"])
    study.set_user_attr("optkit.plan", {**plan, "seed": 7})  # a stored plan seed the runs were not derived from
    assert best_by_reeval(study).number == stable_number
    study.set_user_attr("optkit.plan", plan)

    with pytest.raises(ConfigError, match=r"seed.*5.*the seed of study .*: 0.*omit --seed.*--seed 0"):
        tune(_source(sign, stable), SEARCH, config=OPTIM, sampler=_sampler(), out_dir=tmp_path,
             study_name=study.study_name, resume=True, seed=5, **RUN)
    again = tune(_source(sign, stable), SEARCH, config=OPTIM, sampler=_sampler(), out_dir=tmp_path,
                 study_name=study.study_name, resume=True, seed=0, **RUN)
    assert again.user_attrs[REEVAL_KEY]["seeds"] == [1000, 2000]


def test_a_resume_without_seed_keeps_the_study_seed(tmp_path):
    sign, stable, _ = _case()
    study = tune(_source(sign, stable), SEARCH, config=OPTIM, sampler=_sampler(), out_dir=tmp_path, seed=3, **RUN)
    record = study.user_attrs[REEVAL_KEY]
    assert record["seeds"] == [1003, 2003]
    again = tune(_source(sign, stable), SEARCH, config=OPTIM, sampler=_sampler(), out_dir=tmp_path,
                 study_name=study.study_name, resume=True, **RUN)
    assert again.user_attrs[REEVAL_KEY] == record  # the same seeds: no run redone, none with seed 0's


def test_fit_of_a_best_config_names_what_was_not_recorded_and_honours_seed(tmp_path, capsys):
    """`optkit fit BEST.yaml`: Trainer arguments that are objects are listed under run.not_recorded and named in a
    warning; --seed / --devices / --log-every-n-steps replace the run's values."""
    from lightning.pytorch.callbacks import Callback

    from lightning_optkit.cli._fit import cmd_fit_run

    sign, stable, noisy = _case()
    run = {**RUN, "trainer_kwargs": {**RUN["trainer_kwargs"], "callbacks": [Callback()]}}
    study = tune(_source(sign, stable), SEARCH, config=OPTIM, sampler=_sampler(), out_dir=tmp_path, reeval=0, **run)
    best = tmp_path / study.study_name / "best_config.yaml"
    data = yaml.safe_load(best.read_text())
    assert data["run"]["model"] == {"variant": "noisy"} and data["run"]["not_recorded"] == ["callbacks"]
    assert data["run"]["trainer"]["devices"] == 1 and "callbacks" not in data["run"]["trainer"]
    with pytest.warns(UserWarning, match=r"Trainer arguments callbacks were not recorded"):
        trainer = fit_run(best, log_dir=tmp_path / "refit")
    assert float(trainer.callback_metrics["val_score"]) == pytest.approx(noisy[0])  # the run's seed (0)
    capsys.readouterr()
    args = argparse.Namespace(seed=5, devices="1", log_every_n_steps=3, max_epochs=None, accelerator=None,
                              log_dir=str(tmp_path / "refit"), quiet=True)
    with pytest.warns(UserWarning, match="callbacks"):
        assert cmd_fit_run(str(best), args, {}) == 0
    assert f"val_score: {sign * noisy_score(5):.4f}" in capsys.readouterr().out
    # flags not given (None, as `optkit fit BEST.yaml` passes them) keep the run's own seed; an explicit
    # --seed 0 is honoured like any other
    data["run"]["seed"] = 7
    best.write_text(yaml.safe_dump(data))
    unset = argparse.Namespace(**{**vars(args), "seed": None, "devices": None, "log_every_n_steps": None})
    with pytest.warns(UserWarning, match="callbacks"):
        assert cmd_fit_run(str(best), unset, {}) == 0
    assert f"val_score: {sign * noisy_score(7):.4f}" in capsys.readouterr().out
    zero = argparse.Namespace(**{**vars(unset), "seed": 0})
    with pytest.warns(UserWarning, match="callbacks"):
        assert cmd_fit_run(str(best), zero, {}) == 0
    assert f"val_score: {sign * noisy_score(0):.4f}" in capsys.readouterr().out
