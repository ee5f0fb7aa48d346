"""The tasks of ``benchmarks/lr_finder_quality.py``: small, CPU-fast, deliberately varied.

Every task trains in well under a second on one CPU thread (a few hundred samples, 40-120 steps),
so a 21-LR x 3-seed oracle grid per task stays affordable. Families: MLPs of several depths and
widths, CNNs with and without BatchNorm on 8x8 digits, a residual block net, RNN/LSTM/GRU on a
synthetic sequence task, a transformer encoder and a causal LM on synthetic tokens, autoencoders;
losses: classification, regression, multi-label; regimes: small data that overfits, label noise,
large vs small batch; optimizers SGD (plain, momentum, Nesterov), Adam, AdamW, RMSprop, Adagrad,
NAdam, RAdam; schedules constant, warmup_cosine, onecycle, wsd.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


@dataclass
class Task:
    name: str
    kind: str
    data: Callable[[], Data]
    model: Callable[[], nn.Module]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optim: dict[str, Any]
    batch_size: int
    epochs: int

    def get_data(self) -> Data:
        return _data_cache(self.data)

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.get_data().x_train) / self.batch_size)

    def settings(self) -> str:
        """Everything but code that decides the task's numbers (part of the cache key)."""
        return repr((self.name, self.optim, self.batch_size, self.epochs))


@functools.cache
def _data_cache(fn: Callable[[], Data]) -> Data:
    return fn()


# ------------------------------------------------------------------------------------------ data

def _t(a: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=dtype)


@functools.cache
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(x))
    return x[perm], y[perm]


def digits(n_train: int = 640, shape: tuple[int, ...] = (-1, 64), noise: float = 0.0, target: str = "class") -> Callable[[], Data]:
    """Digits: ``n_train`` training samples, the last 400 for validation; optional label noise."""
    def make() -> Data:
        x, y = _digits_raw()
        xtr, ytr, xva, yva = x[:n_train], y[:n_train].copy(), x[-400:], y[-400:]
        mean, std = xtr.mean(0), xtr.std(0)
        std[std == 0] = 1.0
        xtr, xva = (xtr - mean) / std, (xva - mean) / std
        if noise > 0:
            rng = np.random.default_rng(1)
            flip = rng.random(len(ytr)) < noise
            ytr[flip] = rng.integers(0, 10, flip.sum())
        xtr_t, xva_t = _t(xtr).reshape(shape), _t(xva).reshape(shape)
        if target == "input":
            return Data(xtr_t, xtr_t, xva_t, xva_t)
        return Data(xtr_t, _t(ytr, torch.long), xva_t, _t(yva, torch.long))

    make.__qualname__ = f"digits({n_train},{shape},{noise},{target})"
    return make


def teacher_regression(n_train: int = 256, d: int = 16, noise: float = 0.3) -> Callable[[], Data]:
    """y = a fixed random tanh teacher of x plus noise."""
    def make() -> Data:
        g = torch.Generator().manual_seed(2)
        w1, w2 = torch.randn(d, 16, generator=g), torch.randn(16, 1, generator=g)
        x = torch.randn(n_train + 400, d, generator=g)
        y = torch.tanh(x @ w1 / math.sqrt(d)) @ w2 / 2 + noise * torch.randn(len(x), 1, generator=g)
        return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:])

    make.__qualname__ = f"teacher_regression({n_train},{d},{noise})"
    return make


def multilabel(n_train: int = 512, d: int = 24, labels: int = 6) -> Callable[[], Data]:
    """Six correlated binary labels from thresholded projections of x (noisy)."""
    def make() -> Data:
        g = torch.Generator().manual_seed(3)
        w = torch.randn(d, labels, generator=g)
        x = torch.randn(n_train + 400, d, generator=g)
        z = x @ w / math.sqrt(d) + 0.3 * torch.randn(len(x), labels, generator=g) + 0.3 * (x[:, :1] ** 2 - 1)
        y = (z > 0).float()
        return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:])

    make.__qualname__ = f"multilabel({n_train},{d},{labels})"
    return make


def sequences(n_train: int = 512, length: int = 10, d: int = 4) -> Callable[[], Data]:
    """Which of 3 fixed directions the time-weighted sum of the sequence points to most."""
    def make() -> Data:
        g = torch.Generator().manual_seed(4)
        w = torch.randn(d, 3, generator=g)
        x = torch.randn(n_train + 400, length, d, generator=g)
        decay = torch.linspace(0.3, 1.0, length).view(1, -1, 1)
        y = ((x * decay).sum(1) @ w).argmax(1)
        return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:])

    make.__qualname__ = f"sequences({n_train},{length},{d})"
    return make


def _markov_chains(vocab: int, count: int, g: torch.Generator) -> torch.Tensor:
    return torch.distributions.Dirichlet(torch.full((vocab,), 0.3)).sample((count, vocab))


