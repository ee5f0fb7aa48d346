"""tune() end to end: real Optuna studies on SQLite files, real Trainers, real TensorBoard event files."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import lightning as L
import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from lightning_optkit import ConfigError, load_config
from lightning_optkit.demo import make_example
from lightning_optkit.tuning import LightningCLISource, search_preset, tune

sys.path.insert(0, str(Path(__file__).resolve().parent / "ddp_scripts"))
from tuning_models import build, build_unlogged

TINY_SEARCH = {"optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True},
               "optimizer.weight_decay": {"low": 1e-5, "high": 1e-2, "log": True}}
TINY_BASE = {"optimizer": {"name": "adamw", "lr": 1e-2}}
QUIET = dict(plots=False, tensorboard=False, summary=False, progress=False)



def _tiny(tmp_path: Path, **kwargs):
    args = dict(config=TINY_BASE, monitor="val_loss", n_trials=2, storage=f"sqlite:///{tmp_path / 'study.db'}",
                trainer_kwargs={"max_epochs": 1}, out_dir=tmp_path / "out", **QUIET)
    args.update(kwargs)
    model = args.pop("model", build)
    search = args.pop("search", TINY_SEARCH)
    return tune(model, search, **args)


# -- the digits example: one study, checked several ways ----------------------------------------------------

@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        study = tune(example="digits", n_trials=4, trainer_kwargs={"max_epochs": 2}, out_dir=out, progress=False)
    finally:
        torch.set_num_threads(saved)
    return study, out


def test_digits_study_outputs(digits_run, capsys):
    study, out = digits_run
    folder = out / study.study_name
    assert study.study_name == "digits" and (out / "optuna.db").is_file()
    states = [t.state for t in study.trials]
    assert len(states) == 4 and all(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
    # the base config (the demo preset) is the first trial
    base = load_config(search_preset("digits")["optim"])
    assert study.trials[0].params == {"optimizer.name": "adamw", "optimizer.lr": base.optimizer.lr,
                                      "optimizer.weight_decay": base.optimizer.kwargs["weight_decay"],
                                      "scheduler.warmup": "10%", "loss.label_smoothing": 0.05}
    assert study.trials[0].user_attrs["optkit.config"] == base.to_dict()
    # every validation reported at its optimizer step (23 per epoch)
    assert sorted(study.trials[0].intermediate_values) == [23, 46]
    # best config: the complete optim block of the best trial, with the command that trains it again
    text = (folder / "best_config.yaml").read_text()
    assert load_config(folder / "best_config.yaml").to_dict() == study.best_trial.user_attrs["optkit.config"]
    assert f"trial {study.best_trial.number}" in text
    assert f"optkit fit --example digits {folder / 'best_config.yaml'} --max-epochs 2 --seed 0" in text
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == [0, 1, 2, 3] and "optimizer.lr" in rows[0]
    for name in ("optimization_history", "param_importances", "parallel_coordinate", "intermediate_values"):
        assert (folder / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_digits_tensorboard_hparams_of_every_trial(digits_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    study, out = digits_run
    for t in study.trials:
        acc = EventAccumulator(str(out / study.study_name / "tensorboard" / f"trial_{t.number:04d}"))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        logged = {k: (v.string_value if v.HasField("string_value") else v.bool_value if v.HasField("bool_value")
                      else v.number_value) for k, v in hparams.items()}
        assert logged.pop("state") == t.state.name
        assert logged == pytest.approx({k: str(v) if isinstance(v, bool) else v for k, v in t.params.items()})
        last = t.intermediate_values[max(t.intermediate_values)]
        assert acc.Scalars("hparams/val_acc")[-1].value == pytest.approx(last)
        assert len(acc.Scalars("val_acc")) == len(t.intermediate_values)  # the validation curve is there too


def test_best_config_refit_gives_the_same_value(digits_run, tmp_path, capsys):
    from lightning_optkit.cli import main as optkit

    study, out = digits_run
    best = out / study.study_name / "best_config.yaml"
    # in-process refit, as the study trained it: the same float
    L.seed_everything(0, workers=True, verbose=False)
    model, data = make_example("digits", best)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, deterministic=True, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    assert float(trainer.callback_metrics["val_acc"]) == study.best_value
    # `optkit fit` with the command written in the YAML prints the same value
    capsys.readouterr()
    assert optkit(["fit", "--example", "digits", str(best), "--max-epochs", "2", "--seed", "0",
                   "--log-dir", str(tmp_path / "runs"), "-q"]) == 0
    printed = re.search(r"val_acc: ([0-9.]+)", capsys.readouterr().out)
    assert printed is not None and printed.group(1) == f"{study.best_value:.4f}"


# -- resume, names, the number of trials --------------------------------------------------------------------

def test_resume_runs_the_missing_trials_and_names_are_not_reused(tmp_path):
    study = _tiny(tmp_path, study_name="s", n_trials=2)
    assert len(study.trials) == 2 and study.trials[0].params["optimizer.lr"] == 1e-2  # the base config first
    with pytest.raises(ConfigError) as info:
        _tiny(tmp_path, study_name="s", n_trials=3)
    assert info.value.path == "study_name" and "resume" in str(info.value)
    study = _tiny(tmp_path, study_name="s", n_trials=4, resume=True)
    assert len(study.trials) == 4 and study.trials[2].params != study.trials[0].params  # no second enqueue
    again = _tiny(tmp_path, n_trials=1)
    assert again.study_name == "tuning_models"  # the factory's module name
    again = _tiny(tmp_path, n_trials=1)
    assert again.study_name == "tuning_models-2"
    assert _tiny(tmp_path, n_trials=2, resume=True).study_name == "tuning_models-2"
    names = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'study.db'}")}
    assert names == {"s": 4, "tuning_models": 1, "tuning_models-2": 2}


def test_timeout_alone_runs_at_least_one_trial(tmp_path):
    study = _tiny(tmp_path, n_trials=None, timeout=0.01)
    assert len(study.trials) >= 1


# -- bad input: a clear error before or at the first trial; the study stays usable ----------------------------

def test_unreachable_storage_fails_before_any_training(tmp_path):
    with pytest.raises(ConfigError) as info:
        _tiny(tmp_path, storage=f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}")
    assert info.value.path == "storage" and "opened" in str(info.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(("arg", "value", "valid"), [("sampler", "tpee", "tpe"), ("pruner", "hyperbnad", "hyperband")])
def test_unknown_sampler_or_pruner_leaves_the_study_usable(tmp_path, arg, value, valid):
    _tiny(tmp_path, study_name="s", n_trials=1)
    with pytest.raises(ConfigError) as info:
        _tiny(tmp_path, study_name="s", n_trials=3, resume=True, **{arg: value})
    assert info.value.path == arg and info.value.value == value and valid in info.value.suggestions
    assert len(optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}").trials) == 1
    assert len(_tiny(tmp_path, study_name="s", n_trials=2, resume=True).trials) == 2


def test_a_metric_never_logged_fails_the_first_trial_and_the_study_resumes(tmp_path):
    with pytest.raises(ConfigError) as info:
        _tiny(tmp_path, study_name="s", monitor="val_accuracy", n_trials=3)
    err = info.value
    assert err.path == "monitor" and err.value == "val_accuracy" and "val_acc" in err.suggestions
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    study = _tiny(tmp_path, study_name="s", monitor="val_acc", n_trials=2, resume=True)
    assert [t.state for t in study.trials][1:] == [TrialState.COMPLETE] * 2
    assert study.trials[1].params["optimizer.lr"] == 1e-2  # the base config runs first after all
    with pytest.raises(ConfigError, match="logged metrics were: none"):
        _tiny(tmp_path, model=build_unlogged, study_name="t", n_trials=1)


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"search": {"optimzer.lr": {"low": 1e-3, "high": 1e-1}}}, "search.optimzer.lr"),
        ({"trainer_kwargs": {}}, "trainer_kwargs.max_epochs"),
        ({"trainer_kwargs": {"max_epochs": 1, "logger": True}}, "trainer_kwargs.logger"),
        ({"monitor": "quality"}, "direction"),
        ({"direction": "up"}, "direction"),
        ({"n_trials": 0}, "n_trials"),
        ({"config": None, "search": TINY_SEARCH}, "config"),
        ({"model": "no_such_module_xyz:build"}, "model"),
        ({"trainer_kwargs": {"max_epochs": 1, "strategy": "ddp_spawn", "devices": 2, "accelerator": "cpu"}},
         "trainer_kwargs.strategy"),
        ({"enqueue": {"optimizer.lr": 0.05}}, "enqueue"),
        ({"enqueue": [{"optimizer.lr": -1}]}, "enqueue.0.optimizer.lr"),
        ({"enqueue": [{"optimizer.lr": 0.05}, {"optimizer": {"name": "adamw", "lr": 1e-3, "betas": [2, 0]}}]},
         "enqueue.1.optimizer"),
        ({"catch": (SystemExit,)}, "catch"),  # only Exception subclasses may let a study go on
        ({"catch": ("ValueError",)}, "catch"),
    ],
)
def test_bad_arguments_fail_before_the_storage_is_touched(tmp_path, kwargs, path):
    with pytest.raises(ConfigError) as info:
        _tiny(tmp_path, **kwargs)
    assert info.value.path == path, str(info.value)
    assert not (tmp_path / "study.db").exists()


def test_enqueued_configs_run_first_after_the_base(tmp_path):
    study = _tiny(tmp_path, n_trials=3, enqueue=[{"optimizer.lr": 0.05},
                                                 {"optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-3}}])
    lrs = [t.user_attrs["optkit.config"]["optimizer"]["lr"] for t in study.trials]
    assert lrs == [1e-2, 0.05, 2e-3]
    assert study.trials[2].params == {"optimizer.lr": 2e-3, "optimizer.weight_decay": 1e-3}
    assert [t.user_attrs.get("optkit.enqueued") for t in study.trials] == ["base config", "enqueue[0]", "enqueue[1]"]


# -- other model sources -------------------------------------------------------------------------------------

def _cli_yaml(tmp_path: Path, **model) -> Path:
    data = {
        "seed_everything": 3,
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "deterministic": True, "log_every_n_steps": 1,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "x"}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
                                   "init_args": {"logging_interval": "step"}}]},
        "model": {"class_path": "lightning_optkit.demo.DigitsClassifier",
                  "init_args": {"hidden_sizes": [16], "optim": {"optimizer": {"name": "adamw", "lr": 3e-3},
                                                                "loss": {"name": "cross_entropy"}}}, **model},
        "data": {"class_path": "lightning_optkit.demo.DigitsDataModule", "init_args": {"batch_size": 128}},
    }
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_lightningcli_yaml_is_tuned_with_no_new_code(tmp_path):
    path = _cli_yaml(tmp_path)
    study = tune(path, {"optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True}}, monitor="val_acc", n_trials=2,
                 storage=f"sqlite:///{tmp_path / 'study.db'}", out_dir=tmp_path / "out", plots=False, progress=False,
                 tensorboard=True)
    assert study.study_name == "DigitsClassifier" and len(study.trials) == 2
    folder = tmp_path / "out" / study.study_name
    full = yaml.safe_load((folder / "best_lightningcli.yaml").read_text())
    assert full["model"]["init_args"]["optim"] == study.best_trial.user_attrs["optkit.config"]
    assert full["seed_everything"] == 3 and full["model"]["init_args"]["hidden_sizes"] == [16]
    text = (folder / "best_config.yaml").read_text()
    assert "--model lightning_optkit.demo.DigitsClassifier --data lightning_optkit.demo.DigitsDataModule" in text
    assert "'{\"hidden_sizes\": [16]}'" in text and "--seed 3" in text
    # the YAML's LearningRateMonitor ran in every trial (its LR curve is in the trial's TensorBoard run)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tensorboard" / "trial_0001"))
    acc.Reload()
    assert any(tag.startswith("lr-AdamW") for tag in acc.Tags()["scalars"])


def test_lightningcli_yaml_mistakes_are_config_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        LightningCLISource(_cli_yaml(tmp_path, class_path="lightning_optkit.demo.DigitsClassifer"))
    assert info.value.path == "model.class_path" and "DigitsClassifer" in str(info.value)
    with pytest.raises(ConfigError) as info:
        LightningCLISource(_cli_yaml(tmp_path, class_path="__main__.LitMLP"))
    assert "importable module path" in str(info.value)
    data = yaml.safe_load(_cli_yaml(tmp_path).read_text())
    del data["model"]["init_args"]["optim"]
    with pytest.raises(ConfigError, match=r"model\.init_args\.optim"):
        LightningCLISource(data)


def test_multi_objective_study(tmp_path):
    study = _tiny(tmp_path, monitor=["val_loss", "val_acc"], n_trials=3, summary=True, pruner="hyperband")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in study.trials)
    assert all(t.intermediate_values == {} and t.user_attrs["optkit.intermediate_values"] for t in study.trials)
    assert (tmp_path / "out" / study.study_name / "best_config.yaml").is_file()


def test_a_fresh_process_can_run_a_trial_from_the_stored_plan(tmp_path):
    """What a process launcher does: rebuild the plan from the study, ask, run one trial, tell."""
    from lightning_optkit.tuning._runner import TrialPlan, TrialRunner

    _tiny(tmp_path, model="tuning_models:build", study_name="s", n_trials=1)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    plan = TrialPlan.from_description(study.user_attrs["optkit.plan"], tmp_path / "out" / "s", tensorboard=False)
    assert plan.trainer_kwargs == {"max_epochs": 1} and plan.monitors == ("val_loss",)
    frozen = TrialRunner(plan).run_one(study)
    assert frozen.number == 1 and frozen.state == TrialState.COMPLETE
    assert frozen.user_attrs["optkit.config"] == load_config(TINY_BASE, plan.space.overrides_from_params(
        frozen.params, plan.base)).to_dict()
