"""Parameter-group rules: precedence, globs/regexes, frozen, no_weight_decay, layer_decay, several optimizers."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from lightning_optkit import ConfigError, OptimMixin, build_optimizers, load_config
from lightning_optkit.optim import layer_ids, no_decay_names


def groups_by_param(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            assert id(p) not in out, "a parameter is in two groups"
            out[id(p)] = g
    return out


def group_of(model: nn.Module, optimizer: torch.optim.Optimizer, name: str) -> dict:
    return groups_by_param(optimizer)[id(model.get_parameter(name))]


def assert_partition(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
    """Every trainable parameter is in exactly one group of exactly one optimizer; frozen ones in none."""
    seen: list[int] = []
    for opt in optimizers:
        for g in opt.param_groups:
            seen += [id(p) for p in g["params"]]
            assert all(p.requires_grad for p in g["params"])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(seen) == len(set(seen)), "a parameter is in two groups"
    assert set(seen) == trainable


# -- precedence, globs, regexes ---------------------------------------------------------------------


def test_first_matching_rule_wins(tiny_net):
    opt = build_optimizers(tiny_net, {
        "optimizer": {"name": "sgd", "lr": 1.0},
        "no_weight_decay": "none",
        "param_groups": [
            {"params": "head.weight", "lr_scale": 0.5},
            {"params": "head.*", "lr_scale": 0.1},
            {"params": "*", "lr_scale": 0.01},
        ],
    })
    assert group_of(tiny_net, opt, "head.weight")["lr"] == pytest.approx(0.5)
    assert group_of(tiny_net, opt, "head.bias")["lr"] == pytest.approx(0.1)
    assert group_of(tiny_net, opt, "backbone.0.weight")["lr"] == pytest.approx(0.01)
    assert {g["name"] for g in opt.param_groups} == {"head.weight", "head", "group2"}
    assert_partition(tiny_net, [opt])


def test_a_rule_shadowed_by_an_earlier_one_matches_nothing(tiny_net):
    with pytest.raises(ConfigError) as info:
        build_optimizers(tiny_net, {"optimizer": {"name": "sgd"},
                                    "param_groups": [{"params": "*"}, {"params": "head.*"}]})
    assert info.value.path == "param_groups.1.params"
    assert "earlier rules take precedence" in str(info.value)


def test_globs_and_regexes(tiny_net):
    opt = build_optimizers(tiny_net, {
        "optimizer": {"name": "adamw", "lr": 1.0},
        "no_weight_decay": "none",
        "param_groups": [
            {"params": r"re:^backbone\.(0|2)\.weight$", "lr": 0.3, "name": "matrices"},
            {"params": ["backbone.?.bias", "head.b*"], "lr": 0.2},
            {"params": "backbone.*", "lr": 0.1},  # '*' crosses dots: backbone.1.weight
        ],
    })
    lrs = {n: group_of(tiny_net, opt, n)["lr"] for n, _ in tiny_net.named_parameters()}
    assert lrs == {
        "backbone.0.weight": 0.3, "backbone.0.bias": 0.2,
        "backbone.1.weight": 0.1, "backbone.1.bias": 0.2,
        "backbone.2.weight": 0.3, "backbone.2.bias": 0.2,
        "head.weight": 1.0, "head.bias": 0.2,
    }
    names = {g["name"] for g in opt.param_groups}
    assert {"matrices", "backbone", "default"} <= names
    assert_partition(tiny_net, [opt])


def test_bad_regex_is_a_config_error(tiny_net):
    with pytest.raises(ConfigError) as info:
        build_optimizers(tiny_net, {"optimizer": {"name": "sgd"}, "param_groups": [{"params": ["head.*", "re:(("]}]})
    assert info.value.path == "param_groups.0.params"
    assert "regular expression" in str(info.value)


def test_rule_matching_nothing_lists_similar_names(tiny_net):
    with pytest.raises(ConfigError) as info:
        build_optimizers(tiny_net, {"optimizer": {"name": "adamw"},
                                    "param_groups": [{"params": "bakbone.*", "lr_scale": 0.1}]})
    err = info.value
    assert err.path == "param_groups.0.params"
    assert err.value == "bakbone.*"
    assert err.suggestions and err.suggestions[0] == "backbone"
    assert "Did you mean 'backbone'" in str(err)
    with pytest.raises(ConfigError) as info:
        build_optimizers(tiny_net, {"optimizer": {"name": "adamw"},
                                    "param_groups": [{"params": "re:^haed\\.", "lr_scale": 0.1}]})
    assert "head" in info.value.suggestions


# -- frozen --------------------------------------------------------------------------------------


def test_frozen(tiny_net):
    opt = build_optimizers(tiny_net, {"optimizer": {"name": "adamw"},
                                      "param_groups": [{"params": "backbone.0.*", "frozen": True}]})
    assert not tiny_net.backbone[0].weight.requires_grad
    assert not tiny_net.backbone[0].bias.requires_grad
    assert tiny_net.backbone[2].weight.requires_grad
    owned = groups_by_param(opt)
    assert id(tiny_net.backbone[0].weight) not in owned
    assert id(tiny_net.backbone[0].bias) not in owned
    assert_partition(tiny_net, [opt])
    # already frozen by the user: left out as well
    tiny_net.head.bias.requires_grad_(False)
    opt = build_optimizers(tiny_net, {"optimizer": {"name": "adamw"}})
    assert id(tiny_net.head.bias) not in groups_by_param(opt)
    assert_partition(tiny_net, [opt])


def test_everything_frozen_is_an_error(tiny_net):
    with pytest.raises(ConfigError) as info:
        build_optimizers(tiny_net, {"optimizer": {"name": "adamw"}, "param_groups": [{"params": "*", "frozen": True}]})
    assert info.value.path == "param_groups"


# -- every parameter exactly once -----------------------------------------------------------------

PARTITION_CONFIGS = [
    {"optimizer": {"name": "adamw"}},
    {"optimizer": {"name": "adamw"}, "no_weight_decay": "none"},
    {"optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 1e-4}, "layer_decay": 0.8},
    {"optimizer": {"name": "adamw"}, "layer_decay": 0.7,
     "param_groups": [{"params": "blocks.0.*", "lr_scale": 0.5}, {"params": "embed.*", "frozen": True}]},
    {"optimizer": {"name": "adam", "weight_decay": 0.01},
     "param_groups": [{"params": "re:norm", "weight_decay": 0.0}, {"params": "*.weight", "betas": [0.8, 0.9]}]},
]


@pytest.mark.parametrize("config", PARTITION_CONFIGS)
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_every_trainable_parameter_in_exactly_one_group(tiny_transformer, config, tie):
    torch.manual_seed(0)
    model = tiny_transformer(tie=tie)
    if tie:
        assert model.head.weight is model.embed.weight
    if tie and any(r.get("frozen") for r in config.get("param_groups", [])):
        # freezing the embedding freezes the tied head weight too: it is one tensor
        opt = build_optimizers(model, config)
        assert not model.head.weight.requires_grad
    else:
        opt = build_optimizers(model, config)
    assert_partition(model, [opt])
    tokens = torch.randint(0, 16, (2, 6))
    model(tokens).logsumexp(-1).mean().backward()
    opt.step()


def test_partition_on_tiny_net_and_a_batchnorm_cnn(tiny_net):
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    cnn(torch.zeros(1, 1, 5, 5))  # materialize the lazy layer
    for model in (tiny_net, cnn):
        opt = build_optimizers(model, {"optimizer": {"name": "adamw", "weight_decay": 0.1}})
        assert_partition(model, [opt])


def test_tied_weight_rule_on_the_second_name_explains(tiny_transformer):
    model = tiny_transformer(tie=True)
    model.head.bias = None
    with pytest.raises(ConfigError) as info:
        build_optimizers(model, {"optimizer": {"name": "adamw"}, "param_groups": [{"params": "head.*", "lr": 0.1}]})
    assert info.value.path == "param_groups.0.params"
    assert "embed.weight" in str(info.value)


# -- no_weight_decay ------------------------------------------------------------------------------


class MyRMSNorm(nn.Module):
    """A custom norm layer; its weight is 2-D, so only its class name marks it as a norm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.proj = nn.Linear(8, 8)
        self.ln = nn.LayerNorm(8)
        self.rms = MyRMSNorm(8)
        self.scale = nn.Parameter(torch.ones(8))  # 1-d
        self.table = nn.Parameter(torch.zeros(4, 8))  # 2-d, decayed
        self.head = nn.Linear(8, 2, bias=False)