def _sample_chain(trans: torch.Tensor, n: int, length: int, g: torch.Generator) -> torch.Tensor:
    vocab = trans.shape[-1]
    seq = torch.zeros(n, length, dtype=torch.long)
    seq[:, 0] = torch.randint(vocab, (n,), generator=g)
    for t in range(1, length):
        seq[:, t] = torch.multinomial(trans[seq[:, t - 1]], 1, generator=g).squeeze(1)
    return seq


def tokens(task: str, n_train: int = 384, vocab: int = 12, length: int = 13) -> Callable[[], Data]:
    """Synthetic tokens: ``lm`` next-token data from one Markov chain, ``source`` which of 3 chains."""
    def make() -> Data:
        torch.manual_seed(5)
        g = torch.Generator().manual_seed(5)
        chains = _markov_chains(vocab, 3, g)
        if task == "lm":
            seq = _sample_chain(chains[0], n_train + 256, length, g)
            return Data(seq[:n_train, :-1], seq[:n_train, 1:], seq[n_train:, :-1], seq[n_train:, 1:])
        labels = torch.randint(3, (n_train + 256,), generator=g)
        seq = torch.stack([_sample_chain(chains[int(c)], 1, length - 1, g)[0] for c in labels])
        return Data(seq[:n_train], labels[:n_train], seq[n_train:], labels[n_train:])

    make.__qualname__ = f"tokens({task},{n_train},{vocab},{length})"
    return make


def spirals(n: int = 200) -> Data:
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for c in range(3):
        r = np.linspace(0.05, 1.0, n)
        t = np.linspace(c * 4.0, c * 4.0 + 4.5, n) + rng.normal(0, 0.25, n)
        xs.append(np.stack([r * np.sin(t), r * np.cos(t)], 1))
        ys.append(np.full(n, c))
    x, y = np.concatenate(xs), np.concatenate(ys)
    perm = rng.permutation(len(x))
    x, y = x[perm], y[perm]
    split = int(0.7 * len(x))
    return Data(_t(x[:split]), _t(y[:split], torch.long), _t(x[split:]), _t(y[split:], torch.long))


def cancer() -> Data:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    xtr, xva, ytr, yva = x[:380], x[380:], y[:380], y[380:]
    mean, std = xtr.mean(0), xtr.std(0)
    return Data(_t((xtr - mean) / std), _t(ytr), _t((xva - mean) / std), _t(yva))


# ---------------------------------------------------------------------------------------- models

def mlp(*sizes: int, act: type[nn.Module] = nn.ReLU) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), act()]
        return nn.Sequential(*layers[:-1])

    make.__qualname__ = f"mlp{sizes}{act.__name__}"
    return make


def cnn(bn: bool) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), norm(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), norm(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * 16, 10),
        )

    make.__qualname__ = f"cnn(bn={bn})"
    return make


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def resnet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), ResBlock(8), ResBlock(8),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))


class Recurrent(nn.Module):
    def __init__(self, cell: str, d: int = 4, hidden: int = 24, out: int = 3) -> None:
        super().__init__()
        self.rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell](d, hidden, batch_first=True)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def recurrent(cell: str) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        return Recurrent(cell)

    make.__qualname__ = f"recurrent({cell})"
    return make


def row_lstm() -> nn.Module:
    return Recurrent("lstm", d=8, hidden=32, out=10)


class TinyTransformer(nn.Module):
    def __init__(self, causal: bool, vocab: int = 12, dim: int = 24, length: int = 12, out: int = 12) -> None:
        super().__init__()
        self.causal = causal
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        self.block = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        if self.causal:
            return self.head(self.norm(self.block(h, src_mask=self.mask, is_causal=True)))
        return self.head(self.norm(self.block(h)).mean(1))


def causal_lm() -> nn.Module:
    return TinyTransformer(causal=True)


def encoder_classifier() -> nn.Module:
    return TinyTransformer(causal=False, out=3)


def autoencoder() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 32), nn.ReLU(),
                         nn.Linear(32, 64))


# ---------------------------------------------------------------------------------------- losses

def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(out, y)


def bce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(out.reshape(y.shape), y.float())


# ----------------------------------------------------------------------------------------- tasks

IMG, SEQ = (-1, 1, 8, 8), (-1, 8, 8)
COS = {"name": "warmup_cosine", "warmup": "10%", "min_lr_ratio": 0.01}


def _o(name: str, sched: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"optimizer": {"name": name, **kw}}
    if sched is not None:
        out["scheduler"] = sched
    return out


