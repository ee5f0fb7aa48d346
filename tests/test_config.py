"""load_config: sources, overrides, round trip, durations and did-you-mean messages."""

from __future__ import annotations

import math
import pickle

import pytest
import yaml

from lightning_optkit import ConfigError, OptimConfig, build_optimizers, load_config
from lightning_optkit.config import Duration, TrainingLength, parse_duration

YAML_TEXT = """\
optimizer:
  name: adamw
  lr: 3.0e-4
  weight_decay: 0.05
  betas: [0.9, 0.95]
param_groups:
  - params: "backbone.*"
    lr_scale: 0.1
  - params: ["head.*"]
    name: head
no_weight_decay: auto
scheduler:
  name: warmup_cosine
  warmup: 5%
  min_lr_ratio: 0.01
loss: {name: cross_entropy, label_smoothing: 0.1}
"""


@pytest.fixture
def yaml_path(tmp_path):
    path = tmp_path / "optim.yaml"
    path.write_text(YAML_TEXT)
    return path


# -- sources ---------------------------------------------------------------------------------------


def test_yaml_file(yaml_path):
    cfg = load_config(yaml_path)
    assert isinstance(cfg, OptimConfig)
    assert cfg.optimizer.name == "adamw"
    assert cfg.optimizer.lr == pytest.approx(3e-4)
    assert cfg.optimizer.kwargs == {"weight_decay": 0.05, "betas": [0.9, 0.95]}
    assert [r.params for r in cfg.param_groups] == ["backbone.*", ["head.*"]]
    assert cfg.param_groups[0].lr_scale == 0.1
    assert cfg.scheduler.name == "warmup_cosine"
    assert cfg.scheduler.warmup == "5%"
    assert cfg.loss.name == "cross_entropy"
    assert load_config(str(yaml_path)) == cfg


def test_yaml_safe_loader_refuses_python_tags(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"optimizer: !!python/object/apply:os.makedirs ['{marker}']\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert not marker.exists(), "a python tag in a config was executed"
    assert str(path) in str(info.value)
    path.write_text("optimizer: !!python/object:collections.OrderedDict {name: adamw}\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_yaml_syntax_error_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("optimizer: {name: adamw\n  lr: [\n")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="existing YAML file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError):
        load_config(tmp_path / "empty.yaml")


def test_empty_and_non_mapping_sources(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(empty)
    assert "optimizer" in str(info.value)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError):
        load_config(listy)
    with pytest.raises(ConfigError):
        load_config(42)  # type: ignore[arg-type]


def test_dict_and_optimconfig_sources():
    data = {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}
    cfg = load_config(data)
    assert cfg.optimizer.kwargs == {"momentum": 0.9}
    assert data == {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}, "the input dict was modified"
    again = load_config(cfg)
    assert again == cfg
    assert again is not cfg
    assert load_config(cfg, {"optimizer.lr": 0.5}).optimizer.lr == 0.5
    assert cfg.optimizer.lr == 0.1, "overrides must not modify the source config"


def test_optim_key_is_unwrapped(tmp_path):
    inner = {"optimizer": {"name": "adam", "lr": 1e-3}}
    assert load_config({"optim": inner}) == load_config(inner)
    # an hparams.yaml written by save_hyperparameters(): `optim` next to the model's other arguments
    hparams = tmp_path / "hparams.yaml"
    hparams.write_text(yaml.safe_dump({"optim": inner, "hidden": 8}))
    assert load_config(hparams) == load_config(inner)
    # a misspelt top-level key is not mistaken for an hparams file
    with pytest.raises(ConfigError) as info:
        load_config({"optim": inner, "optimizer": {"name": "adam"}})
    assert info.value.path == "optim"


def test_dotted_overrides(yaml_path):
    cfg = load_config(yaml_path, {"optimizer.lr": 1e-3, "param_groups.0.lr_scale": 0.2})
    assert cfg.optimizer.lr == 1e-3
    assert cfg.param_groups[0].lr_scale == 0.2
    assert cfg.param_groups[1].lr_scale is None
    cfg = load_config(yaml_path, {"scheduler.warmup": "2 epochs", "optimizer.eps": 1e-6, "loss": None})
    assert cfg.scheduler.warmup == "2 epochs"
    assert cfg.optimizer.kwargs["eps"] == 1e-6
    assert cfg.loss is None, "an override of None deletes the key"
    cfg = load_config({"optimizer": {"name": "adamw"}}, {"scheduler.name": "linear"})
    assert cfg.scheduler.name == "linear", "missing intermediate mappings are created"


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"optimizer.lr": -1.0}, "optimizer.lr"),
        ({"param_groups.5.lr_scale": 0.2}, "param_groups.5"),
        ({"param_groups.0.lr_scale": "fast"}, "param_groups.0.lr_scale"),
        ({"optimizer..lr": 1.0}, "optimizer..lr"),
        ({"optimizer.lr.x": 1.0}, "optimizer.lr"),
        ({"scheduler.warmup": "5 epoks"}, "scheduler.warmup"),
    ],
)
def test_bad_overrides(yaml_path, overrides, path):
    with pytest.raises(ConfigError) as info:
        load_config(yaml_path, overrides)
    assert path in str(info.value)


