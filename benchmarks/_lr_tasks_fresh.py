"""A fresh held-out suite for ``benchmarks/lr_finder_quality.py``: 16 tasks no rule was scored on.

Written on 2026-12-03, after the development/held-out split of ``_lr_tasks.TASKS`` had been looked at
many times, and before any LR-finder rule was scored on these tasks. They are ALL held out: none is a
development task, and no rule, constant or default may be chosen on them. Only their oracle grids
(21 LRs x 3 seeds) were computed while writing them, to check that each oracle is sound (interior best
LR, a clear basin against LR 1e-5, no coin-flip seeds, seeds agreeing on the best LR).

Each task differs from every one of the 30 original tasks in at least two of: dataset, model family or
normalisation, loss, optimizer, schedule, data regime. Families covered: LayerNorm MLP, GELU and SiLU
MLPs, MLP with dropout, BatchNorm MLP, CNN with BatchNorm and dropout on synthetic shapes, 1-D conv
over sequences, EmbeddingBag bag-of-tokens classifier, post-norm transformer with attention pooling
(regression), LSTM regression, deep residual MLP; losses: cross-entropy, BCE (binary, 20-label), MSE,
Huber, L1; data: diabetes, breast cancer (tiny, overfits), Friedman 1, 2 and 3, Hastie 10.2,
make_classification, moons (label noise), circles, S-curve, multi-label, synthetic images, motifs,
topics and position-weighted token values; regimes: label noise, tiny data, batch 1024 and batch 4; optimizers SGD
(momentum + weight decay, Nesterov + weight decay, plain), Adam, AdamW, Adamax, NAdam, RAdam, RMSprop,
Adagrad, ASGD; schedules constant, linear, polynomial, step, exponential, warmup_cosine,
cosine_restarts, wsd, onecycle, inverse_sqrt.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _lr_tasks import COS, Data, Task, _o, _t, bce, ce, mse
from torch import nn

# ------------------------------------------------------------------------------------------ data


def _split(x: np.ndarray, y: np.ndarray, n_train: int, n_val: int, seed: int, regression: bool = False) -> Data:
    """Shuffle, split, standardise x by the training statistics (and y too for regression)."""
    perm = np.random.default_rng(seed).permutation(len(x))
    x, y = np.asarray(x, dtype=np.float64)[perm], np.asarray(y)[perm]
    xtr, xva = x[:n_train], x[n_train: n_train + n_val]
    ytr, yva = y[:n_train], y[n_train: n_train + n_val]
    mean, std = xtr.mean(0), xtr.std(0)
    std[std == 0] = 1.0
    xtr, xva = (xtr - mean) / std, (xva - mean) / std
    if regression:
        ym, ys = ytr.mean(), ytr.std()
        ytr_t, yva_t = _t((ytr - ym) / ys).view(-1, 1), _t((yva - ym) / ys).view(-1, 1)
    elif y.ndim == 2 or np.issubdtype(y.dtype, np.floating):
        ytr_t, yva_t = _t(ytr), _t(yva)
    else:
        ytr_t, yva_t = _t(ytr, torch.long), _t(yva, torch.long)
    return Data(_t(xtr), ytr_t, _t(xva), yva_t)


def sk(name: str, n_train: int, n_val: int, flip: float = 0.0, **kw: Any) -> Callable[[], Data]:
    """A scikit-learn bundled data set or generator, split and standardised; ``flip`` flips training
    labels (classification) at that rate."""
    def make() -> Data:
        import sklearn.datasets as ds

        if name in ("diabetes", "breast_cancer"):
            x, y = getattr(ds, f"load_{name}")(return_X_y=True)
        elif name == "s_curve":
            x, y = ds.make_s_curve(n_train + n_val, **kw)
        else:
            x, y = getattr(ds, f"make_{name}")(n_train + n_val, **kw)
        regression = name in ("diabetes", "friedman1", "friedman2", "friedman3", "s_curve")
        if name == "hastie_10_2":
            y = (y > 0).astype(np.float32)
        elif name == "breast_cancer":
            y = y.astype(np.float32)
        data = _split(x, y, n_train, n_val, seed=21, regression=regression)
        if flip > 0:
            rng = np.random.default_rng(22)
            flipped = torch.from_numpy(rng.random(n_train) < flip)
            classes = int(data.y_train.max()) + 1
            data.y_train[flipped] = torch.from_numpy(rng.integers(0, classes, int(flipped.sum())))
        return data

    make.__qualname__ = f"sk({name},{n_train},{n_val},{flip},{sorted(kw.items())})"
    return make


def shapes(n_train: int = 600, n_val: int = 400, size: int = 10, noise: float = 0.4) -> Callable[[], Data]:
    """Noisy 1-channel images of one of 4 shapes (horizontal bar, vertical bar, diagonal, square) at a
    random place and brightness."""
    def make() -> Data:
        g = torch.Generator().manual_seed(31)
        n = n_train + n_val
        labels = torch.randint(4, (n,), generator=g)
        img = noise * torch.randn(n, 1, size, size, generator=g)
        pos = torch.randint(1, size - 4, (n, 2), generator=g)
        amp = 1.0 + torch.rand(n, generator=g)
        for i in range(n):
            r, c, a = int(pos[i, 0]), int(pos[i, 1]), float(amp[i])
            k = int(labels[i])
            if k == 0:
                img[i, 0, r, c: c + 4] += a
            elif k == 1:
                img[i, 0, r: r + 4, c] += a
            elif k == 2:
                img[i, 0, torch.arange(r, r + 4), torch.arange(c, c + 4)] += a
            else:
                img[i, 0, r: r + 2, c: c + 2] += a
        return Data(img[:n_train], labels[:n_train], img[n_train:], labels[n_train:])

    make.__qualname__ = f"shapes({n_train},{n_val},{size},{noise})"
    return make


def motifs(n_train: int = 600, n_val: int = 400, length: int = 32) -> Callable[[], Data]:
    """2-channel noisy sequences holding one of 4 fixed length-5 motifs at a random offset; which one."""
    def make() -> Data:
        g = torch.Generator().manual_seed(32)
        n = n_train + n_val
        bank = torch.randn(4, 2, 5, generator=g)
        x = torch.randn(n, 2, length, generator=g)
        labels = torch.randint(4, (n,), generator=g)
        start = torch.randint(0, length - 5, (n,), generator=g)
        for i in range(n):
            s = int(start[i])
            x[i, :, s: s + 5] += 1.2 * bank[int(labels[i])]
        return Data(x[:n_train], labels[:n_train], x[n_train:], labels[n_train:])

    make.__qualname__ = f"motifs({n_train},{n_val},{length})"
    return make


def topics(n_train: int = 500, n_val: int = 400, vocab: int = 60, length: int = 16) -> Callable[[], Data]:
    """Bags of tokens: each document mixes one of 5 topic distributions (70 %) with background (30 %)."""
    def make() -> Data:
        torch.manual_seed(33)
        g = torch.Generator().manual_seed(33)
        n = n_train + n_val
        topic = torch.distributions.Dirichlet(torch.full((vocab,), 0.1)).sample((5,))
        labels = torch.randint(5, (n,), generator=g)
        probs = 0.7 * topic[labels] + 0.3 / vocab
        toks = torch.multinomial(probs, length, replacement=True, generator=g)
        return Data(toks[:n_train], labels[:n_train], toks[n_train:], labels[n_train:])

    make.__qualname__ = f"topics({n_train},{n_val},{vocab},{length})"
    return make


def token_values(n_train: int = 500, n_val: int = 400, vocab: int = 16, length: int = 12) -> Callable[[], Data]:
    """Random tokens; the (standardised) target is a position-weighted sum of hidden per-token values."""
    def make() -> Data:
        g = torch.Generator().manual_seed(36)
        value = torch.randn(vocab, generator=g)
        toks = torch.randint(vocab, (n_train + n_val, length), generator=g)
        weight = torch.linspace(1.5, 0.5, length)
        y = (value[toks] * weight).sum(1) / math.sqrt(length) + 0.1 * torch.randn(len(toks), generator=g)
        y = ((y - y[:n_train].mean()) / y[:n_train].std()).view(-1, 1)
        return Data(toks[:n_train], y[:n_train], toks[n_train:], y[n_train:])

    make.__qualname__ = f"token_values({n_train},{n_val},{vocab},{length})"
    return make


def waves(n_train: int = 500, n_val: int = 400, length: int = 20) -> Callable[[], Data]:
    """Sums of two sinusoids (random frequency, phase, amplitude) plus noise; predict the next value."""
    def make() -> Data:
        g = torch.Generator().manual_seed(35)
        n = n_train + n_val
        t = torch.arange(length + 1).float().view(1, -1)
        freq = 0.15 + 0.5 * torch.rand(n, 2, generator=g)
        phase = 2 * math.pi * torch.rand(n, 2, generator=g)
        amp = 0.5 + torch.rand(n, 2, generator=g)
        clean = sum(amp[:, k: k + 1] * torch.sin(freq[:, k: k + 1] * t + phase[:, k: k + 1]) for k in range(2))
        noisy = clean + 0.1 * torch.randn(n, length + 1, generator=g)
        x, y = noisy[:, :-1].unsqueeze(-1), clean[:, -1:]
        return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:])

    make.__qualname__ = f"waves({n_train},{n_val},{length})"
    return make


# ---------------------------------------------------------------------------------------- models


def ln_mlp(*sizes: int) -> Callable[[], nn.Module]:
    """Linear -> LayerNorm -> ReLU hidden layers."""
    def make() -> nn.Module:
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-2], sizes[1:-1]):
            layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))

    make.__qualname__ = f"ln_mlp{sizes}"
    return make


def bn_mlp(*sizes: int) -> Callable[[], nn.Module]:
    """Linear -> BatchNorm1d -> ReLU hidden layers."""
    def make() -> nn.Module:
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-2], sizes[1:-1]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))

    make.__qualname__ = f"bn_mlp{sizes}"
    return make


def act_mlp(*sizes: int, act: type[nn.Module] = nn.GELU, dropout: float = 0.0) -> Callable[[], nn.Module]:
    """Linear -> activation (-> Dropout) hidden layers."""
    def make() -> nn.Module:
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-2], sizes[1:-1]):
            layers += [nn.Linear(a, b), act()] + ([nn.Dropout(dropout)] if dropout else [])
        return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))

    make.__qualname__ = f"act_mlp{sizes}{act.__name__}{dropout}"
    return make


def cnn_bn_dropout() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveMaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(64, 4),
    )


def conv1d() -> nn.Module:
    return nn.Sequential(nn.Conv1d(2, 16, 5, padding=2), nn.ReLU(), nn.Conv1d(16, 16, 5, padding=2), nn.ReLU(),
                         nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(16, 4))


class BagOfTokens(nn.Module):
    """Mean EmbeddingBag over the tokens, then a small MLP head."""

    def __init__(self, vocab: int = 60, dim: int = 32, out: int = 5) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.head = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, out))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.bag(tokens))


class AttentionPool(nn.Module):
    """Post-norm transformer layer over token and position embeddings, pooled by a learned attention query."""

    def __init__(self, vocab: int = 16, dim: int = 24, length: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, length, dim) * 0.1)
        self.block = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True, norm_first=False)
        self.query = nn.Parameter(torch.randn(dim) * 0.1)
        self.head = nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.block(self.embed(tokens) + self.pos[:, : tokens.shape[1]])
        weights = torch.softmax(h @ self.query, dim=1).unsqueeze(-1)
        return self.head((weights * h).sum(1))


class SeqRegressor(nn.Module):
    """LSTM over a 1-d sequence; a linear read-out of the last state."""

    def __init__(self, hidden: int = 24) -> None:
        super().__init__()
        self.rnn = nn.LSTM(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class ResMLP(nn.Module):
    """Deep pre-activation residual MLP without normalisation."""

    def __init__(self, d_in: int = 3, width: int = 32, blocks: int = 8, out: int = 1) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                                  nn.Linear(width, width)) for _ in range(blocks))
        self.out = nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(torch.relu(h))


def bag_of_tokens() -> nn.Module:
    return BagOfTokens()


def attention_pool() -> nn.Module:
    return AttentionPool()


def seq_regressor() -> nn.Module:
    return SeqRegressor()


def res_mlp() -> nn.Module:
    return ResMLP()


# ---------------------------------------------------------------------------------------- losses


def huber(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.huber_loss(out, y, delta=0.5)


def l1(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.l1_loss(out, y)


# ----------------------------------------------------------------------------------------- tasks


def _s(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, **kw}


FRESH_TASKS: list[Task] = [
    Task("fresh_friedman2_lnmlp_adamw_linear", "LayerNorm MLP, Friedman 2 regression, AdamW, linear decay",
         sk("friedman2", 400, 400, noise=10.0, random_state=19), ln_mlp(4, 64, 64, 1), mse,
         _o("adamw", _s("linear", warmup="10%"), weight_decay=0.05), 32, 6),
    Task("fresh_friedman1_gelu_huber_adamax_poly", "GELU MLP, Friedman 1 regression, Huber loss, Adamax, polynomial",
         sk("friedman1", 400, 400, noise=1.0, random_state=11), act_mlp(10, 64, 64, 1), huber,
         _o("adamax", _s("polynomial", power=2.0)), 32, 6),
    Task("fresh_hastie_dropout_sgdwd_step", "MLP with dropout, Hastie 10.2 (BCE), SGD momentum + wd, step decay",
         sk("hastie_10_2", 600, 400, random_state=12), act_mlp(10, 64, 64, 1, act=nn.ReLU, dropout=0.2), bce,
         _o("sgd", _s("step", step_size="34%", gamma=0.3), momentum=0.9, weight_decay=5e-4), 32, 6),
    Task("fresh_shapes_cnn_bn_dropout_radam_wsd", "CNN + BatchNorm + dropout, synthetic shapes, RAdam, WSD", shapes(),
         cnn_bn_dropout, ce, _o("radam", _s("wsd", warmup="5%", decay="20%")), 32, 4),
    Task("fresh_classif_bnmlp_nadam_exp", "BatchNorm MLP, make_classification (5 classes), NAdam, exponential",
         sk("classification", 1000, 1000, n_features=20, n_informative=12, n_classes=5, random_state=13),
         bn_mlp(20, 64, 64, 5), ce, _o("nadam", _s("exponential", gamma=0.98)), 32, 4),
    Task("fresh_motifs_conv1d_rmsprop_cos", "1-D conv over motif sequences, RMSprop, warm-up cosine", motifs(),
         conv1d, ce, _o("rmsprop", COS), 32, 4),
    Task("fresh_topics_embbag_adagrad", "EmbeddingBag bag-of-tokens topic classifier, Adagrad", topics(),
         bag_of_tokens, ce, _o("adagrad"), 32, 4),
    Task("fresh_tokvalues_attnpool_adamw_rsqrt", "post-norm transformer + attention pooling, token-value regression "
         "(MSE), AdamW, inverse sqrt", token_values(), attention_pool, mse,
         _o("adamw", _s("inverse_sqrt", warmup="10%"), weight_decay=0.01), 32, 5),
    Task("fresh_waves_lstm_regression_adam_restarts", "LSTM next-value regression on noisy waves, Adam, cosine "
         "restarts", waves(), seq_regressor, mse, _o("adam", _s("cosine_restarts", cycle="50%")), 32, 4),
    Task("fresh_scurve_resmlp_nesterovwd_cos", "deep residual MLP (8 blocks, no norm), S-curve regression, "
         "SGD Nesterov + wd, warm-up cosine", sk("s_curve", 600, 400, noise=0.1, random_state=14), res_mlp, mse,
         _o("nesterov", COS, weight_decay=1e-4), 32, 5),
    Task("fresh_diabetes_silu_l1_asgd", "SiLU MLP, diabetes, L1 loss, ASGD", sk("diabetes", 300, 142),
         act_mlp(10, 64, 1, act=nn.SiLU), l1, _o("asgd"), 16, 6),
    Task("fresh_multilabel20_adam_onecycle", "MLP, 20-label multi-label (BCE), Adam, OneCycle",
         sk("multilabel_classification", 800, 400, n_features=40, n_classes=20, n_labels=3, random_state=15),
         act_mlp(40, 128, 20, act=nn.ReLU), bce, _o("adam", _s("onecycle")), 32, 5),
    Task("fresh_moons_noise_sgdm_onecycle", "SiLU MLP, moons with 25% label noise, SGD momentum, OneCycle",
         sk("moons", 400, 400, flip=0.25, noise=0.2, random_state=16), act_mlp(2, 64, 64, 2, act=nn.SiLU), ce,
         _o("sgd", _s("onecycle"), momentum=0.9), 32, 8),
    Task("fresh_cancer_tiny_overfit_adamax", "wide MLP on 40 breast-cancer samples (overfits), Adamax",
         sk("breast_cancer", 40, 300), act_mlp(30, 256, 256, 1, act=nn.ReLU), bce, _o("adamax"), 8, 20),
    Task("fresh_friedman3_bigbatch_radam_cos", "MLP, Friedman 3 regression, batch 1024, RAdam, warm-up cosine",
         sk("friedman3", 2048, 400, noise=0.05, random_state=17), act_mlp(4, 128, 128, 1, act=nn.ReLU), mse,
         _o("radam", COS), 1024, 40),
    Task("fresh_circles_batch4_sgd_exp", "tanh MLP, circles, batch 4, plain SGD, exponential decay",
         sk("circles", 200, 400, noise=0.1, factor=0.5, random_state=18), act_mlp(2, 32, 2, act=nn.Tanh), ce,
         _o("sgd", _s("exponential", gamma=0.995)), 4, 3),
]
