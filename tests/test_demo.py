"""The built-in digits example: a deterministic, stratified, standardized datamodule and its model."""

from __future__ import annotations

import pytest
import torch

from lightning_optkit import ConfigError, load_config
from lightning_optkit.demo import (
    DigitsClassifier,
    DigitsDataModule,
    digits_config,
    get_example,
    make_example,
)


def _setup(**kwargs) -> DigitsDataModule:
    dm = DigitsDataModule(**kwargs)
    dm.setup("fit")
    return dm


def test_shapes_dtypes_and_split_sizes():
    dm = _setup(batch_size=32)
    x_train, y_train = dm.train_set.tensors
    x_val, y_val = dm.val_set.tensors
    assert x_train.shape == (1437, 64) and x_val.shape == (360, 64)
    assert x_train.dtype == x_val.dtype == torch.float32
    assert y_train.dtype == y_val.dtype == torch.int64
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 64) and y.shape == (32,)
    assert len(dm.train_dataloader()) == 45 and len(dm.val_dataloader()) == 12


def test_split_is_deterministic_and_depends_on_the_seed():
    a, b, c = _setup(seed=0), _setup(seed=0), _setup(seed=1)
    for left, right in zip(a.train_set.tensors + a.val_set.tensors, b.train_set.tensors + b.val_set.tensors):
        assert torch.equal(left, right)
    assert not torch.equal(a.val_set.tensors[0], c.val_set.tensors[0])


def test_split_is_stratified_and_features_standardized():
    dm = _setup(val_fraction=0.25)
    y_train, y_val = dm.train_set.tensors[1], dm.val_set.tensors[1]
    assert len(y_train) + len(y_val) == 1797
    train_share = torch.bincount(y_train, minlength=10) / len(y_train)
    val_share = torch.bincount(y_val, minlength=10) / len(y_val)
    assert torch.allclose(train_share, val_share, atol=0.01)
    x = dm.train_set.tensors[0].double()
    varying = x.std(0) > 0
    assert varying.sum() >= 60  # a few border pixels are always 0
    assert torch.allclose(x.mean(0), torch.zeros(64, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.std(0, unbiased=False)[varying], torch.ones(int(varying.sum()), dtype=torch.float64),
                          atol=1e-4)


def test_datamodule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        DigitsDataModule(batch_size=0)
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsDataModule(val_fraction=1.5)


def test_model_defaults_to_the_preset_and_has_addressable_layers():
    model = DigitsClassifier(hidden_sizes=(16, 8))
    assert model.hparams["optim"] == digits_config()
    assert load_config(model.hparams["optim"]).optimizer.name == "adamw"
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["backbone.0.0.weight", "backbone.0.0.bias"] and names[-1] == "head.bias"
    assert model(torch.zeros(5, 64)).shape == (5, 10)


def test_make_example_applies_config_overrides_and_args():
    model, data = make_example("digits", overrides={"optimizer.lr": 1e-3},
                               model_args={"hidden_sizes": [32], "dropout": 0.0}, data_args={"batch_size": 16})
    assert model.hparams["optim"]["optimizer"]["lr"] == 1e-3
    assert model.hparams["hidden_sizes"] == [32] and data.batch_size == 16
    assert get_example("Digits").max_epochs >= 5


def test_make_example_validates_before_training():
    with pytest.raises(ConfigError, match=r"optimizer\.lr"):
        make_example("digits", overrides={"optimizer.lr": -1})
    with pytest.raises(ConfigError, match="Did you mean 'digits'"):
        make_example("digit")
