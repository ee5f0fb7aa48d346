"""The optimizer registry: every torch.optim class by name, aliases, dotted paths, kwargs checks, LBFGS."""

from __future__ import annotations

import inspect

import lightning as L
import pytest
import torch
from torch import nn

from lightning_optkit import ConfigError, build_optimizers, load_config
from lightning_optkit.optim import optimizer_names, resolve_optimizer

TORCH_OPTIMIZERS = sorted(
    (name, cls)
    for name, cls in vars(torch.optim).items()
    if inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer
)


def test_enumeration_is_not_empty():
    names = {n for n, _ in TORCH_OPTIMIZERS}
    assert {"SGD", "Adam", "AdamW", "LBFGS", "SparseAdam"} <= names
    assert sorted(n.lower() for n in names) == optimizer_names()


class _EmbeddingBag(nn.Module):
    """Only sparse-gradient parameters, for SparseAdam."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4, sparse=True)

    def loss(self) -> torch.Tensor:
        return self.embed(torch.tensor([1, 2, 3])).pow(2).sum()


class _Generic(nn.Module):
    """A generic small model: weights, biases and a norm layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8))
        self.head = nn.Linear(8, 1)

    def loss(self) -> torch.Tensor:
        x = torch.linspace(-1, 1, 12).reshape(3, 4)
        return (self.head(torch.tanh(self.body(x))) - 1.0).pow(2).mean()


