"""Search spaces: parsing, up-front validation against the config schema, sampling, presets. No training here."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from lightning_optkit import ConfigError, load_config
from lightning_optkit.tuning import (
    PRESETS,
    AutoHyperbandPruner,
    SearchSpace,
    load_search,
    make_pruner,
    make_sampler,
    search_preset,
)
from lightning_optkit.tuning._storage import redact_url, resolve_storage

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASE = {
    "optimizer": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.99]},
    "scheduler": {"name": "warmup_cosine", "warmup": "5%", "min_lr_ratio": 0.01},
    "loss": {"name": "cross_entropy"},
}
ISSUE_EXAMPLE = {
    "optimizer.name": {"choices": ["adamw", "sgd"]},
    "optimizer.lr": {"low": 1.0e-5, "high": 1.0e-1, "log": True},
    "optimizer.momentum": {"low": 0.8, "high": 0.99, "when": {"optimizer.name": "sgd"}},
    "scheduler.warmup": {"choices": ["0%", "5%", "10%"]},
}
BASE_NO_BETAS = {k: v for k, v in BASE.items() if k != "optimizer"} | {"optimizer": {"name": "adamw", "lr": 1e-3}}


def _error(space: dict, base: dict | None = BASE) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        s = SearchSpace.from_dict(space)
        if base is not None:
            s.validate(base)
    return info.value


def test_the_issue_example_parses_validates_and_samples_on_sqlite(tmp_path):
    space = SearchSpace.from_dict({"search": ISSUE_EXAMPLE})
    assert space.params["optimizer.lr"].kind == "float" and space.params["optimizer.lr"].log
    assert space.params["optimizer.name"].kind == "categorical"
    assert space.order.index("optimizer.name") < space.order.index("optimizer.momentum")
    space.validate(BASE_NO_BETAS)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        overrides = space.sample(trial, BASE_NO_BETAS)
        assert ("optimizer.momentum" in overrides) == (overrides["optimizer.name"] == "sgd")
        assert set(trial.params) == set(overrides)
        cfg = load_config(BASE_NO_BETAS, overrides)
        assert cfg.optimizer.name == overrides["optimizer.name"] and cfg.scheduler.warmup == overrides["scheduler.warmup"]
        assert 1e-5 <= cfg.optimizer.lr <= 1e-1
        study.tell(trial, 0.0)
        seen.add(overrides["optimizer.name"])
    assert seen == {"adamw", "sgd"}
    # the overrides of a stored trial are recovered from its params
    t = study.trials[3]
    assert space.overrides_from_params(t.params, BASE_NO_BETAS) == {k: t.params[k] for k in space.order if k in t.params}


@pytest.mark.parametrize(
    ("space", "path", "words"),
    [
        ({"optimzer.lr": {"low": 1e-4, "high": 1e-1}}, "search.optimzer.lr", ["valid keys at the top", "optimizer.lr"]),
        ({"optimizer.lr": {"low": 1e-1, "high": 1e-4}}, "search.optimizer.lr.low", ["below high=0.0001"]),
        ({"optimizer.lr": {"low": 1e-2, "high": 1e-2}}, "search.optimizer.lr.low", ["below high"]),
        ({"optimizer.lr": {"low": 0.0, "high": 1e-1, "log": True}}, "search.optimizer.lr.low", ["log: true needs low > 0"]),
        ({"optimizer.weight_decay": {"low": -1.0, "high": 1.0, "log": True}}, "search.optimizer.weight_decay.low", ["low > 0"]),
        ({"optimizer.name": {"choices": []}}, "search.optimizer.name.choices", ["non-empty"]),
        ({"optimizer.name": {"choices": ["sgd", "sgd"]}}, "search.optimizer.name.choices", ["listed twice"]),
        ({"optimizer.lr": {"lo": 1e-4, "high": 1e-1}}, "search.optimizer.lr.lo", ["Did you mean 'low'"]),
        ({"optimizer.lr": [1e-3, 1e-2]}, "search.optimizer.lr", ["{choices: [...]}"]),
        ({"optimizer.lr": {"low": 1e-4, "high": 1e-1, "log": True, "step": 1e-3}}, "search.optimizer.lr.step", ["log"]),
        ({"optimizer.lr": {"low": 1e-4, "high": 1e-1, "type": "flot"}}, "search.optimizer.lr.type", ["float"]),
        ({"param_groups.lr_scale": {"low": 0.1, "high": 1.0}}, "search.param_groups.lr_scale", ["item index"]),
        ({"optimizer.name": {"choices": ["adamw", "sgd"]},
          "optimizer.momentum": {"low": 0.8, "high": 0.9, "when": {"optimizer.name": "sdg"}}},
         "search.optimizer.momentum.when.optimizer.name", ["Did you mean 'sgd'"]),
        ({"optimizer.lr": {"low": 1e-4, "high": 1e-1},
          "optimizer.momentum": {"low": 0.8, "high": 0.9, "when": {"optimizer.lr": 0.1}}},
         "search.optimizer.momentum.when.optimizer.lr", ["categorical or fixed"]),
        ({"optimizer.name": {"choices": ["adamw", "sgd"], "when": {"scheduler.name": "x"}},
          "scheduler.name": {"choices": ["linear", "wsd"], "when": {"optimizer.name": "sgd"}}},
         "search.", ["cycle"]),
    ],
)
def test_bad_specs_fail_before_any_training(space, path, words):
    err = _error(space)
    assert err.path.startswith(path), str(err)
    for w in words:
        assert w in str(err), str(err)


def test_unknown_keys_of_the_schema_and_of_the_optimizer_are_rejected_with_suggestions():
    err = _error({"loss.smoothing": {"low": 0.0, "high": 0.2}})
    assert err.path == "search.loss.smoothing" and "loss.label_smoothing" in err.suggestions
    err = _error({"optimizer.momentum": {"low": 0.8, "high": 0.99}})  # AdamW has no momentum
    assert err.path == "search.optimizer.momentum" and "AdamW" in str(err) and "when:" in str(err)
    err = _error({"schedular.warmup": {"choices": ["5%"]}})
    assert "scheduler.warmup" in err.suggestions


def test_a_choice_that_breaks_the_base_config_names_the_base_key_and_the_fix():
    err = _error({"optimizer.name": {"choices": ["adamw", "sgd"]}})  # the base has AdamW's betas
    assert err.path == "search.optimizer.name" and err.value == "sgd"
    assert "optimizer.betas" in str(err) and "{value: null, when: {optimizer.name: 'sgd'}}" in err.hint
    # the suggested fix works
    SearchSpace.from_dict({"optimizer.name": {"choices": ["adamw", "sgd"]},
                           "optimizer.betas": {"value": None, "when": {"optimizer.name": "sgd"}}}).validate(BASE)
    err = _error({"scheduler.name": {"choices": ["warmup_cosine", "constant"]}})
    assert err.value == "constant" and "scheduler.min_lr_ratio" in str(err)


def test_a_key_of_a_block_the_base_lacks_is_blamed_on_that_key():
    err = _error({"optimizer.lr": {"low": 1e-4, "high": 1e-1}, "scheduler.min_lr_ratio": {"low": 0.0, "high": 0.1}},
                 base={"optimizer": {"name": "adamw"}})
    assert err.path == "search.scheduler.min_lr_ratio" and "no `scheduler` block" in err.hint


def test_constructor_checks_run_too():
    # load_config accepts nesterov without momentum; torch's SGD constructor does not
    err = _error({"optimizer.name": {"choices": ["sgd"]}, "optimizer.nesterov": {"value": True},
                  "optimizer.betas": {"value": None}})
    assert err.path == "search.optimizer.name" and "Nesterov" in str(err)


def test_kinds_conditions_on_base_keys_and_json_choices(tmp_path):
    space = SearchSpace.from_dict({
        "scheduler.warmup": {"low": 0, "high": 100, "step": 25},           # int
        "optimizer.betas": {"choices": [[0.9, 0.999], [0.9, 0.95]]},     # lists as choices
        "optimizer.eps": {"value": 1e-6},                                  # fixed
        "loss.label_smoothing": 0.1,                                       # fixed, bare
        "optimizer.momentum": {"low": 0.8, "high": 0.9, "when": {"optimizer.name": "sgd"}},  # never with this base
    })
    assert space.params["scheduler.warmup"].kind == "int"
    assert space.searched == ["scheduler.warmup", "optimizer.betas", "optimizer.momentum"]
    space.validate(BASE)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", sampler=optuna.samplers.RandomSampler(seed=1))
    betas = set()
    for _ in range(12):
        trial = study.ask()
        overrides = space.sample(trial, BASE)
        assert "optimizer.momentum" not in overrides  # its condition tests the base config: adamw
        assert overrides["scheduler.warmup"] % 25 == 0 and overrides["optimizer.eps"] == 1e-6
        assert load_config(BASE, overrides).optimizer.kwargs["betas"] == overrides["optimizer.betas"]
        betas.add(tuple(overrides["optimizer.betas"]))
        study.tell(trial, 0.0)
    assert betas == {(0.9, 0.999), (0.9, 0.95)}
    assert SearchSpace.from_dict(space.to_dict()) == space


def test_base_params_are_what_the_first_trial_enqueues():
    space = SearchSpace.from_dict(ISSUE_EXAMPLE)
    params, left_out = space.base_params(BASE_NO_BETAS)
    assert params == {"optimizer.name": "adamw", "optimizer.lr": 1e-3, "scheduler.warmup": "5%"} and left_out == []
    base = {**BASE_NO_BETAS, "scheduler": {"name": "warmup_cosine", "warmup": "7%"}}
    params, left_out = space.base_params(base)
    assert "scheduler.warmup" not in params and left_out == ["scheduler.warmup"]  # not one of the choices
    study = optuna.create_study()
    study.enqueue_trial(space.base_params(BASE_NO_BETAS)[0])
    assert space.sample(study.ask(), BASE_NO_BETAS) == {"optimizer.name": "adamw", "optimizer.lr": 1e-3,
                                                         "scheduler.warmup": "5%"}


VARIANTS = {"optimizer.name": {"choices": ["adamw", "sgd"]},
            "optimizer.lr@adamw": {"low": 1e-4, "high": 1e-2, "log": True, "when": {"optimizer.name": "adamw"}},
            "optimizer.lr@sgd": {"low": 1e-2, "high": 1.0, "log": True, "when": {"optimizer.name": "sgd"}},
            "optimizer.momentum": {"low": 0.0, "high": 0.9, "when": {"optimizer.name": "sgd"}}}


def test_variants_search_one_key_with_a_range_per_condition():
    space = SearchSpace.from_dict(VARIANTS)
    base = {"optimizer": {"name": "adamw", "lr": 1e-3}}
    space.validate(base)
    assert SearchSpace.from_dict(space.to_dict()) == space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        overrides = space.sample(trial, base)
        name, lr = overrides["optimizer.name"], overrides["optimizer.lr"]  # the config key, never `@label`
        assert set(trial.params) - {"optimizer.name", "optimizer.momentum"} == {f"optimizer.lr@{name}"}
        assert (1e-4 <= lr <= 1e-2) if name == "adamw" else (1e-2 <= lr <= 1.0)
        assert load_config(base, overrides).optimizer.lr == lr
        assert space.overrides_from_params(trial.params, base) == overrides
        seen.add(name)
    assert seen == {"adamw", "sgd"}
    assert space.base_params(base) == ({"optimizer.name": "adamw", "optimizer.lr@adamw": 1e-3}, [])
    assert space.base_params({"optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.5}})[0] == {
        "optimizer.name": "sgd", "optimizer.lr@sgd": 0.5, "optimizer.momentum": 0.5}


@pytest.mark.parametrize("spec, path, words", [
    ({"optimizer.lr@a": {"low": 1e-4, "high": 1e-2}, "optimizer.lr": {"low": 1e-2, "high": 1.0}},
     "search.optimizer.lr", "excludes optimizer.lr@a"),
    ({"optimizer.name": {"choices": ["adamw", "sgd"]},
      "optimizer.lr@a": {"low": 1e-4, "high": 1e-2, "when": {"optimizer.name": ["adamw", "sgd"]}},
      "optimizer.lr@b": {"low": 1e-2, "high": 1.0, "when": {"optimizer.name": "sgd"}}},
     "search.optimizer.lr@b", "both set optimizer.lr"),
    ({"optimizer.lr@": {"low": 1e-4, "high": 1e-2}}, "search.optimizer.lr@", "PATH@LABEL"),
    ({"optimizer.lrr@x": {"low": 1e-4, "high": 1e-2}}, "search.optimizer.lrr@x", "optimizer"),
])
def test_variants_that_could_both_apply_are_rejected(spec, path, words):
    with pytest.raises(ConfigError, match=words) as info:
        SearchSpace.from_dict(spec).validate({"optimizer": {"name": "adamw", "lr": 1e-3}})
    assert info.value.path == path


def test_a_bad_variant_range_is_blamed_on_the_variant():
    spec = {**VARIANTS, "optimizer.lr@sgd": {"low": -1.0, "high": 1.0, "when": {"optimizer.name": "sgd"}}}
    with pytest.raises(ConfigError, match=r"optimizer\.lr: got -1\.0") as info:
        SearchSpace.from_dict(spec).validate({"optimizer": {"name": "adamw", "lr": 1e-3}})
    assert info.value.path == "search.optimizer.lr@sgd" and info.value.value == -1.0


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate_and_match_configs_search_yaml(name):
    space, base = load_search(name)
    space.validate(base)
    path = CONFIGS / f"search_{name}.yaml"
    assert path.is_file(), f"configs/search_{name}.yaml mirrors the {name!r} preset"
    file_space, file_base = load_search(path)
    assert file_space == space
    assert load_config(file_base) == load_config(base)
    # the YAML is also a plain optim config (its `optim:` block), like every other file in configs/
    assert load_config(path) == load_config(base)
    assert yaml.safe_load(path.read_text())["search"] == search_preset(name)["search"]


def test_load_search_errors():
    with pytest.raises(ConfigError, match="Did you mean 'digits'") as info:
        load_search("digts")
    assert info.value.path == "search"
    with pytest.raises(ConfigError, match="a preset"):
        load_search("nope")
    with pytest.raises(ConfigError, match="search"):
        SearchSpace.from_dict({})


def test_sampler_and_pruner_names():
    assert type(make_sampler("tpe", seed=0)).__name__ == "TPESampler"
    assert make_sampler("tpe", seed=0)._n_startup_trials == 10  # Optuna's default without a budget
    assert make_sampler("tpe", seed=0, n_trials=20)._n_startup_trials == 5  # a quarter of a small budget
    assert type(make_sampler("GP", seed=0)).__name__ == "GPSampler"
    assert type(make_pruner("hyperband")).__name__ == "AutoHyperbandPruner"
    assert type(make_pruner("none")).__name__ == "NopPruner"
    with pytest.raises(ConfigError) as info:
        make_sampler("tpee")
    assert info.value.path == "sampler" and info.value.suggestions == ["tpe"] and "random" in str(info.value)
    with pytest.raises(ConfigError) as info:
        make_pruner("hyperbnd")
    assert info.value.path == "pruner" and "hyperband" in info.value.suggestions
    with pytest.raises(ConfigError, match="min_resource"):
        make_pruner("hyperband", min_resource=0)
    with pytest.raises(ConfigError, match="median"):
        make_pruner("median", bogus=1)


def test_auto_hyperband_takes_its_smallest_budget_from_the_first_report(tmp_path):
    pruner = AutoHyperbandPruner()
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", pruner=pruner, direction="maximize")
    for i in range(3):  # validations every 23 optimizer steps, 10 of them
        trial = study.ask()
        for step in range(23, 231, 23):
            trial.report(float(i) + step / 1000, step)
            trial.should_prune()
        study.tell(trial, float(i) + 0.23)
    assert pruner.min_resource == 23
    # a pruner built later (a resumed study) reads the same value from the storage
    again = AutoHyperbandPruner()
    t = study.ask()
    t.report(0.0, 23)
    again.prune(study, study._storage.get_trial(t._trial_id))
    assert again.min_resource == 23


def test_storage_errors_and_redaction(tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve_storage(str(tmp_path / "no" / "such" / "dir" / "x.db"), tmp_path)
    assert info.value.path == "storage" and "opened" in str(info.value)
    with pytest.raises(ConfigError, match="database URL"):
        resolve_storage("optuna", tmp_path)
    assert redact_url("postgresql://me:hunter2@db/optuna") == "postgresql://me:***@db/optuna"
    store, shown = resolve_storage(None, tmp_path)
    assert shown == f"sqlite:///{(tmp_path / 'optuna.db').as_posix()}"


# -- model./data./trainer. keys (issue 14): paths, comparisons, per-element lists, LR scaling ---------------

LAYERS = {
    "model.n_layers": {"low": 1, "high": 3},
    "model.units.0": {"choices": [8, 16]},
    "model.units.1": {"low": 4, "high": 12, "when": {"model.n_layers": {">=": 2}}},
    "model.units.2": {"low": 4, "high": 12, "when": {"model.n_layers": {">=": 3}}},
    "optimizer.lr": {"low": 1e-4, "high": 1e-1, "log": True},
}


def test_per_layer_keys_sample_only_when_their_comparison_holds():
    from lightning_optkit.tuning._space import split_overrides

    space = SearchSpace.from_dict(LAYERS)
    space.validate(BASE)
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert space.to_dict()["model.units.1"]["when"] == {"model.n_layers": {">=": 2}}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    depths = set()
    for _ in range(25):
        trial = study.ask()
        overrides = space.sample(trial, BASE)
        n = overrides["model.n_layers"]
        depths.add(n)
        assert sorted(k for k in trial.params if k.startswith("model.units.")) == [f"model.units.{i}" for i in range(n)]
        optim, targets = split_overrides(overrides)
        assert list(optim) == ["optimizer.lr"] and len(targets["model"]["units"]) == n
        study.tell(trial, 0.0)
    assert depths == {1, 2, 3}


def test_lightningcli_spelling_is_the_same_key():
    space = SearchSpace.from_dict({"model.init_args.n_layers": {"low": 1, "high": 2},
                                   "data.init_args.batch_size": {"choices": [8, 16]},
                                   "model.units.1": {"value": 8, "when": {"model.init_args.n_layers": 2}}})
    assert list(space) == ["model.n_layers", "data.batch_size", "model.units.1"]
    assert space.params["model.units.1"].when == (("model.n_layers", (2,)),)
    with pytest.raises(ConfigError, match="one spec per key") as info:
        SearchSpace.from_dict({"model.n_layers": {"value": 1}, "model.init_args.n_layers": {"value": 2}})
    assert info.value.path == "search.model.n_layers"


@pytest.mark.parametrize(("when", "path", "pattern"), [
    ({"model.n_layers": {"=>": 2}}, "search.model.units.1.when.model.n_layers.=>", r"Did you mean '>='"),
    ({"model.n_layers": {">=": "two"}}, "search.model.units.1.when.model.n_layers.>=", "a finite number"),
    ({"model.n_layers": {}}, "search.model.units.1.when.model.n_layers", "comparisons such as"),
    ({"model.n_layers": {">": 3}}, "search.model.units.1.when.model.n_layers", "some value of model.n_layers"),
    ({"model.n_layers": 7}, "search.model.units.1.when.model.n_layers", r"a comparison such as \{'>=': 2\}"),
    ({"optimizer.lr": 0.01}, "search.model.units.1.when.optimizer.lr", r"optimizer\.lr is a float range"),
])
def test_bad_comparisons(when, path, pattern):
    spec = {"model.n_layers": {"low": 1, "high": 3}, "optimizer.lr": {"low": 1e-3, "high": 1e-1},
            "model.units.1": {"choices": [8], "when": when}}
    with pytest.raises(ConfigError, match=pattern) as info:
        SearchSpace.from_dict(spec)
    assert info.value.path == path


def test_variants_may_exclude_each_other_by_comparison():
    ok = {"model.n_layers": {"low": 1, "high": 4},
          "model.dropout@shallow": {"low": 0.0, "high": 0.2, "when": {"model.n_layers": {"<": 3}}},
          "model.dropout@deep": {"low": 0.2, "high": 0.5, "when": {"model.n_layers": {">=": 3}}}}
    space = SearchSpace.from_dict(ok)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        trial = study.ask()
        overrides = space.sample(trial, BASE)
        assert (overrides["model.dropout"] >= 0.2) == (overrides["model.n_layers"] >= 3)
        study.tell(trial, 0.0)
    overlapping = {**ok, "model.dropout@deep": {"low": 0.2, "high": 0.5, "when": {"model.n_layers": {">=": 2}}}}
    with pytest.raises(ConfigError, match=r"excludes model\.dropout@shallow"):
        SearchSpace.from_dict(overlapping)


def test_element_keys_must_be_contiguous_and_sections_need_an_argument():
    from lightning_optkit.tuning._space import split_overrides

    with pytest.raises(ConfigError, match=r"every element of model\.units below 2") as info:
        split_overrides({"model.units.0": 1, "model.units.2": 3})
    assert info.value.path == "search.model.units.1"
    for bad in ("model", "trainer.0"):
        with pytest.raises(ConfigError, match=r"<argument>") as info:
            SearchSpace.from_dict({bad: {"low": 1, "high": 2}})
        assert info.value.path == f"search.{bad}"


def test_lr_scaling_rules_and_their_errors():
    space = SearchSpace.from_dict({"data.batch_size": {"choices": [16, 64, 256], "lr_scaling": "sqrt", "lr_base": 64},
                                   "trainer.accumulate_grad_batches": {"choices": [1, 4], "lr_scaling": "linear",
                                                                       "lr_base": 1}})
    assert SearchSpace.from_dict(space.to_dict()) == space
    base = {"optimizer": {"name": "sgd", "lr": 0.1}}
    scaled = space.scale_lr({}, {"data.batch_size": 256, "trainer.accumulate_grad_batches": 4}, base)
    assert scaled == {"optimizer.lr": pytest.approx(0.1 * 2 * 4)}
    two_blocks = {"optimizers": [{"params": "a*", "optimizer": {"name": "sgd", "lr": 0.1}},
                                 {"params": "b*", "optimizer": {"name": "adamw", "lr": 1e-3}}]}
    assert space.scale_lr({"optimizers.1.optimizer.lr": 2e-3}, {"data.batch_size": 16}, two_blocks) == {
        "optimizers.0.optimizer.lr": pytest.approx(0.05), "optimizers.1.optimizer.lr": pytest.approx(1e-3)}
    cases = [({"data.batch_size": {"choices": [16], "lr_scaling": "sqr"}}, "search.data.batch_size.lr_scaling",
              r"Did you mean 'sqrt'"),
             ({"optimizer.lr": {"low": 1e-3, "high": 1e-2, "lr_scaling": "sqrt"}}, "search.optimizer.lr.lr_scaling",
              "not on a key of the optim block"),
             ({"data.batch_size": {"choices": [0, 16], "lr_scaling": "sqrt"}}, "search.data.batch_size.lr_scaling",
              "positive numbers"),
             ({"data.batch_size": {"choices": [16], "lr_scaling": "sqrt", "lr_base": -1}},
              "search.data.batch_size.lr_base", "a positive number")]
    for spec, path, pattern in cases:
        with pytest.raises(ConfigError, match=pattern) as info:
            SearchSpace.from_dict(spec)
        assert info.value.path == path


def test_training_and_regularization_presets_against_the_digits_example():
    from lightning_optkit.tuning._sources import ExampleSource
    from lightning_optkit.tuning._targets import validate_targets

    space, base = load_search("digits+training")
    assert {"optimizer.name", "data.batch_size", "trainer.gradient_clip_val"} <= set(space)
    assert load_config(base) == load_config(search_preset("digits")["optim"])
    checked = validate_targets(space, ExampleSource("digits"), {"max_epochs": 1})
    assert checked.params["data.batch_size"].lr_base == 64  # DigitsDataModule's default batch size
    assert checked.params["trainer.accumulate_grad_batches"].lr_base == 1  # the Trainer's default
    validate_targets(load_search("regularization")[0], ExampleSource("digits"), {"max_epochs": 1})
    with pytest.raises(ConfigError, match=r"Did you mean 'model\.dropout'") as info:
        validate_targets(SearchSpace.from_dict({"model.drop_out": {"low": 0.0, "high": 0.5}}), ExampleSource("digits"), {})
    assert info.value.path == "search.model.drop_out"
