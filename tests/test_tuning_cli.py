"""``optkit tune``: the subcommand's parser and run(), in-process, with real (tiny) studies."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from lightning_optkit.tuning._cli import add_parser, main, run, tune_kwargs

SCRIPTS = Path(__file__).resolve().parent / "ddp_scripts"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
sys.path.insert(0, str(SCRIPTS))



def _optkit(argv: list[str]) -> int:
    """``optkit tune ...`` as cli.py will wire it: a subparser made by add_parser, its func called."""
    parser = argparse.ArgumentParser(prog="optkit")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tune", *argv])
    return args.func(args)


def test_tune_the_example_prints_the_best_config_and_its_accuracy(tmp_path, capsys):
    rc = _optkit(["--example", "digits", "--trials", "3", "--max-epochs", "1", "--out", str(tmp_path),
                  "--no-plots", "--no-tensorboard"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "best config (" in out.out and "best trial " in out.out and "val_acc = 0." in out.out
    assert "optkit fit --example digits" in out.out
    assert out.err.count("[optkit tune] trial ") == 3  # one progress line per trial (not a terminal)
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 3 and study.user_attrs["optkit.monitor"] == ["val_acc"]
    assert yaml.safe_load((tmp_path / "digits" / "best_config.yaml").read_text())["optim"]["optimizer"]["name"] in ("adamw", "sgd")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--example", "digits", "--sampler", "tpee"], ["error: sampler: got 'tpee'", "Did you mean 'tpe'"]),
        (["--example", "digits", "--pruner", "hyperbnd"], ["error: pruner:", "hyperband"]),
        (["--example", "digits", "--search", "digts"], ["error: search:", "Did you mean 'digits'"]),
        (["--example", "digits", "--storage", "sqlite:////no/such/dir/x.db"], ["error: storage:", "opened"]),
        (["--example", "digitz"], ["error: example:", "digits"]),
        (["--model", "lightning_optkit.demo.DigitsClassifier"], ["--model needs --data"]),
        (["--example", "digits", "--factory", "x:y"], ["give one of --example, --factory and --model"]),
        (["configs/digits.yaml"], ["is an optim block"]),
        ([], ["give --example digits"]),
        (["--example", "digits", "--model-args", "{bad"], ["--model-args: not valid JSON"]),
    ],
)
def test_mistakes_are_one_error_line_and_status_2_before_any_trial(tmp_path, capsys, argv, words):
    rc = _optkit([*argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    for w in words:
        assert w in err, err
    assert "Traceback" not in err and "[optkit tune] trial" not in err
    assert not (tmp_path / "digits").exists()


def test_model_and_data_classes_and_a_factory(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"optimizer": {"name": "adamw", "lr": 1e-2},
                                    "scheduler": {"name": "warmup_cosine", "warmup": "5%"}}))
    rc = _optkit([str(base), "--model", "tuning_models.TinyNet", "--data", "tuning_models.TinyData",
                  "--model-args", '{"hidden": 8}', "--search", "adamw", "--monitor", "val_loss", "--trials", "2",
                  "--max-epochs", "1", "--out", str(tmp_path), "--no-plots", "-q"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "--model tuning_models.TinyNet --data tuning_models.TinyData" in out
    rc = _optkit(["--factory", "tuning_models:build", "--config", str(base), "--search", "adamw", "--trials", "2",
                  "--trainer", "max_steps=4", "--val-check-interval", "2", "--out", str(tmp_path), "--no-plots", "-q"])
    assert rc == 0
    study = optuna.load_study(study_name="tuning_models", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert sorted(study.trials[0].intermediate_values) == [2, 4]  # validation every 2 batches, 4 steps


def test_arguments_map_onto_tune(tmp_path):
    parser = argparse.ArgumentParser(prog="optkit")
    sub = add_parser(parser.add_subparsers(dest="command"))
    assert sub.get_default("func") is run
    args = parser.parse_args(["tune", "--example", "digits", "--monitor", "val_loss,val_acc", "--direction",
                              "min,max", "--devices", "2", "--strategy", "ddp", "--set", "optimizer.lr=1e-3",
                              "--trainer", "gradient_clip_val=1.0", "--no-base", "--resume", "--study", "x"])
    kw = tune_kwargs(args)
    assert kw["monitor"] == ["val_loss", "val_acc"] and kw["direction"] == ["min", "max"]
    assert kw["trainer_kwargs"] == {"devices": 2, "strategy": "ddp", "gradient_clip_val": 1.0}
    assert kw["overrides"] == {"optimizer.lr": 1e-3} and kw["enqueue_base"] is False
    assert kw["resume"] is True and kw["study_name"] == "x" and kw["example"] == "digits"


def test_help_and_python_dash_m(capsys, monkeypatch):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "optkit tune" in text and "when: {optimizer.name: sgd}" in text and "presets (--search NAME)" in text
    monkeypatch.setattr(sys, "argv", ["lightning_optkit.tuning", "--help"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("lightning_optkit.tuning", run_name="__main__")
    assert info.value.code == 0


@pytest.mark.parametrize("storage", ["study.db", "journal/study.log"])
def test_a_storage_file_inside_a_new_out_folder(tmp_path, capsys, storage):
    """``--out X --storage X/study.db`` on a fresh run: the folder is made before the storage is opened."""
    out = tmp_path / "new" / "run"
    rc = _optkit(["--factory", "tuning_models:build", "--config", str(CONFIGS / "digits.yaml"), "--search", "adamw",
                  "--trials", "1", "--trainer", "max_steps=2", "--val-check-interval", "2", "--out", str(out), "--storage", str(out / storage),
                  "--no-plots", "--no-tensorboard", "-q"])
    assert rc == 0, capsys.readouterr().err
    assert (out / storage).is_file()
    # a storage folder outside the output folder is still never created on the user's behalf
    rc = _optkit(["--factory", "tuning_models:build", "--config", str(CONFIGS / "digits.yaml"), "--search", "adamw",
                  "--trials", "1", "--trainer", "max_steps=2", "--val-check-interval", "2", "--out", str(out),
                  "--storage", str(tmp_path / "elsewhere" / "study.db"), "--no-plots", "--no-tensorboard", "-q"])
    assert rc == 2 and "error: storage:" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()


def test_model_args_class_path_objects_are_built_fresh_for_every_trial(tmp_path, capsys):
    import lightningcli_project as project

    project.RUNS.clear()
    args = '{"hidden": 6, "backbone": {"class_path": "torch.nn.Linear", "init_args": {"in_features": 4, "out_features": 6}}}'
    rc = _optkit([str(CONFIGS / "digits.yaml"), "--model", "lightningcli_project.Backboned", "--data",
                  "lightningcli_project.Data", "--model-args", args, "--search", "adamw", "--trials", "2", "--reeval", "0",
                  "--max-epochs", "1", "--out", str(tmp_path), "--no-plots", "--no-tensorboard", "-q"])
    assert rc == 0, capsys.readouterr().err
    assert [r["backbone"] for r in project.RUNS] == ["Linear", "Linear"]
    assert all(r["backbone_moved"] and r["trainable_in_optimizer"] == 4 * 6 + 6 + 6 * 3 + 3 for r in project.RUNS)