ROUND_TRIP = [
    YAML_TEXT,
    {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True}},
    {"optimizer": {"name": "adamw", "betas": (0.9, 0.95)}, "param_groups": [{"params": ("a.*", "re:^b"), "betas": (0.8, 0.9)}]},
    {
        "optimizers": [
            {"params": "gen.*", "optimizer": {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999]},
             "scheduler": {"name": "linear", "warmup": 10}},
            {"params": "disc.*", "optimizer": {"name": "sgd", "lr": 0.01}, "no_weight_decay": "none"},
        ]
    },
    {"optimizer": {"name": "adam"}, "layer_decay": 0.75, "no_weight_decay": ["*.bias", "pos"],
     "scheduler": {"name": "plateau", "monitor": "val_loss", "patience": 2, "warmup": "1 epochs"}},
    {"optimizer": {"name": "adamw"}, "scheduler": {"name": "multistep", "milestones": ["1 epochs", 15], "gamma": 0.5}},
    {"optimizer": {"name": "adamw"}, "scheduler": {"name": "onecycle", "pct_start": 0.25, "three_phase": True}},
    {"optimizer": {"name": "adamw"},
     "scheduler": {"name": "torch.optim.lr_scheduler.StepLR", "step_size": 3, "interval": "epoch"}},
]


@pytest.mark.parametrize("source", ROUND_TRIP)
def test_round_trip(source):
    cfg = load_config(yaml.safe_load(source) if isinstance(source, str) else source)
    data = cfg.to_dict()
    assert load_config(data) == cfg
    assert load_config(cfg) == cfg
    assert load_config(yaml.safe_load(yaml.safe_dump(data))) == cfg
    assert load_config(data).content_hash() == cfg.content_hash()
    assert pickle.loads(pickle.dumps(cfg)) == cfg


# -- durations ------------------------------------------------------------------------------------

LENGTH = TrainingLength(total_steps=1000, steps_per_epoch=(100,) * 10)


@pytest.mark.parametrize(
    ("value", "parsed", "steps"),
    [
        (0, Duration(0.0, "steps"), 0),
        (500, Duration(500.0, "steps"), 500),
        ("500", Duration(500.0, "steps"), 500),
        ("500 steps", Duration(500.0, "steps"), 500),
        ("1 step", Duration(1.0, "steps"), 1),
        ("2 epochs", Duration(2.0, "epochs"), 200),
        ("1 epoch", Duration(1.0, "epochs"), 100),
        ("0.5 epochs", Duration(0.5, "epochs"), 50),
        ("2 EPOCHS", Duration(2.0, "epochs"), 200),
        ("5%", Duration(0.05, "fraction"), 50),
        (" 12.5 % ", Duration(0.125, "fraction"), 125),
        (0.05, Duration(0.05, "fraction"), 50),
        (0.5, Duration(0.5, "fraction"), 500),
    ],
)
def test_durations(value, parsed, steps):
    assert parse_duration(value) == parsed
    assert parse_duration(value).steps(LENGTH) == steps
    cfg = load_config({"optimizer": {"name": "adamw"}, "scheduler": {"name": "warmup_cosine", "warmup": value}})
    assert cfg.scheduler.warmup == value