class _Matrices(nn.Module):
    """2-D parameters only, for Muon."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8, bias=False), nn.Linear(8, 8, bias=False))
        self.head = nn.Linear(8, 1, bias=False)

    def loss(self) -> torch.Tensor:
        x = torch.linspace(-1, 1, 12).reshape(3, 4)
        return (self.head(torch.tanh(self.body(x))) - 1.0).pow(2).mean()


# Models a class needs instead of the generic one, and the ConfigError it gives on the generic one.
SPECIAL_MODEL = {"SparseAdam": _EmbeddingBag, "Muon": _Matrices}
GENERIC_ERROR = {
    "SparseAdam": ("optimizer.name", "sparse"),
    "Muon": ("optimizer", "2D parameters"),
}


def _step(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = model.loss()
        loss.backward()
        return loss

    if isinstance(optimizer, torch.optim.LBFGS):
        optimizer.step(closure)
    else:
        closure()
        optimizer.step()


@pytest.mark.parametrize(("name", "cls"), TORCH_OPTIMIZERS, ids=[n for n, _ in TORCH_OPTIMIZERS])
def test_every_torch_optimizer_by_name(name, cls):
    for spelling in (name, name.lower(), name.upper(), f" {name} "):
        assert resolve_optimizer(spelling).cls is cls
        assert load_config({"optimizer": {"name": spelling}}).optimizer.name == spelling

    torch.manual_seed(0)
    model = SPECIAL_MODEL.get(name, _Generic)()
    optimizer = build_optimizers(model, {"optimizer": {"name": name.lower(), "lr": 1e-2}})
    assert type(optimizer) is cls
    before = [p.detach().clone() for p in model.parameters()]
    _step(optimizer, model)
    _step(optimizer, model)
    after = list(model.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after)), f"{name} did not change any parameter"
    assert all(torch.isfinite(p).all() for p in after)
    owned = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(owned) == len({id(p) for p in owned}) == len(list(model.parameters()))

    if name in GENERIC_ERROR:
        path, words = GENERIC_ERROR[name]
        with pytest.raises(ConfigError) as info:
            build_optimizers(_Generic(), {"optimizer": {"name": name}})
        assert info.value.path == path
        assert words in str(info.value)


def test_sparse_adam_beside_a_dense_optimizer():
    class Recommender(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4, sparse=True)
            self.head = nn.Linear(4, 1)

    model = Recommender()
    optimizers, _ = build_optimizers(model, {"optimizers": [
        {"params": "embed.*", "optimizer": {"name": "sparse_adam", "lr": 1e-2}},
        {"params": "*", "optimizer": {"name": "adamw", "lr": 1e-2}},
    ]})
    assert [type(o).__name__ for o in optimizers] == ["SparseAdam", "AdamW"]
    model.head(model.embed(torch.tensor([1, 2]))).sum().backward()
    for opt in optimizers:
        opt.step()


def test_muon_for_matrices_adamw_for_the_rest():
    model = _Generic()
    optimizers, schedulers = build_optimizers(model, {"optimizers": [
        {"params": ["body.0.weight", "body.2.weight"], "optimizer": {"name": "muon", "lr": 0.02}},
        {"params": "*", "optimizer": {"name": "adamw", "lr": 1e-3}},
    ]})
    assert schedulers == []
    assert [type(o).__name__ for o in optimizers] == ["Muon", "AdamW"]
    model.loss().backward()
    for opt in optimizers:
        opt.step()


@pytest.mark.parametrize(
    ("name", "cls", "expected"),
    [
        ("nesterov", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
        ("Nesterov", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
        ("momentum", torch.optim.SGD, {"momentum": 0.9, "nesterov": False}),
        ("sgd", torch.optim.SGD, {"momentum": 0, "nesterov": False}),
        ("adam_w", torch.optim.AdamW, {}),
        ("Adam-W", torch.optim.AdamW, {}),
        ("rms_prop", torch.optim.RMSprop, {}),
        ("l-bfgs", torch.optim.LBFGS, {}),
        ("L_BFGS", torch.optim.LBFGS, {}),
        ("nadamw", torch.optim.NAdam, {"decoupled_weight_decay": True}),
        ("radamw", torch.optim.RAdam, {"decoupled_weight_decay": True}),
        ("sparse_adam", torch.optim.SparseAdam, {}),
    ],
)
def test_aliases(name, cls, expected):
    model = SPECIAL_MODEL.get(cls.__name__, _Generic)()
    opt = build_optimizers(model, {"optimizer": {"name": name, "lr": 0.1}})
    assert type(opt) is cls
    for key, value in expected.items():
        assert all(g[key] == value for g in opt.param_groups), key


def test_alias_defaults_yield_to_the_config():
    opt = build_optimizers(_Generic(), {"optimizer": {"name": "nesterov", "lr": 0.1, "momentum": 0.8}})
    assert {g["momentum"] for g in opt.param_groups} == {0.8}
    assert {g["nesterov"] for g in opt.param_groups} == {True}


class ScaledSGD(torch.optim.Optimizer):
    """A custom optimizer in the test module, reachable by dotted path."""

    def __init__(self, params, lr: float = 0.1, scale: float = 1.0, weight_decay: float = 0.0) -> None:
        if scale <= 0:
            raise ValueError(f"Invalid scale: {scale}")
        super().__init__(params, {"lr": lr, "scale": scale, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad + group["weight_decay"] * p, alpha=-group["lr"] * group["scale"])
        return loss


class AnyKwargsSGD(torch.optim.SGD):
    def __init__(self, params, lr: float = 0.1, **kwargs) -> None:
        super().__init__(params, lr=lr, momentum=kwargs.pop("momentum", 0.0))


def test_dotted_paths():
    opt = build_optimizers(_Generic(), {"optimizer": {"name": "torch.optim.AdamW", "lr": 1e-3}})
    assert type(opt) is torch.optim.AdamW

    model = _Generic()
    path = f"{__name__}.ScaledSGD"
    opt = build_optimizers(model, {"optimizer": {"name": path, "lr": 0.05, "scale": 2.0, "weight_decay": 0.1},
                                   "param_groups": [{"params": "head.*", "lr_scale": 0.5}]})
    assert type(opt) is ScaledSGD
    assert {g["scale"] for g in opt.param_groups} == {2.0}
    head = next(g for g in opt.param_groups if g["name"] == "head")
    assert head["lr"] == pytest.approx(0.025)
    no_decay = [g for g in opt.param_groups if g["name"].endswith("no_decay")]
    assert no_decay and all(g["weight_decay"] == 0.0 for g in no_decay)
    before = model.head.weight.detach().clone()
    _step(opt, model)
    assert not torch.equal(before, model.head.weight)

    with pytest.raises(ConfigError) as info:
        load_config({"optimizer": {"name": path, "scael": 2.0}})
    assert info.value.path == "optimizer.scael"
    assert "scale" in info.value.suggestions
    with pytest.raises(ConfigError) as info:
        build_optimizers(_Generic(), {"optimizer": {"name": path, "scale": -1.0}})
    assert info.value.path == "optimizer"
    assert "Invalid scale" in str(info.value)
    # a **kwargs constructor: keys cannot be checked up front, but pass through
    opt = build_optimizers(_Generic(), {"optimizer": {"name": f"{__name__}.AnyKwargsSGD", "momentum": 0.5}})
    assert opt.param_groups[0]["momentum"] == 0.5


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("torch.optim.AdamWW", "exists in module"),
        ("torch.nn.Linear", "subclass of torch.optim.Optimizer"),
        ("no_such_package_xyz.Optim", "installed"),
        (f"{__name__}.NotThere", "exists in module"),
        ("os.path", "subclass of torch.optim.Optimizer"),
    ],
)
def test_bad_dotted_paths(name, words):
    with pytest.raises(ConfigError) as info:
        load_config({"optimizer": {"name": name}})
    assert info.value.path == "optimizer.name"
    assert words in str(info.value)


def test_unknown_names_and_kwargs():
    with pytest.raises(ConfigError) as info:
        load_config({"optimizer": {"name": "adamm"}})
    assert info.value.path == "optimizer.name"
    assert "adam" in info.value.suggestions
    assert "adamw" in str(info.value), "the error lists the valid names"
    with pytest.raises(ConfigError) as info:
        load_config({"optimizer": {"name": "adamw", "weight_decai": 0.1}})
    assert info.value.path == "optimizer.weight_decai"
    assert info.value.suggestions[0] == "weight_decay"
    assert "Did you mean 'weight_decay'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config({"optimizer": {"name": "sgd", "betas": [0.9, 0.99]}})
    assert info.value.path == "optimizer.betas"
    with pytest.raises(ConfigError) as info:
        load_config({"optimizer": {"name": "lbfgs"}, "param_groups": [{"params": "*", "weight_decay": 0.1}]})
    assert info.value.path == "param_groups.0.weight_decay"


@pytest.mark.parametrize(
    ("optimizer", "path", "words"),
    [
        ({"name": "adamw", "betas": [2.0, 0.9]}, "optimizer.betas", "beta"),
        ({"name": "adamw", "betas": [0.9]}, "optimizer.betas", "index"),
        ({"name": "adamw", "eps": -1.0}, "optimizer.eps", "epsilon"),
        ({"name": "adamw", "weight_decay": -0.1}, "optimizer.weight_decay", "weight_decay"),
        ({"name": "sgd", "momentum": -0.5}, "optimizer.momentum", "momentum"),
        ({"name": "sgd", "nesterov": True}, "optimizer.nesterov", "Nesterov"),
        ({"name": "nesterov", "momentum": 0.0}, "optimizer.momentum", "Nesterov"),
        ({"name": "rmsprop", "alpha": -1.0}, "optimizer.alpha", "alpha"),
        ({"name": "adamw", "betas": "fast"}, "optimizer.betas", "AdamW"),
        ({"name": "sgd", "momentum": [0.9]}, "optimizer.momentum", "SGD"),
        ({"name": "adagrad", "lr_decay": -1}, "optimizer.lr_decay", "lr_decay"),
    ],
)
def test_values_torch_rejects(optimizer, path, words):
    cfg = load_config({"optimizer": optimizer})  # pydantic cannot know torch's ranges
    with pytest.raises(ConfigError) as info:
        build_optimizers(_Generic(), cfg)
    err = info.value
    assert err.path == path, str(err)  # at `optimizer`, naming the key torch refused
    assert words.lower() in str(err).lower()
    assert "Traceback" not in str(err)


def test_group_values_torch_rejects():
    with pytest.raises(ConfigError) as info:
        build_optimizers(_Generic(), {"optimizer": {"name": "adamw"},
                                      "param_groups": [{"params": "head.*", "betas": [2.0, 0.9]}]})
    assert info.value.path == "param_groups.0.betas"
    with pytest.raises(ConfigError) as info:
        build_optimizers(_Generic(), {"optimizer": {"name": "sgd", "lr": 0.1},
                                      "param_groups": [{"params": "head.*"}, {"params": "body.*", "momentum": -1}]})
    assert info.value.path == "param_groups.1.momentum"


class LBFGSRegression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.optim_config = {"optimizer": {"name": "lbfgs", "lr": 0.5, "max_iter": 5, "history_size": 10}}
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.closure_calls = 0

    def training_step(self, batch, batch_idx):
        self.closure_calls += 1
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return build_optimizers(self, self.optim_config)


def test_lbfgs_in_a_trainer(fast_trainer_kwargs, make_regression_loader):
    torch.manual_seed(0)
    loader = make_regression_loader(n=64, batch_size=64)
    x, y = loader.dataset.tensors
    model = LBFGSRegression()
    with torch.no_grad():
        before = nn.functional.mse_loss(model.net(x), y).item()
    trainer = L.Trainer(max_epochs=5, **fast_trainer_kwargs)
    trainer.fit(model, loader)
    with torch.no_grad():
        after = nn.functional.mse_loss(model.net(x), y).item()
    assert isinstance(trainer.optimizers[0], torch.optim.LBFGS)
    assert trainer.global_step == 5
    assert model.closure_calls > 5, "LBFGS evaluates the closure several times per step"
    assert after < 0.5 * before