def test_no_weight_decay_auto():
    model = Mixed()
    names = no_decay_names(model, "auto")
    assert names == {"conv.bias", "bn.weight", "bn.bias", "proj.bias", "ln.weight", "ln.bias", "rms.weight",
                     "scale"}
    opt = build_optimizers(model, {"optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}})
    for n, _p in model.named_parameters():
        assert group_of(model, opt, n)["weight_decay"] == (0.0 if n in names else 0.05), n
    assert {g["name"] for g in opt.param_groups} == {"default", "default/no_decay"}
    assert_partition(model, [opt])


def test_no_weight_decay_method_on_the_model_and_on_a_submodule(tiny_transformer):
    model = tiny_transformer()
    assert "pos" in no_decay_names(model, "auto")
    assert model.pos.ndim == 3

    class Wrapper(nn.Module):  # e.g. a LightningModule holding a timm backbone
        def __init__(self) -> None:
            super().__init__()
            self.backbone = tiny_transformer()
            self.extra = nn.Linear(8, 8)

    wrapped = Wrapper()
    names = no_decay_names(wrapped, "auto")
    assert "backbone.pos" in names
    assert "extra.weight" not in names
    opt = build_optimizers(wrapped, {"optimizer": {"name": "adamw", "weight_decay": 0.1}})
    assert group_of(wrapped, opt, "backbone.pos")["weight_decay"] == 0.0
    assert group_of(wrapped, opt, "backbone.blocks.0.linear1.weight")["weight_decay"] == 0.1


def test_no_weight_decay_explicit_list_and_none():
    model = Mixed()
    opt = build_optimizers(model, {"optimizer": {"name": "adamw", "weight_decay": 0.05},
                                   "no_weight_decay": ["*.bias", "table"]})
    exempt = {"conv.bias", "bn.bias", "proj.bias", "ln.bias", "table"}
    for n, _p in model.named_parameters():
        assert group_of(model, opt, n)["weight_decay"] == (0.0 if n in exempt else 0.05), n
    opt = build_optimizers(Mixed(), {"optimizer": {"name": "adamw", "weight_decay": 0.05}, "no_weight_decay": "none"})
    assert {g["weight_decay"] for g in opt.param_groups} == {0.05}
    assert len(opt.param_groups) == 1
    for off in (None, False):
        assert load_config({"optimizer": {"name": "adamw"}, "no_weight_decay": off}).no_weight_decay == "none"


def test_no_weight_decay_typo_is_an_error():
    with pytest.raises(ConfigError) as info:
        build_optimizers(Mixed(), {"optimizer": {"name": "adamw"}, "no_weight_decay": "autoo"})
    assert info.value.path == "no_weight_decay"
    assert "auto" in info.value.suggestions
    with pytest.raises(ConfigError) as info:
        build_optimizers(Mixed(), {"optimizer": {"name": "adamw"}, "no_weight_decay": ["*.bias", "tabel"]})
    assert info.value.path == "no_weight_decay"
    assert "table" in info.value.suggestions


def test_rule_weight_decay_and_no_decay_split(tiny_net):
    opt = build_optimizers(tiny_net, {"optimizer": {"name": "adamw", "weight_decay": 0.05},
                                      "param_groups": [{"params": "head.*", "weight_decay": 0.5}]})
    assert group_of(tiny_net, opt, "head.weight")["weight_decay"] == 0.5
    assert group_of(tiny_net, opt, "head.bias")["weight_decay"] == 0.0
    assert group_of(tiny_net, opt, "backbone.0.weight")["weight_decay"] == 0.05
    assert group_of(tiny_net, opt, "backbone.1.weight")["weight_decay"] == 0.0  # LayerNorm
    assert {g["name"] for g in opt.param_groups} == {"default", "default/no_decay", "head", "head/no_decay"}


# -- layer decay ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_layer_decay(tiny_transformer, tie):
    model = tiny_transformer(depth=3, tie=tie)
    base, rate, num = 1e-2, 0.5, 3
    opt = build_optimizers(model, {"optimizer": {"name": "adamw", "lr": base}, "layer_decay": rate})
    ids, n = layer_ids(model, [name for name, _ in model.named_parameters()])
    assert n == num
    expected_layer = {"embed.weight": 0, "pos": 0, "blocks.0.linear1.weight": 1, "blocks.1.norm2.bias": 2,
                      "blocks.2.self_attn.in_proj_weight": 3, "norm.weight": num + 1, "head.bias": num + 1}
    if not tie:
        expected_layer["head.weight"] = num + 1
    for name, layer in expected_layer.items():
        assert ids[name] == layer, name
        assert group_of(model, opt, name)["lr"] == pytest.approx(base * rate ** (num + 1 - layer)), name
    assert group_of(model, opt, "head.bias")["lr"] == pytest.approx(base)
    assert group_of(model, opt, "embed.weight")["lr"] == pytest.approx(base * rate**4)
    assert_partition(model, [opt])


def test_layer_decay_combines_with_rules(tiny_transformer):
    model = tiny_transformer(depth=2)
    opt = build_optimizers(model, {"optimizer": {"name": "sgd", "lr": 1.0}, "layer_decay": 0.5,
                                   "param_groups": [{"params": "blocks.1.*", "lr_scale": 0.1},
                                                    {"params": "head.*", "lr": 0.2}]})
    assert group_of(model, opt, "blocks.1.linear1.weight")["lr"] == pytest.approx(0.1 * 0.5)
    assert group_of(model, opt, "blocks.0.linear1.weight")["lr"] == pytest.approx(0.25)
    assert group_of(model, opt, "head.weight")["lr"] == pytest.approx(0.2)


def test_layer_decay_needs_a_stack():
    with pytest.raises(ConfigError) as info:
        build_optimizers(nn.Linear(2, 2), {"optimizer": {"name": "adamw"}, "layer_decay": 0.5})
    assert info.value.path == "layer_decay"
    for bad in (0, 1.5, -0.5, True, "x"):
        with pytest.raises(ConfigError) as info:
            load_config({"optimizer": {"name": "adamw"}, "layer_decay": bad})
        assert info.value.path == "layer_decay"


# -- lr, lr_scale and per-group optimizer options ----------------------------------------------------


def test_lr_versus_lr_scale(tiny_net):
    opt = build_optimizers(tiny_net, {"optimizer": {"name": "sgd", "lr": 0.1},
                                      "param_groups": [{"params": "head.*", "lr": 0.5},
                                                       {"params": "backbone.*", "lr_scale": 0.1}]})
    assert {g["lr"] for g in opt.param_groups if g["name"].startswith("head")} == {0.5}
    assert all(g["lr"] == pytest.approx(0.01) for g in opt.param_groups if g["name"].startswith("backbone"))
    assert opt.defaults["lr"] == 0.1
    with pytest.raises(ConfigError) as info:
        load_config({"optimizer": {"name": "sgd"}, "param_groups": [{"params": "head.*", "lr": 0.5, "lr_scale": 2}]})
    assert info.value.path.startswith("param_groups.0")
    assert "lr_scale" in str(info.value)


def test_per_group_optimizer_options(tiny_net):
    opt = build_optimizers(tiny_net, {"optimizer": {"name": "adamw", "betas": [0.9, 0.999]},
                                      "param_groups": [{"params": "head.*", "betas": [0.5, 0.9], "eps": 1e-6,
                                                        "amsgrad": True}]})
    head = group_of(tiny_net, opt, "head.weight")
    assert tuple(head["betas"]) == (0.5, 0.9)
    assert head["eps"] == 1e-6
    assert head["amsgrad"] is True
    assert tuple(group_of(tiny_net, opt, "backbone.0.weight")["betas"]) == (0.9, 0.999)
    tiny_net(torch.randn(3, 4)).sum().backward()
    opt.step()

    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    opt = build_optimizers(model, {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                                   "param_groups": [{"params": "1.*", "momentum": 0.0, "dampening": 0.1}]})
    assert group_of(model, opt, "1.weight")["momentum"] == 0.0
    assert group_of(model, opt, "1.weight")["dampening"] == 0.1
    assert group_of(model, opt, "0.weight")["momentum"] == 0.9


def test_lbfgs_with_several_groups_is_an_error(tiny_net):
    with pytest.raises(ConfigError) as info:
        build_optimizers(tiny_net, {"optimizer": {"name": "lbfgs"}, "param_groups": [{"params": "head.*", "lr": 0.1}]})
    assert info.value.path == "param_groups"
    assert "LBFGS" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config({"optimizer": {"name": "lbfgs"}, "layer_decay": 0.5})
    assert info.value.path == "layer_decay"
    # frozen-only rules keep one group
    opt = build_optimizers(tiny_net, {"optimizer": {"name": "lbfgs"}, "param_groups": [{"params": "head.*",
                                                                                        "frozen": True}]})
    assert len(opt.param_groups) == 1


# -- several optimizers: a GAN with manual optimization ------------------------------------------------


class GAN(OptimMixin, L.LightningModule):
    def __init__(self, optim: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
        self.discriminator = nn.Sequential(nn.Linear(2, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 1))
        self.steps = 0

    def training_step(self, batch, batch_idx):
        (real,) = batch
        g_opt, d_opt = self.optimizers()
        bce = nn.functional.binary_cross_entropy_with_logits
        fake = self.generator(torch.randn_like(real))
        d_loss = bce(self.discriminator(real), torch.ones(len(real), 1)) + bce(
            self.discriminator(fake.detach()), torch.zeros(len(real), 1))
        d_opt.zero_grad()
        self.manual_backward(d_loss)
        d_opt.step()
        g_loss = bce(self.discriminator(fake), torch.ones(len(real), 1))
        g_opt.zero_grad()
        self.manual_backward(g_loss)
        g_opt.step()
        for sched in self.lr_schedulers() or []:
            sched.step()
        self.steps += 1


GAN_OPTIM = {
    "optimizers": [
        {"params": "generator.*", "optimizer": {"name": "adam", "lr": 2e-3, "betas": [0.5, 0.999]},
         "scheduler": {"name": "linear", "warmup": 2}},
        {"params": "discriminator.*", "optimizer": {"name": "sgd", "lr": 1e-2, "momentum": 0.5},
         "param_groups": [{"params": "discriminator.3.*", "lr_scale": 0.5, "name": "critic_head"}],
         "scheduler": {"name": "warmup_cosine", "warmup": "1 epochs"}},
    ]
}


def test_gan_with_two_optimizers_in_a_trainer(fast_trainer_kwargs):
    torch.manual_seed(0)
    model = GAN(GAN_OPTIM)
    real = torch.randn(32, 2) * 0.5 + 1.0
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(real), batch_size=8)
    g_before = [p.detach().clone() for p in model.generator.parameters()]
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    trainer = L.Trainer(max_epochs=2, **fast_trainer_kwargs)
    trainer.fit(model, loader)
    assert model.steps == 8
    g_opt, d_opt = trainer.optimizers
    assert (type(g_opt).__name__, type(d_opt).__name__) == ("Adam", "SGD")
    assert_partition(model, [g_opt, d_opt])
    gen = {id(p) for p in model.generator.parameters()}
    assert {id(p) for g in g_opt.param_groups for p in g["params"]} == gen
    assert "critic_head" in {g["name"] for g in d_opt.param_groups}
    assert all(not torch.equal(a, b) for a, b in zip(g_before, model.generator.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters()))
    configs = trainer.lr_scheduler_configs
    assert [c.name for c in configs] == ["lr-Adam-0", "lr-SGD-1"]
    assert [c.scheduler.optimizer for c in configs] == [g_opt, d_opt]
    # the linear schedule decayed the generator's lr to (near) 0 at the last of 8 steps
    assert g_opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_several_optimizers_must_cover_every_parameter():
    model = GAN(GAN_OPTIM)
    with pytest.raises(ConfigError) as info:
        build_optimizers(model, {"optimizers": [{"params": "generator.*", "optimizer": {"name": "adam"}},
                                                {"params": "discriminator.0.*", "optimizer": {"name": "sgd"}}]})
    assert info.value.path == "optimizers"
    assert "discriminator.1" in str(info.value)
    with pytest.raises(ConfigError) as info:
        build_optimizers(GAN(GAN_OPTIM), {"optimizers": [
            {"params": "generator.*", "optimizer": {"name": "adam"}},
            {"params": "discriminatr.*", "optimizer": {"name": "adam"}}]})
    assert info.value.path == "optimizers.1.params"
    assert "discriminator" in info.value.suggestions
    # overlapping globs: the first block owns a parameter, the next gets the rest
    model = GAN(GAN_OPTIM)
    (first, second), _ = build_optimizers(model, {"optimizers": [
        {"params": ["generator.*", "discriminator.3.*"], "optimizer": {"name": "adam"}},
        {"params": "*", "optimizer": {"name": "sgd"}}]})
    assert_partition(model, [first, second])
    assert id(model.discriminator[3].weight) in groups_by_param(first)


def test_a_single_optimizers_block_must_cover_every_parameter():
    with pytest.raises(ConfigError) as info:
        build_optimizers(GAN(GAN_OPTIM), {"optimizers": [{"params": "generator.*", "optimizer": {"name": "adam"}}]})
    assert info.value.path == "optimizers"