def test_epochs_resolve_with_varying_epoch_lengths():
    length = TrainingLength(total_steps=25, steps_per_epoch=(10, 5, 5, 5))
    assert parse_duration("1 epochs").steps(length) == 10
    assert parse_duration("2 epochs").steps(length) == 15
    assert parse_duration("1.5 epochs").steps(length) == 12  # 10 + round(0.5 * 5)


@pytest.mark.parametrize(
    "value",
    [-1, -0.5, "5 epoks", 1.5, 1.0, 2.0, True, False, None, "100%", "150%", "-5%", "-5 steps", "2.5 steps",
     math.nan, math.inf, -math.inf, "", "epochs", "five", [10], {"steps": 10}, "1e3 epochs 2"],
)
def test_bad_durations_name_scheduler_warmup(value):
    with pytest.raises(ConfigError) as info:
        parse_duration(value, "scheduler.warmup")
    assert info.value.path == "scheduler.warmup"
    with pytest.raises(ConfigError) as info:
        load_config({"optimizer": {"name": "adamw"}, "scheduler": {"name": "warmup_cosine", "warmup": value}})
    err = info.value
    assert isinstance(err, ValueError)
    assert err.path == "scheduler.warmup"
    assert str(err).startswith("scheduler.warmup: got ")


def test_duration_errors_are_explained():
    with pytest.raises(ConfigError) as info:
        load_config({"optimizer": {"name": "adamw"}, "scheduler": {"name": "linear", "warmup": 2.0}})
    assert "2 epochs" in str(info.value), "a whole float should hint at steps vs epochs"
    with pytest.raises(ConfigError, match=r"100%"):
        load_config({"optimizer": {"name": "adamw"}, "scheduler": {"name": "linear", "warmup": "100%"}})


def test_epochs_without_epoch_length_name_the_key():
    with pytest.raises(ConfigError) as info:
        parse_duration("2 epochs").steps(TrainingLength(total_steps=100), "scheduler.warmup")
    assert info.value.path == "scheduler.warmup"


# -- did-you-mean ---------------------------------------------------------------------------------

BASE = {"optimizer": {"name": "adamw", "lr": 1e-3}}