TASKS: list[Task] = [
    Task("mlp_small_adam", "MLP 64-32-10, digits, Adam", digits(), mlp(64, 32, 10), ce, _o("adam"), 32, 3),
    Task("mlp_deep_sgdm", "MLP 4x64 deep, digits, SGD momentum", digits(), mlp(64, 64, 64, 64, 10), ce,
         _o("sgd", momentum=0.9), 32, 3),
    Task("mlp_wide_adamw_cos", "MLP 64-256-10, digits, AdamW, warm-up cosine", digits(), mlp(64, 256, 10), ce,
         _o("adamw", COS, weight_decay=0.01), 32, 3),
    Task("mlp_tanh_sgd", "tanh MLP, digits, plain SGD", digits(), mlp(64, 64, 10, act=nn.Tanh), ce, _o("sgd"), 32, 4),
    Task("mlp_noise_rmsprop", "MLP, digits with 30% label noise, RMSprop", digits(noise=0.3), mlp(64, 64, 10), ce,
         _o("rmsprop"), 32, 3),
    Task("mlp_adagrad", "MLP, digits, Adagrad", digits(), mlp(64, 64, 10), ce, _o("adagrad"), 32, 3),
    Task("mlp_bigbatch_nadam", "MLP, digits, batch 256, NAdam", digits(1024), mlp(64, 64, 10), ce, _o("nadam"), 256, 15),
    Task("mlp_smallbatch_radam", "MLP, 200 digits, batch 8, RAdam", digits(200), mlp(64, 64, 10), ce, _o("radam"), 8, 3),
    Task("mlp_overfit_adam", "wide MLP on 100 digits (overfits), Adam", digits(100), mlp(64, 256, 10), ce, _o("adam"), 10, 8),
    Task("cnn_bn_onecycle", "CNN + BatchNorm, digits, SGD momentum, OneCycle", digits(shape=IMG), cnn(True), ce,
         _o("sgd", {"name": "onecycle"}, momentum=0.9), 32, 3),
    Task("cnn_nobn_adam", "CNN without BatchNorm, digits, Adam", digits(shape=IMG), cnn(False), ce, _o("adam"), 32, 3),
    Task("cnn_nobn_nesterov_wsd", "CNN without BatchNorm, digits, SGD Nesterov, WSD", digits(shape=IMG), cnn(False), ce,
         _o("nesterov", {"name": "wsd"}), 32, 3),
    Task("resnet_adamw_cos", "residual block net, digits, AdamW, warm-up cosine", digits(shape=IMG), resnet, ce,
         _o("adamw", COS, weight_decay=0.05), 32, 3),
    Task("rnn_sgdm", "vanilla RNN, synthetic sequences, SGD momentum", sequences(), recurrent("rnn"), ce,
         _o("sgd", momentum=0.9), 32, 4),
    Task("lstm_adam", "LSTM, synthetic sequences, Adam", sequences(), recurrent("lstm"), ce, _o("adam"), 32, 4),
    Task("gru_rmsprop", "GRU, synthetic sequences, RMSprop", sequences(), recurrent("gru"), ce, _o("rmsprop"), 32, 4),
    Task("gru_adamw_onecycle", "GRU, synthetic sequences, AdamW, OneCycle", sequences(), recurrent("gru"), ce,
         _o("adamw", {"name": "onecycle"}), 32, 4),
    Task("lstm_rows_nadam", "LSTM over digit rows, NAdam", digits(shape=SEQ), row_lstm, ce, _o("nadam"), 32, 3),
    Task("encoder_adamw_cos", "transformer encoder, which Markov source, AdamW, warm-up cosine", tokens("source"),
         encoder_classifier, ce, _o("adamw", COS, weight_decay=0.01), 32, 4),
    Task("causal_lm_adam", "causal LM on Markov tokens, Adam", tokens("lm"), causal_lm, ce, _o("adam"), 32, 4),
    Task("causal_lm_adamw_wsd", "causal LM on Markov tokens, AdamW, WSD", tokens("lm"), causal_lm, ce,
         _o("adamw", {"name": "wsd"}, weight_decay=0.01), 32, 4),
    Task("autoencoder_adam", "autoencoder on digits (MSE), Adam", digits(target="input"), autoencoder, mse,
         _o("adam"), 32, 4),
    Task("autoencoder_sgdm", "autoencoder on digits (MSE), SGD momentum", digits(target="input"), autoencoder, mse,
         _o("sgd", momentum=0.9), 32, 4),
    Task("regression_overfit_adam", "wide MLP on 48 noisy points (overfits), Adam", teacher_regression(48, 16, 0.6),
         mlp(16, 256, 256, 1), mse, _o("adam"), 16, 25),
    Task("regression_sgd", "MLP regression, teacher data, plain SGD", teacher_regression(), mlp(16, 64, 1), mse,
         _o("sgd"), 32, 6),
    Task("regression_adagrad_cos", "MLP regression, teacher data, Adagrad, warm-up cosine", teacher_regression(),
         mlp(16, 64, 64, 1), mse, _o("adagrad", COS), 32, 6),
    Task("multilabel_adam", "multi-label (6 labels, BCE), Adam", multilabel(), mlp(24, 64, 6), bce, _o("adam"), 32, 4),
    Task("multilabel_nesterov_onecycle", "multi-label (BCE), SGD Nesterov, OneCycle", multilabel(), mlp(24, 64, 6), bce,
         _o("nesterov", {"name": "onecycle"}), 32, 4),
    Task("logreg_sgd", "logistic regression, breast cancer, plain SGD", cancer, mlp(30, 1), bce, _o("sgd"), 32, 6),
    Task("spirals_radam_wsd", "MLP on 3 spirals, RAdam, WSD", spirals, mlp(2, 64, 64, 3), ce,
         _o("radam", {"name": "wsd"}), 32, 8),
]
