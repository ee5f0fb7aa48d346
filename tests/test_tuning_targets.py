"""Search keys beyond the optim block (issue 14): model./data./trainer. arguments, through every source.

Real Optuna studies and real Lightning Trainers on a tiny MLP (tests/tuning_targets_helpers): what
each trial built is read back from the objects (the model writes ``built.json`` at fit start).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from lightning_optkit import ConfigError
from lightning_optkit.tuning import fit_run, tune
from lightning_optkit.tuning._sources import ClassSource, FactorySource

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tuning_targets_helpers, here and in worker processes
from tuning_targets_helpers.models import OPTIM

MODEL, DATA = "tuning_targets_helpers.models.MLP", "tuning_targets_helpers.models.Blobs"
SEARCH = {
    "optimizer.lr": {"low": 3e-3, "high": 3e-2, "log": True},
    "model.n_layers": {"low": 1, "high": 3},
    "model.units.0": {"choices": [8, 16]},
    "model.units.1": {"low": 4, "high": 12, "step": 4, "when": {"model.n_layers": {">=": 2}}},
    "model.units.2": {"choices": [6, 10], "when": {"model.n_layers": {">=": 3}}},
    "model.dropout": {"low": 0.0, "high": 0.4},
    "data.batch_size": {"choices": [16, 32, 64]},
    "trainer.gradient_clip_val": {"choices": [0.5, 1.0]},
}
RUN = {"monitor": "val_acc", "trainer_kwargs": {"max_epochs": 2, "accelerator": "cpu", "devices": 1},
       "plots": False, "progress": False, "summary": False, "sampler": "random"}


def _built(folder: Path, trial: optuna.trial.FrozenTrial) -> dict:
    return json.loads((folder / "tensorboard" / f"trial_{trial.number:04d}" / "built.json").read_text())


def _check_trials_built_what_they_sampled(study: optuna.Study, folder: Path, prefix: str = "model.") -> None:
    """Every sampled value is on the built objects; per-layer widths are sampled only for existing layers."""
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert done
    for t in done:
        p, built = t.params, _built(folder, t)
        n = p[f"{prefix}n_layers"]
        assert built["n_layers"] == n == len(built["units"])
        assert [k for k in p if k.startswith(f"{prefix}units.")] == [f"{prefix}units.{i}" for i in range(n)]
        assert built["units"] == [p[f"{prefix}units.{i}"] for i in range(n)]
        assert built["dropout"] == [pytest.approx(p["model.dropout"])] * n
        assert built["batch_size"] == p["data.batch_size"]
        assert built["gradient_clip_val"] == p["trainer.gradient_clip_val"]
        assert built["lr"] == pytest.approx(t.user_attrs["optkit.config"]["optimizer"]["lr"])


def _refit_matches(folder: Path, study: optuna.Study, tmp_path: Path) -> None:
    """`optkit fit best_config.yaml` alone trains the best trial again: the same float."""
    best = folder / "best_config.yaml"
    run = yaml.safe_load(best.read_text())["run"]
    assert run["model"]["units"] == [study.best_params[f"model.units.{i}"]
                                     for i in range(study.best_params["model.n_layers"])]
    trainer = fit_run(best, log_dir=tmp_path / "refit")
    assert float(trainer.callback_metrics["val_acc"]) == study.best_value


def test_class_source_tunes_depth_width_dropout_batch_size_and_clipping(tmp_path):
    study = tune(ClassSource(MODEL, DATA), SEARCH, config=OPTIM, n_trials=6, out_dir=tmp_path, **RUN)
    folder = tmp_path / study.study_name
    _check_trials_built_what_they_sampled(study, folder)
    depths = {t.params["model.n_layers"] for t in study.trials}
    assert len(depths) > 1  # the conditional keys were exercised both ways
    header = (folder / "trials.csv").read_text().splitlines()[0].split(",")
    assert {"model.n_layers", "model.units.0", "data.batch_size", "trainer.gradient_clip_val"} <= set(header)
    _refit_matches(folder, study, tmp_path)


def test_lightningcli_file_with_init_args_keys(tmp_path):
    cli = {"seed_everything": 1,
           "model": {"class_path": MODEL, "init_args": {"optim": OPTIM, "activation": "tanh"}},
           "data": {"class_path": DATA, "init_args": {"seed": 0}},
           "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1}}
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(cli))
    search = {("model.init_args." + k[len("model."):] if k.startswith("model.") else k): v
              for k, v in SEARCH.items() if k != "model.units.2"}
    search["model.init_args.n_layers"] = {"low": 1, "high": 2}
    search["model.init_args.units.1"]["when"] = {"model.init_args.n_layers": {">=": 2}}
    study = tune(str(path), search, n_trials=3, out_dir=tmp_path / "out",
                 **{**RUN, "trainer_kwargs": {}})
    assert all(k.startswith(("model.", "data.", "trainer.", "optimizer.")) and "init_args" not in k
               for k in study.best_params)
    folder = tmp_path / "out" / study.study_name
    _check_trials_built_what_they_sampled(study, folder)
    assert all(_built(folder, t)["activation"] == "Tanh" for t in study.trials)  # the file's own init_args stay
    full = yaml.safe_load((folder / "best_lightningcli.yaml").read_text())
    assert full["model"]["init_args"]["n_layers"] == study.best_params["model.n_layers"]
    assert full["data"]["init_args"]["batch_size"] == study.best_params["data.batch_size"]
    assert full["trainer"]["gradient_clip_val"] == study.best_params["trainer.gradient_clip_val"]
    run = yaml.safe_load((folder / "best_config.yaml").read_text())["run"]
    assert run["trainer"]["gradient_clip_val"] == study.best_params["trainer.gradient_clip_val"]
    _refit_matches(folder, study, tmp_path)


def test_two_argument_factory_receives_the_model_and_data_values(tmp_path):
    study = tune("tuning_targets_helpers.models:build", SEARCH, config=OPTIM, n_trials=4, out_dir=tmp_path, **RUN)
    folder = tmp_path / study.study_name
    _check_trials_built_what_they_sampled(study, folder)
    _refit_matches(folder, study, tmp_path)


def test_one_argument_factory_with_model_keys_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="second parameter") as info:
        tune(FactorySource("tuning_targets_helpers.models:build_optim_only"), {"model.n_layers": {"low": 1, "high": 2}},
             config=OPTIM, n_trials=1, out_dir=tmp_path, **RUN)
    assert info.value.path == "search.model.n_layers"
    assert not (tmp_path / "optuna.db").exists()  # no study, no trial


@pytest.mark.parametrize(("key", "spec", "path", "pattern"), [
    ("model.n_layer", {"low": 1, "high": 3}, "search.model.n_layer", r"Did you mean 'model\.n_layers'"),
    ("model.n_layers", {"choices": [1, "two"]}, "search.model.n_layers", r"got 'two'.*type int"),
    ("model.n_layers", {"low": 1.0, "high": 3.5}, "search.model.n_layers", r"type int"),
    ("model.dropout", {"low": 0, "high": 1}, "search.model.dropout", r"a float range .* write low: 0\.0, high: 1\.0"),
    ("model.activation", {"choices": ["relu", "gelu"]}, "search.model.activation", r"got 'gelu'.*Literal"),
    ("model.dropout.0", {"low": 0.0, "high": 0.5}, "search.model.dropout.0", r"no element keys"),
    ("model.units.0", {"choices": [8, 2.5]}, "search.model.units.0", r"got 2\.5.*type int"),
    ("data.batch_sise", {"choices": [16]}, "search.data.batch_sise", r"Did you mean 'data\.batch_size'"),
    ("trainer.gradient_clip", {"choices": [1.0]}, "search.trainer.gradient_clip",
     r"Did you mean 'trainer\.gradient_clip_val'"),
    ("trainer.accumulate_grad_batches", {"choices": [1, "x"]}, "search.trainer.accumulate_grad_batches", r"got 'x'"),
    ("trainer.logger", {"choices": [True]}, "search.trainer.logger", r"other than logger"),
    ("model.optim", {"value": {}}, "search.model.optim", r"other than `optim`"),
])
def test_bad_keys_and_values_fail_before_the_first_trial(tmp_path, key, spec, path, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        tune(ClassSource(MODEL, DATA), {"optimizer.lr": {"low": 1e-3, "high": 1e-2}, key: spec}, config=OPTIM,
             n_trials=1, out_dir=tmp_path, **RUN)
    assert info.value.path == path
    assert not (tmp_path / "optuna.db").exists()


def test_element_keys_with_a_gap_and_unreachable_conditions_fail_up_front(tmp_path):
    gap = {"model.n_layers": {"low": 1, "high": 2},
           "model.units.0": {"choices": [8], "when": {"model.n_layers": {">=": 2}}},
           "model.units.1": {"choices": [8]}}
    with pytest.raises(ConfigError, match=r"every element of model\.units") as info:
        tune(ClassSource(MODEL, DATA), gap, config=OPTIM, n_trials=1, out_dir=tmp_path, **RUN)
    assert info.value.path == "search.model.units.0"
    never = {"model.n_layers": {"low": 1, "high": 2},
             "model.units.1": {"choices": [8], "when": {"model.n_layers": {">=": 5}}}}
    with pytest.raises(ConfigError, match=r"a comparison that some value of model\.n_layers passes") as info:
        tune(ClassSource(MODEL, DATA), never, config=OPTIM, n_trials=1, out_dir=tmp_path, **RUN)
    assert info.value.path == "search.model.units.1.when.model.n_layers"
    unsearched = {"model.units.0": {"choices": [8], "when": {"model.n_layers": 1}}}
    with pytest.raises(ConfigError, match=r"model\.n_layers is not searched"):
        tune(ClassSource(MODEL, DATA), unsearched, config=OPTIM, n_trials=1, out_dir=tmp_path, **RUN)


def test_batch_size_scales_the_lr_by_its_declared_rule(tmp_path):
    search = {"data.batch_size": {"choices": [16, 64], "lr_scaling": "sqrt"}}  # the datamodule's default is 32
    study = tune(ClassSource(MODEL, DATA), search, config=OPTIM, n_trials=3, out_dir=tmp_path, **RUN)
    folder = tmp_path / study.study_name
    for t in study.trials:
        bs = t.params["data.batch_size"]
        lr = t.user_attrs["optkit.config"]["optimizer"]["lr"]
        assert lr == pytest.approx(1e-2 * (bs / 32) ** 0.5)
        assert _built(folder, t)["lr"] == pytest.approx(lr) and _built(folder, t)["batch_size"] == bs
    assert study.user_attrs["optkit.plan"]["search"]["data.batch_size"]["lr_base"] == 32


def test_pruning_and_two_workers_with_model_keys(tmp_path):
    search = {k: v for k, v in SEARCH.items() if k != "model.units.2"}
    search["model.n_layers"] = {"low": 1, "high": 2}
    # a pruner that stops every trial at its first validation (val_acc <= 1 < 1.01): pruning, deterministically
    study = tune(ClassSource(MODEL, DATA), search, config=OPTIM, n_trials=4, out_dir=tmp_path, workers=2,
                 pruner=optuna.pruners.ThresholdPruner(lower=1.01),
                 **{**RUN, "trainer_kwargs": {**RUN["trainer_kwargs"], "max_epochs": 3}})
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 4
    assert all(len(t.intermediate_values) == 1 for t in study.trials)  # stopped after 1 of 3 epochs
    _check_trials_built_what_they_sampled(study, tmp_path / study.study_name)


def test_optkit_fit_best_config_alone_for_the_example(tmp_path, capsys):
    from lightning_optkit.cli import main as optkit

    search = {"optimizer.lr": {"low": 1e-3, "high": 3e-2, "log": True}, "model.dropout": {"low": 0.0, "high": 0.3},
              "model.hidden_sizes.0": {"choices": [16, 32]}, "data.batch_size": {"choices": [32, 64]}}
    study = tune(example="digits", search=search, n_trials=2, trainer_kwargs={"max_epochs": 1}, out_dir=tmp_path,
                 plots=False, progress=False, summary=False, tensorboard=False)
    best = tmp_path / "digits" / "best_config.yaml"
    text = best.read_text()
    assert f"# Reproduce: optkit fit {best}\n" in text
    capsys.readouterr()
    assert optkit(["fit", str(best), "--log-dir", str(tmp_path / "runs"), "-q"]) == 0
    printed = re.search(r"val_acc: ([0-9.]+)", capsys.readouterr().out)
    assert printed is not None and printed.group(1) == f"{study.best_value:.4f}"
    run = yaml.safe_load(text)["run"]
    assert run["source"] == {"kind": "example", "example": "digits", "model_args": {}, "data_args": {}}
    assert run["model"]["hidden_sizes"] == [study.best_params["model.hidden_sizes.0"]]
    # --set reaches the run's model/data arguments as well as the optim block
    trainer = fit_run(best, overrides={"data.batch_size": 16, "model.hidden_sizes": [8], "trainer.max_epochs": 1},
                      log_dir=tmp_path / "runs2")
    assert trainer.datamodule.batch_size == 16 and trainer.lightning_module.hparams["hidden_sizes"] == [8]


def test_annotation_checks_cover_restricted_types_and_containers():
    from typing import Literal, Optional

    from jsonargparse.typing import ClosedUnitInterval, PositiveInt

    from lightning_optkit.tuning._targets import _accepts

    assert _accepts(PositiveInt, 3) and not _accepts(PositiveInt, 0) and not _accepts(PositiveInt, 2.5)
    assert _accepts(ClosedUnitInterval, 0.5) and not _accepts(ClosedUnitInterval, 1.5)
    assert _accepts(Optional[list[int]], None) and _accepts(Optional[list[int]], [1, 2])  # noqa: UP045
    assert not _accepts(list[int], [1, "a"]) and not _accepts(list[int], 3)
    assert _accepts(Literal["a", 1], 1) and not _accepts(Literal["a", 1], True) and not _accepts(Literal["a"], "b")
    assert not _accepts(int, True) and _accepts(float, 2) and not _accepts(bool, 1) and _accepts(int | None, None)
    assert _accepts(Literal["relu", "gelu"], "relu") and not _accepts(Literal["relu", "gelu"], "ReLU")  # exact case


def test_a_nested_key_changes_one_value_and_keeps_the_rest_of_its_argument():
    # `model.backbone.init_args.p` must change that one value, not wipe the backbone's class_path and
    # its other arguments (the merge of sampled values into the source's arguments is nested).
    from lightning_optkit.tuning._space import split_overrides

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    backbone = {"class_path": "torch.nn.Dropout", "init_args": {"p": 0.1, "inplace": True}}
    source = ClassSource("lightningcli_project.Backboned", "lightningcli_project.Data",
                         model_args={"backbone": backbone, "hidden": 4})
    targets = split_overrides({"model.backbone.init_args.p": 0.3})[1]
    model, _ = source.build(dict(OPTIM), targets)
    assert type(model.backbone).__name__ == "Dropout"
    assert model.backbone.p == 0.3 and model.backbone.inplace is True
    assert backbone["init_args"]["p"] == 0.1  # the source's own arguments are left as they were