@pytest.mark.parametrize(
    ("config", "path", "suggestion"),
    [
        ({"optimzer": {"name": "adamw"}}, "optimzer", "optimizer"),
        ({**BASE, "schedular": {"name": "linear"}}, "schedular", "scheduler"),
        ({**BASE, "param_group": []}, "param_group", "param_groups"),
        ({**BASE, "no_weight_decy": "auto"}, "no_weight_decy", "no_weight_decay"),
        ({"optimizer": {"name": "adamm"}}, "optimizer.name", "adam"),
        ({"optimizer": {"name": "AdamWW"}}, "optimizer.name", "adamw"),
        ({"optimizer": {"name": "sgdd"}}, "optimizer.name", "sgd"),
        ({**BASE, "scheduler": {"name": "warmup_cosin"}}, "scheduler.name", "warmup_cosine"),
        ({**BASE, "scheduler": {"name": "cosine_restart"}}, "scheduler.name", "cosine_restarts"),
        ({**BASE, "scheduler": {"name": "plateu", "monitor": "val_loss"}}, "scheduler.name", "plateau"),
        ({"optimizer": {"name": "adamw", "weight_decai": 0.1}}, "optimizer.weight_decai", "weight_decay"),
        ({"optimizer": {"name": "sgd", "momentun": 0.9}}, "optimizer.momentun", "momentum"),
        ({"optimizer": {"name": "sgd", "lrr": 0.9}}, "optimizer.lrr", "lr"),
        ({**BASE, "param_groups": [{"params": "a", "lr_scalee": 0.1}]}, "param_groups.0.lr_scalee", "lr_scale"),
        ({**BASE, "param_groups": [{"params": "a", "betass": [0.9, 0.9]}]}, "param_groups.0.betass", "betas"),
        ({**BASE, "param_groups": [{"params": "a", "frozn": True}]}, "param_groups.0.frozn", "frozen"),
        ({**BASE, "scheduler": {"name": "warmup_cosine", "warmpu": 10}}, "scheduler.warmpu", "warmup"),
        ({**BASE, "scheduler": {"name": "warmup_cosine", "min_lr_ration": 0.1}}, "scheduler.min_lr_ration",
         "min_lr_ratio"),
        ({**BASE, "scheduler": {"name": "step", "step_sise": 3}}, "scheduler.step_sise", "step_size"),
        ({**BASE, "scheduler": {"name": "onecycle", "pct_strat": 0.3}}, "scheduler.pct_strat", "pct_start"),
        ({**BASE, "scheduler": {"name": "plateau", "monitor": "v", "patiense": 3}}, "scheduler.patiense",
         "patience"),
        ({**BASE, "scheduler": {"name": "linear", "interval": "epochs"}}, "scheduler.interval", "epoch"),
        ({"optimizers": [{"params": "*", "optimizer": {"name": "adam"}, "schedular": {}}]}, "optimizers.0.schedular",
         "scheduler"),
    ],
)
def test_did_you_mean(config, path, suggestion):
    with pytest.raises(ConfigError) as info:
        load_config(config)
    err = info.value
    assert err.path == path
    assert suggestion in err.suggestions
    assert f"'{suggestion}'" in str(err).split("Did you mean", 1)[1]


def test_error_message_shape():
    with pytest.raises(ConfigError) as info:
        load_config({"optimizer": {"name": "adamw", "lr": -3.0}})
    err = info.value
    assert str(err).startswith("optimizer.lr: got -3.0; expected ")
    assert err.value == -3.0
    assert "Traceback" not in str(err)
    clone = pickle.loads(pickle.dumps(err))
    assert isinstance(clone, ConfigError)
    assert str(clone) == str(err)
    assert clone.path == err.path


def test_required_keys():
    with pytest.raises(ConfigError) as info:
        load_config({})
    assert "optimizer" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config({"optimizer": {"lr": 0.1}})
    assert info.value.path == "optimizer.name"
    with pytest.raises(ConfigError) as info:
        load_config({**BASE, "optimizers": [{"params": "*", "optimizer": {"name": "sgd"}}]})
    with pytest.raises(ConfigError) as info:
        load_config({**BASE, "scheduler": {"name": "step"}})
    assert info.value.path == "scheduler.step_size"


def test_loaded_config_builds(yaml_path, tiny_net, length20):
    optimizers, schedulers = build_optimizers(tiny_net, load_config(yaml_path), length=length20)
    assert len(optimizers) == 1
    assert schedulers[0]["interval"] == "step"


@pytest.mark.parametrize("params", [[], "", ["  "]])
def test_an_empty_params_list_of_an_optimizer_block_is_a_config_error(params):
    # Found by the mutation test: `optimizers.0.params: []` used to pass validation and then crash
    # with an IndexError while the parameter groups were built.
    cfg = {"optimizers": [{"params": params, "optimizer": {"name": "adam", "lr": 2e-4}},
                          {"params": "head.*", "optimizer": {"name": "sgd", "lr": 0.01}}]}
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert err.value.path == "optimizers.0.params"
