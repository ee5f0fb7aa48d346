"""lightning_optkit.losses: registry, build_loss, focal, Dice, composites, config validation."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lightning_optkit.losses as losses_pkg
from lightning_optkit.config import ConfigError, LossConfig, load_config
from lightning_optkit.losses import (
    BinaryDiceLoss,
    BinaryFocalLoss,
    DiceLoss,
    FocalLoss,
    LossInfo,
    UncertaintyWeightedLoss,
    WeightedSumLoss,
    available_losses,
    build_loss,
    get_loss_info,
    register_loss,
    resolve_loss,
    validate_loss_config,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class MyLoss(nn.Module):
    """A user loss reachable by dotted path (``f"{__name__}.MyLoss"``)."""

    def __init__(self, scale: float = 1.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.scale = scale
        self.register_buffer("weight", weight)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = 1.0 if self.weight is None else self.weight
        return self.scale * (w * (input - target) ** 2).mean()


def _error(config, match: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build_loss(config)
    assert match in str(info.value), str(info.value)
    return info.value


# -- registry ---------------------------------------------------------------------------------------

_NEEDS_KWARGS = {
    "linear_cross_entropy": {"in_features": 4, "num_classes": 3},
    "weighted_sum": {"losses": [{"name": "mse"}]},
    "uncertainty_weighted": {"num_tasks": 2},
}


@pytest.mark.parametrize("name", available_losses())
def test_every_registry_entry_builds(name: str) -> None:
    module = build_loss({"name": name, **_NEEDS_KWARGS.get(name, {})})
    assert isinstance(module, nn.Module)
    info = get_loss_info(name)
    assert info is not None and info.name == name
    assert isinstance(module, info.load())


def test_registry_covers_every_torch_loss() -> None:
    skipped = {"AdaptiveLogSoftmaxWithLoss", "NLLLoss2d"}  # not a loss / deprecated alias of NLLLoss
    torch_losses = [
        n for n in dir(nn) if n.endswith("Loss") and isinstance(getattr(nn, n), type) and n not in skipped
    ]
    assert len(torch_losses) >= 20
    registered = {get_loss_info(n).load() for n in available_losses()}
    for cls_name in torch_losses:
        info = get_loss_info(cls_name)
        assert info is not None, cls_name
        assert getattr(nn, cls_name) in registered


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("ce", nn.CrossEntropyLoss),
        ("crossentropy", nn.CrossEntropyLoss),
        ("CrossEntropyLoss", nn.CrossEntropyLoss),
        ("Cross-Entropy", nn.CrossEntropyLoss),
        ("CROSS_ENTROPY", nn.CrossEntropyLoss),
        ("bce_logits", nn.BCEWithLogitsLoss),
        ("nll", nn.NLLLoss),
        ("MSE", nn.MSELoss),
        ("l2", nn.MSELoss),
        ("mae", nn.L1Loss),
        ("kl", nn.KLDivLoss),
        ("triplet", nn.TripletMarginLoss),
        ("sigmoid_focal", BinaryFocalLoss),
        ("FocalLoss", FocalLoss),
        ("soft_dice", DiceLoss),
        ("torch.nn.MSELoss", nn.MSELoss),
        ("torch.nn.modules.loss.HuberLoss", nn.HuberLoss),
    ],
)
def test_names_are_case_insensitive_with_aliases(name: str, cls: type) -> None:
    assert type(build_loss(name)) is cls


def test_dotted_path_to_user_class_and_registered_torch_class() -> None:
    mine = build_loss({"name": f"{__name__}.MyLoss", "scale": 2.0, "weight": [1.0, 3.0]})
    assert isinstance(mine, MyLoss) and mine.scale == 2.0
    assert torch.equal(mine.weight, torch.tensor([1.0, 3.0]))
    assert "weight" not in mine.state_dict()  # annotated Tensor kwarg -> non-persistent buffer
    x, y = torch.randn(4, 2), torch.randn(4, 2)
    assert torch.allclose(mine(x, y), 2.0 * (torch.tensor([1.0, 3.0]) * (x - y) ** 2).mean())
    # a dotted path to a registered class gets the record (weight list -> tensor, non-persistent)
    info, cls = resolve_loss("torch.nn.modules.loss.CrossEntropyLoss")
    assert info is not None and info.name == "cross_entropy" and cls is nn.CrossEntropyLoss
    ce = build_loss({"name": "torch.nn.CrossEntropyLoss", "weight": [1, 2, 3]})
    assert ce.weight.dtype == torch.float32 and list(ce.state_dict()) == []
    _error({"name": f"{__name__}.MyLoss", "scal": 2.0}, "loss.scal")


def test_register_loss_and_clashes() -> None:
    info = register_loss(
        LossInfo("test_only_smooth", "torch.nn.SmoothL1Loss", aliases=("tos",)), override=True
    )
    assert get_loss_info("TOS") is info
    assert isinstance(build_loss({"name": "tos", "beta": 0.5}), nn.SmoothL1Loss)
    with pytest.raises(ValueError, match="already registered"):
        register_loss(LossInfo("test_only_other", "torch.nn.L1Loss", aliases=("ce",)))
    assert get_loss_info("ce").name == "cross_entropy" and get_loss_info("smooth_l1").name == "smooth_l1"
    assert get_loss_info("test_only_other") is None


# -- torch losses match torch.nn.functional ----------------------------------------------------------


def test_cross_entropy_kwargs_match_functional() -> None:
    x, t = torch.randn(32, 4, requires_grad=True), torch.randint(0, 4, (32,))
    t[:6] = 3
    loss = build_loss(
        {"name": "cross_entropy", "label_smoothing": 0.1, "weight": [1, 2, 0.5, 1], "ignore_index": 3}
    )
    expected = F.cross_entropy(
        x, t, weight=torch.tensor([1, 2, 0.5, 1.0]), ignore_index=3, label_smoothing=0.1
    )
    assert torch.equal(loss(x, t), expected)
    cfg = LossConfig(name="ce", label_smoothing=0.2, reduction="sum")
    assert torch.equal(build_loss(cfg)(x, t), F.cross_entropy(x, t, label_smoothing=0.2, reduction="sum"))


@pytest.mark.parametrize("pos_weight", [2.5, [1.0, 3.0, 0.5]])
def test_bce_with_logits_pos_weight(pos_weight) -> None:
    x, t = torch.randn(8, 3), torch.randint(0, 2, (8, 3)).float()
    loss = build_loss({"name": "bce_with_logits", "pos_weight": pos_weight})
    expected = F.binary_cross_entropy_with_logits(x, t, pos_weight=torch.as_tensor(pos_weight))
    assert torch.equal(loss(x, t), expected)
    assert list(loss.state_dict()) == []


def test_triplet_with_distance_function_by_dotted_path() -> None:
    loss = build_loss(
        {
            "name": "triplet_margin_with_distance",
            "distance_function": "torch.nn.PairwiseDistance",
            "margin": 0.5,
        }
    )
    a, p, n = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    assert torch.allclose(loss(a, p, n), F.triplet_margin_loss(a, p, n, margin=0.5))


def test_tensor_kwargs_are_non_persistent_buffers_that_move() -> None:
    class Net(nn.Module):
        def __init__(self, loss: nn.Module) -> None:
            super().__init__()
            self.layer = nn.Linear(3, 3)
            self.loss_fn = loss

    plain = Net(build_loss("cross_entropy"))
    weighted = Net(build_loss({"name": "cross_entropy", "weight": [1.0, 2.0, 3.0]}))
    assert list(weighted.state_dict()) == list(plain.state_dict()) == ["layer.weight", "layer.bias"]
    weighted.to(torch.float64)
    assert weighted.loss_fn.weight.dtype == torch.float64
    assert dict(weighted.named_buffers())["loss_fn.weight"].dtype == torch.float64
    weighted.load_state_dict(plain.state_dict())  # strict load works both ways
    bce = build_loss({"name": "bce_with_logits", "pos_weight": [2.0], "weight": 0.5}).to(torch.float64)
    assert bce.pos_weight.dtype == bce.weight.dtype == torch.float64 and list(bce.state_dict()) == []
    focal = build_loss({"name": "focal", "alpha": [1.0, 2.0]}).to(torch.float64)
    assert focal.alpha.dtype == torch.float64 and list(focal.state_dict()) == []


# -- focal ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.15])
@pytest.mark.parametrize("alpha", [None, [1.0, 2.0, 0.5, 1.5]])
def test_focal_gamma0_equals_cross_entropy(smoothing, alpha) -> None:
    x, t = torch.randn(16, 4, 3, 3), torch.randint(0, 4, (16, 3, 3))
    t[0] = -100
    w = None if alpha is None else torch.tensor(alpha)
    for reduction in ("mean", "sum", "none"):
        ce = F.cross_entropy(x, t, weight=w, label_smoothing=smoothing, reduction=reduction)
        focal = build_loss(
            {
                "name": "focal",
                "gamma": 0,
                "alpha": alpha,
                "label_smoothing": smoothing,
                "reduction": reduction,
            }
        )
        assert torch.equal(focal(x, t), ce)
        # the general (gamma > 0) code path agrees as gamma -> 0
        general = FocalLoss(gamma=1e-12, alpha=alpha, label_smoothing=smoothing, reduction=reduction)
        assert torch.allclose(general(x, t), ce, rtol=1e-5, atol=1e-6)


def test_binary_focal_gamma0_equals_bce_with_logits() -> None:
    x, t = torch.randn(10, 7), torch.randint(0, 2, (10, 7)).float()
    loss = build_loss({"name": "binary_focal", "gamma": 0.0, "alpha": None})
    assert torch.equal(loss(x, t), F.binary_cross_entropy_with_logits(x, t))
    loss_sum = BinaryFocalLoss(alpha=None, gamma=0.0, reduction="sum")
    assert torch.equal(loss_sum(x, t), F.binary_cross_entropy_with_logits(x, t, reduction="sum"))


def test_focal_gamma2_matches_formula() -> None:
    x, t = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 2, 1, 1, 0, 2])
    alpha = [0.25, 1.0, 2.0]
    got = FocalLoss(gamma=2.0, alpha=alpha)(x, t)
    num = den = 0.0
    for i in range(6):
        p = torch.softmax(x[i], 0)[t[i]].item()
        a = alpha[t[i]]
        num += a * (1 - p) ** 2 * -torch.log(torch.tensor(p, dtype=torch.float64)).item()
        den += a
    assert got.item() == pytest.approx(num / den, rel=1e-10)
    # focusing: easy examples are down-weighted, so focal < cross entropy
    assert FocalLoss(gamma=2.0)(x, t) < F.cross_entropy(x, t)


def test_focal_ignore_index_and_smoothing_formula() -> None:
    x, t = torch.randn(5, 4, dtype=torch.float64), torch.tensor([1, -100, 3, 0, 2])
    eps, gamma = 0.2, 1.5
    got = FocalLoss(gamma=gamma, label_smoothing=eps, reduction="none")(x, t)
    logp = torch.log_softmax(x, 1)
    q = torch.full_like(logp, eps / 4)
    q[torch.arange(5), t.clamp_min(0)] += 1 - eps
    expected = -(q * (1 - logp.exp()) ** gamma * logp).sum(1)
    expected[1] = 0.0
    assert torch.allclose(got, expected)


def test_binary_focal_gamma2_matches_formula() -> None:
    x = torch.tensor([2.0, -1.0, 0.3, -3.0], dtype=torch.float64)
    t = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    got = BinaryFocalLoss(alpha=0.25, gamma=2.0, reduction="none")(x, t)
    p = torch.sigmoid(x)
    pt = torch.where(t == 1, p, 1 - p)
    at = torch.where(t == 1, 0.25, 0.75)
    assert torch.allclose(got, -at * (1 - pt) ** 2 * torch.log(pt))


# -- dice -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 4), (2, 3, 5, 5), (2, 3, 2, 4, 3)])
def test_dice_perfect_prediction_and_range(shape) -> None:
    n, c, *spatial = shape
    t = torch.randint(0, c, (n, *spatial))
    perfect = F.one_hot(t, c).movedim(-1, 1).float() * 40.0
    for batch_dice in (False, True):
        loss = build_loss({"name": "dice", "batch_dice": batch_dice})
        assert loss(perfect, t).item() == pytest.approx(0.0, abs=1e-6)
        worst = loss(-perfect, t).item()
        assert 0.0 < worst <= 1.0
    assert DiceLoss(reduction="none")(torch.randn(shape), t).shape == (n,)


def test_dice_ignore_index_and_binary_value() -> None:
    x, t = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    t[:, 0] = 255
    loss = DiceLoss(ignore_index=255)
    x2 = x.clone()
    x2[:, :, 0] = torch.randn(2, 3, 4) * 10  # only ignored pixels change
    assert torch.allclose(loss(x, t), loss(x2, t))
    # sigmoid(0) = 0.5 everywhere against [1, 0]: 1 - (2*0.5 + 1) / (1 + 1 + 1) = 1/3
    binary = build_loss({"name": "binary_dice"})
    assert binary(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(1 / 3)
    tgt = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    assert binary((tgt * 2 - 1) * 40, tgt).item() == pytest.approx(0.0, abs=1e-6)
    masked = BinaryDiceLoss(ignore_index=-1)(
        torch.tensor([[9.0, -9.0, 9.0]]), torch.tensor([[1.0, 0.0, -1.0]])
    )
    assert masked.item() == pytest.approx(0.0, abs=1e-3)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(2, 4),
    h=st.integers(1, 4),
    smooth=st.floats(0.01, 2.0),
    scale=st.floats(0.1, 30.0),
)
def test_dice_always_in_unit_interval(n, c, h, smooth, scale) -> None:
    x, t = torch.randn(n, c, h) * scale, torch.randint(0, c, (n, h))
    for loss in (DiceLoss(smooth=smooth, reduction="none"), DiceLoss(smooth=smooth, batch_dice=True)):
        v = loss(x, t)
        assert bool(((v >= 0) & (v <= 1 + 1e-6)).all())
    b = BinaryDiceLoss(smooth=smooth, reduction="none")(x, (t > 0).float().unsqueeze(1).expand_as(x))
    assert bool(((b >= 0) & (b <= 1 + 1e-6)).all())


# -- composites -----------------------------------------------------------------------------------


def test_weighted_sum_equals_manual_sum() -> None:
    cfg = {
        "name": "weighted_sum",
        "losses": [
            {"name": "cross_entropy", "weight": [1.0, 2.0, 1.0], "label_smoothing": 0.1},  # coef 1
            {"name": "dice", "coef": 0.5},
            {"name": "focal", "gamma": 2.0, "coef": 0.25, "label": "fl"},
            {"name": "dice", "coef": 2.0, "smooth": 0.0},
        ],
    }
    loss = build_loss(cfg)
    assert isinstance(loss, WeightedSumLoss)
    assert loss.labels == ["cross_entropy", "dice", "fl", "dice_1"] and loss.coefs == [1.0, 0.5, 0.25, 2.0]
    x, t = torch.randn(8, 3, requires_grad=True), torch.randint(0, 3, (8,))
    total = loss(x, t)
    parts = [
        F.cross_entropy(x, t, weight=torch.tensor([1.0, 2.0, 1.0]), label_smoothing=0.1),
        DiceLoss()(x, t),
        FocalLoss(gamma=2.0)(x, t),
        DiceLoss(smooth=0.0)(x, t),
    ]
    manual = parts[0] + 0.5 * parts[1] + 0.25 * parts[2] + 2.0 * parts[3]
    assert torch.allclose(total, manual)
    for label, part in zip(loss.labels, parts):
        assert not loss.last_parts[label].requires_grad
        assert torch.allclose(loss.last_parts[label], part.detach())
    total.backward()
    assert x.grad is not None
    assert list(loss.state_dict()) == []  # class weights of the CE part stay out of state_dict


def test_uncertainty_weighting_learns() -> None:
    cfg = {
        "name": "uncertainty_weighted",
        "losses": [{"name": "cross_entropy"}, {"name": "mse", "label": "depth"}],
        "init_log_var": 0.5,
    }
    loss = build_loss(cfg)
    assert isinstance(loss, UncertaintyWeightedLoss)
    assert [n for n, _ in loss.named_parameters()] == ["log_vars"]
    assert list(loss.state_dict()) == ["log_vars"]
    logits, cls = torch.randn(8, 3), torch.randint(0, 3, (8,))
    pred, depth = torch.randn(8), torch.randn(8)
    total = loss([(logits, cls), (pred, depth)])
    l_ce, l_mse = F.cross_entropy(logits, cls), F.mse_loss(pred, depth)
    s = torch.tensor(0.5)
    assert torch.allclose(total, torch.exp(-s) * l_ce + s + torch.exp(-s) * l_mse + s)
    assert torch.allclose(loss.last_parts["depth"], l_mse) and set(loss.last_parts) == {
        "cross_entropy",
        "depth",
    }
    opt = torch.optim.SGD(loss.parameters(), lr=0.1)
    before = loss.log_vars.detach().clone()
    total.backward()
    assert loss.log_vars.grad is not None and bool((loss.log_vars.grad != 0).all())
    opt.step()
    assert not torch.equal(before, loss.log_vars.detach())
    # mapping form and precomputed per-task losses give the same total
    opt.zero_grad()
    as_map = loss({"depth": (pred, depth), "cross_entropy": (logits, cls)})
    assert torch.allclose(as_map, loss([l_ce, l_mse])) and torch.allclose(
        as_map, loss(torch.stack([l_ce, l_mse]))
    )


def test_uncertainty_task_conventions_and_precomputed_only() -> None:
    loss = build_loss(
        {"name": "uncertainty_weighted", "num_tasks": 3, "tasks": [None, "regression", "classification"]}
    )
    with torch.no_grad():
        loss.log_vars.copy_(torch.tensor([0.1, -0.3, 0.7]))
    task_losses = torch.tensor([2.0, 3.0, 4.0])
    s = loss.log_vars.detach()
    expected = (
        (torch.exp(-s[0]) * 2.0 + s[0])
        + (0.5 * torch.exp(-s[1]) * 3.0 + 0.5 * s[1])
        + (torch.exp(-s[2]) * 4.0 + 0.5 * s[2])
    )
    assert torch.allclose(loss(task_losses), expected)
    assert loss.labels == ["task0", "task1", "task2"]
    with pytest.raises(ValueError, match="expected 3 task items"):
        loss([torch.tensor(1.0)])
    with pytest.raises(ValueError, match="no loss module"):
        loss([(torch.randn(2), torch.randn(2))] * 3)


def test_composites_in_a_lightning_module_join_the_optimizer() -> None:
    import lightning as L

    class Multi(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.loss_fn = build_loss(
                {"name": "uncertainty_weighted", "losses": [{"name": "cross_entropy"}, {"name": "mse"}]}
            )

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.05)

    model = Multi()
    opt = model.configure_optimizers()
    assert any(p is model.loss_fn.log_vars for g in opt.param_groups for p in g["params"])
    assert "loss_fn.log_vars" in model.state_dict()


# -- errors and config integration --------------------------------------------------------------


def test_unknown_name_is_config_error_with_suggestion() -> None:
    err = _error({"name": "cross_entopy"}, "loss.name")
    assert err.path == "loss.name" and err.suggestions[0] == "cross_entropy"
    assert "focal" in str(err) and "Did you mean 'cross_entropy'" in str(err)
    assert isinstance(err, ValueError)
    pickle.loads(pickle.dumps(err))
    _error({"name": "no.such.module.Loss"}, "importable dotted path")
    _error({"name": "torch.nn.functional.mse_loss"}, "nn.Module subclass")
    _error({"label_smoothing": 0.1}, "loss.name")
    _error([1, 2], "loss:")


def test_misspelt_kwarg_and_bad_values() -> None:
    err = _error({"name": "ce", "label_smothing": 0.1}, "loss.label_smothing")
    assert err.suggestions == ["label_smoothing"] and "ignore_index" in str(err)
    _error({"name": "ce", "label_smoothing": 1.5}, "loss.label_smoothing")
    _error({"name": "ce", "reduction": "avg"}, "loss.reduction")
    _error({"name": "ce", "ignore_index": 1.5}, "loss.ignore_index: got 1.5; expected an integer")
    _error({"name": "ce", "weight": [[1, 2]]}, "loss.weight")
    _error({"name": "ce", "weight": ["a"]}, "loss.weight")
    _error({"name": "ce", "size_average": False}, "HINT: use `reduction")
    _error({"name": "focal", "gamma": -1}, "loss.gamma")
    _error({"name": "binary_focal", "alpha": 2.0}, "loss.alpha")
    _error({"name": "dice", "smooth": "x"}, "loss.smooth")
    _error({"name": "huber", "delta": 0}, "loss.delta")
    _error({"name": "linear_cross_entropy"}, "loss.in_features: missing")
    build_loss({"name": "kl_div", "reduction": "batchmean"})  # KL's extra reduction is valid


def test_nested_error_paths() -> None:
    parts = [{"name": "cross_entropy"}, {"name": "dcie"}]
    err = _error({"name": "weighted_sum", "losses": parts}, "loss.losses.1.name")
    assert err.suggestions[0] == "dice"
    bad_kwarg = [{"name": "ce"}, {"name": "focal", "gama": 2}]
    assert _error({"name": "weighted_sum", "losses": bad_kwarg}, "loss.losses.1.gama").suggestions == [
        "gamma"
    ]
    _error(
        {"name": "weighted_sum", "losses": [{"name": "dice", "weight": 0.5}]},
        "mixing weight of an entry is `coef`",
    )
    _error({"name": "weighted_sum", "losses": [{"name": "ce", "weight": 0.5}]}, "loss.losses.0.weight")
    _error({"name": "weighted_sum", "losses": [{"name": "ce", "coef": "x"}]}, "loss.losses.0.coef")
    _error({"name": "weighted_sum", "losses": []}, "loss.losses")
    _error({"name": "weighted_sum"}, "loss.losses: missing")
    _error({"name": "weighted_sum", "losses": [{"name": "ce"}], "coefs": [1]}, "loss.coefs")
    _error({"name": "uncertainty_weighted"}, "loss.losses")
    _error({"name": "uncertainty_weighted", "losses": [{"name": "ce", "coef": 2}]}, "loss.losses.0.coef")
    _error({"name": "uncertainty_weighted", "num_tasks": 2, "tasks": ["regression"]}, "loss.tasks")
    _error({"name": "uncertainty_weighted", "num_tasks": 2, "tasks": ["regresion", None]}, "loss.tasks")
    nested = {
        "name": "weighted_sum",
        "losses": [{"name": "weighted_sum", "losses": [{"name": "mse", "bta": 1}]}],
    }
    _error(nested, "loss.losses.0.losses.0.bta")


def test_build_from_optim_config_and_load_time_validation() -> None:
    cfg = load_config({"optimizer": {"name": "adamw"}, "loss": {"name": "ce", "label_smoothing": 0.1}})
    loss = build_loss(cfg)
    assert isinstance(loss, nn.CrossEntropyLoss) and loss.label_smoothing == 0.1
    composite = load_config(
        {
            "optimizer": {"name": "adamw"},
            "loss": {"name": "weighted_sum", "losses": [{"name": "ce"}, {"name": "dice", "coef": 0.5}]},
        }
    )
    assert isinstance(build_loss(composite), WeightedSumLoss)
    assert isinstance(build_loss(load_config(composite.to_dict())), WeightedSumLoss)  # round trip
    with pytest.raises(ConfigError, match=r"loss\.name.*Did you mean 'cross_entropy'") as info:
        load_config({"optimizer": {"name": "adamw"}, "loss": {"name": "cross_entopy"}})
    assert info.value.path == "loss.name"
    with pytest.raises(ConfigError, match=r"loss\.losses\.1\.smooth"):
        load_config(
            {
                "optimizer": {"name": "adamw"},
                "loss": {"name": "weighted_sum", "losses": [{"name": "ce"}, {"name": "dice", "smooth": -1}]},
            }
        )
    with pytest.raises(ConfigError, match="loss: missing"):
        build_loss(load_config({"optimizer": {"name": "adamw"}}))
    validate_loss_config(LossConfig(name="focal", gamma=1.0))
    assert losses_pkg.build_loss is build_loss
