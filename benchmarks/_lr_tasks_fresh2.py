"""A second blind held-out suite for ``benchmarks/lr_finder_quality.py``: 16 tasks no rule was scored on.

Written on 2026-12-03, after the first fresh set (``_lr_tasks_fresh.FRESH_TASKS``) had been scored, and
before any LR-finder rule was scored on these tasks. They are ALL held out: none is a development task,
and no rule, constant or default may be chosen on them. Only their oracle grids (21 LRs x 3 seeds) were
computed while writing them, to check that each oracle is sound (interior best LR, a clear basin against
LR 1e-5, no coin-flip seeds, seeds agreeing on the best LR); no range test was run on them.

Each task differs from every one of the 46 earlier tasks in at least two of: dataset, model family or
normalisation, loss, optimizer, schedule, data regime. Families covered: GroupNorm CNN (stripe
orientation), depthwise-separable CNN (counting blobs), wide-shallow ELU MLP (iris), narrow-deep tanh
MLP (60 wine samples with feature noise), GRU over synthetic event streams, bidirectional LSTM per-token
tagger, pre-norm causal transformer LM with dropout (noisy arithmetic progressions), heteroscedastic Gaussian-NLL MLP,
mixture-density network, quantile (pinball) regression, label-smoothed Mish MLP, focal loss on a 90/10
imbalanced task, weight-tied autoencoder, denoising autoencoder (breast-cancer features), LeakyReLU MLP at
batch 2, narrow-deep Mish MLP with log-cosh loss; regimes: batch 2, full batch, tiny data with feature
noise, class imbalance; optimizers AdamW (wd 0.1), RMSprop with momentum, SGD Nesterov, Adadelta, plain and
momentum SGD, Adam, RAdamW, Adamax, NAdam, NAdamW, Adagrad, ASGD; schedules multistep, warmup_cosine,
cosine_restarts, linear, polynomial, step, exponential, onecycle, wsd, inverse_sqrt, constant.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from _lr_tasks import COS, Data, Task, _o, ce, mse
from _lr_tasks_fresh import _s, _split, act_mlp, sk
from torch import nn

# ------------------------------------------------------------------------------------------ data


def stripes(n_train: int = 600, n_val: int = 400, size: int = 10, noise: float = 0.8) -> Callable[[], Data]:
    """Noisy sinusoidal gratings at one of 4 orientations (0, 45, 90, 135 degrees); which one."""
    def make() -> Data:
        g = torch.Generator().manual_seed(41)
        n = n_train + n_val
        labels = torch.randint(4, (n,), generator=g)
        theta = labels.float() * math.pi / 4
        freq = 1.0 + 0.6 * torch.rand(n, generator=g)
        phase = 2 * math.pi * torch.rand(n, generator=g)
        r, c = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
        proj = torch.cos(theta).view(-1, 1, 1) * c + torch.sin(theta).view(-1, 1, 1) * r
        img = torch.sin(freq.view(-1, 1, 1) * proj + phase.view(-1, 1, 1)) + noise * torch.randn(n, size, size, generator=g)
        img = img.unsqueeze(1)
        return Data(img[:n_train], labels[:n_train], img[n_train:], labels[n_train:])

    make.__qualname__ = f"stripes({n_train},{n_val},{size},{noise})"
    return make


def blob_count(n_train: int = 480, n_val: int = 400, size: int = 10, noise: float = 0.5) -> Callable[[], Data]:
    """Images holding 1 to 4 Gaussian blobs at random places; the class is the count minus one."""
    def make() -> Data:
        g = torch.Generator().manual_seed(42)
        n = n_train + n_val
        labels = torch.randint(4, (n,), generator=g)
        r, c = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
        centres = 1.0 + (size - 2) * torch.rand(n, 4, 2, generator=g)
        present = (torch.arange(4).view(1, -1) <= labels.view(-1, 1)).float()
        d2 = (r.view(1, 1, size, size) - centres[..., 0, None, None]) ** 2 + \
             (c.view(1, 1, size, size) - centres[..., 1, None, None]) ** 2
        img = (present[..., None, None] * torch.exp(-d2 / 2.0)).sum(1) + noise * torch.randn(n, size, size, generator=g)
        img = img.unsqueeze(1)
        return Data(img[:n_train], labels[:n_train], img[n_train:], labels[n_train:])

    make.__qualname__ = f"blob_count({n_train},{n_val},{size},{noise})"
    return make


def bundled(name: str, n_train: int, n_val: int) -> Callable[[], Data]:
    """A scikit-learn bundled classification set (``iris``, ``wine``), shuffled, split and standardised."""
    def make() -> Data:
        import sklearn.datasets as ds

        x, y = getattr(ds, f"load_{name}")(return_X_y=True)
        return _split(x, y, n_train, n_val, seed=40)

    make.__qualname__ = f"bundled({name},{n_train},{n_val})"
    return make


def quantile_classes(n_train: int, n_val: int) -> Callable[[], Data]:
    """4-D isotropic Gaussian split into 3 classes by nested shells of equal probability."""
    def make() -> Data:
        import sklearn.datasets as ds

        x, y = ds.make_gaussian_quantiles(n_samples=n_train + n_val, n_features=4, n_classes=3, random_state=52)
        return _split(x, y, n_train, n_val, seed=52)

    make.__qualname__ = f"quantile_classes({n_train},{n_val})"
    return make


def feature_noise(make_data: Callable[[], Data], std: float) -> Callable[[], Data]:
    """``make_data`` with fixed Gaussian noise of ``std`` added to every (standardised) input."""
    def make() -> Data:
        d = make_data()
        g = torch.Generator().manual_seed(43)
        return Data(d.x_train + std * torch.randn(d.x_train.shape, generator=g), d.y_train,
                    d.x_val + std * torch.randn(d.x_val.shape, generator=g), d.y_val)

    make.__qualname__ = f"feature_noise({getattr(make_data, '__qualname__', '')},{std})"
    return make


def events(n_train: int = 500, n_val: int = 400, length: int = 16, kinds: int = 5) -> Callable[[], Data]:
    """Event streams (one-hot kind + inter-arrival gap); the class is how many kind-0 events arrive within
    0.3 of the previous event (0, 1, 2 or more)."""
    def make() -> Data:
        g = torch.Generator().manual_seed(44)
        n = n_train + n_val
        kind = torch.randint(kinds, (n, length), generator=g)
        gap = -torch.log(torch.rand(n, length, generator=g)) * 0.6
        x = torch.cat([nn.functional.one_hot(kind, kinds).float(), gap.unsqueeze(-1)], -1)
        bursts = ((kind == 0) & (gap < 0.3)).sum(1)
        labels = bursts.clamp(max=2)
        return Data(x[:n_train], labels[:n_train], x[n_train:], labels[n_train:])

    make.__qualname__ = f"events({n_train},{n_val},{length},{kinds})"
    return make


def neighbour_tags(n_train: int = 500, n_val: int = 300, vocab: int = 6, length: int = 12) -> Callable[[], Data]:
    """Per-token tags: (left neighbour + right neighbour) mod 3 (padding 0 at both ends), 5 % resampled."""
    def make() -> Data:
        g = torch.Generator().manual_seed(45)
        toks = torch.randint(vocab, (n_train + n_val, length), generator=g)
        padded = nn.functional.pad(toks, (1, 1))
        tags = (padded[:, :-2] + padded[:, 2:]) % 3
        noisy = torch.rand(tags.shape, generator=g) < 0.05
        tags = torch.where(noisy, torch.randint(3, tags.shape, generator=g), tags)
        return Data(toks[:n_train], tags[:n_train], toks[n_train:], tags[n_train:])

    make.__qualname__ = f"neighbour_tags({n_train},{n_val},{vocab},{length})"
    return make


def progressions(n_train: int = 320, n_val: int = 256, vocab: int = 16, length: int = 13) -> Callable[[], Data]:
    """Next-token data: arithmetic progressions mod ``vocab`` (step 1, 2 or 3), 10 % of tokens replaced."""
    def make() -> Data:
        g = torch.Generator().manual_seed(46)
        n = n_train + n_val
        start = torch.randint(vocab, (n, 1), generator=g)
        step = torch.randint(1, 4, (n, 1), generator=g)
        seq = (start + step * torch.arange(length).view(1, -1)) % vocab
        noise = torch.rand(n, length, generator=g) < 0.1
        seq = torch.where(noise, torch.randint(vocab, (n, length), generator=g), seq)
        return Data(seq[:n_train, :-1], seq[:n_train, 1:], seq[n_train:, :-1], seq[n_train:, 1:])

    make.__qualname__ = f"progressions({n_train},{n_val},{vocab},{length})"
    return make


def hetero(n_train: int = 512, n_val: int = 400) -> Callable[[], Data]:
    """1-D regression with input-dependent noise: y = sin(2x) + 0.3x + (0.05 + 0.4|sin x|) eps."""
    def make() -> Data:
        g = torch.Generator().manual_seed(47)
        x = 6 * torch.rand(n_train + n_val, 1, generator=g) - 3
        y = torch.sin(2 * x) + 0.3 * x + (0.05 + 0.4 * torch.sin(x).abs()) * torch.randn(x.shape, generator=g)
        return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:])

    make.__qualname__ = f"hetero({n_train},{n_val})"
    return make


def inverse_sine(n_train: int = 600, n_val: int = 400) -> Callable[[], Data]:
    """The inverse of x = y + 0.3 sin(2 pi y) + noise: predict y from x, a multimodal conditional."""
    def make() -> Data:
        g = torch.Generator().manual_seed(48)
        y = torch.rand(n_train + n_val, 1, generator=g)
        x = y + 0.3 * torch.sin(2 * math.pi * y) + 0.05 * torch.randn(y.shape, generator=g)
        x = (x - 0.5) / 0.3
        return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:])

    make.__qualname__ = f"inverse_sine({n_train},{n_val})"
    return make


def skewed(n_train: int = 500, n_val: int = 400, d: int = 8) -> Callable[[], Data]:
    """y = a fixed nonlinear function of x plus right-skewed (exponential) noise whose scale grows with x0."""
    def make() -> Data:
        g = torch.Generator().manual_seed(49)
        w = torch.randn(d, generator=g) / math.sqrt(d)
        x = torch.randn(n_train + n_val, d, generator=g)
        scale = 0.3 + 0.3 * torch.sigmoid(2 * x[:, :1])
        noise = -torch.log(torch.rand(len(x), 1, generator=g)) * scale
        y = torch.tanh(x @ w).view(-1, 1) + 0.3 * x[:, 1:2] * x[:, 2:3] + noise
        return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:])

    make.__qualname__ = f"skewed({n_train},{n_val},{d})"
    return make


def manifold(n_train: int = 500, n_val: int = 400, d: int = 24, latent: int = 3) -> Callable[[], Data]:
    """Points of a random tanh image of a ``latent``-dimensional Gaussian in ``d`` dimensions, plus noise
    (target = input)."""
    def make() -> Data:
        g = torch.Generator().manual_seed(50)
        z = torch.randn(n_train + n_val, latent, generator=g)
        w = torch.randn(latent, d, generator=g)
        x = torch.tanh(z @ w) + 0.1 * torch.randn(len(z), d, generator=g)
        x = (x - x[:n_train].mean(0)) / x[:n_train].std(0)
        return Data(x[:n_train], x[:n_train], x[n_train:], x[n_train:])

    make.__qualname__ = f"manifold({n_train},{n_val},{d},{latent})"
    return make


def autoencode(make_data: Callable[[], Data]) -> Callable[[], Data]:
    """``make_data``'s inputs as targets."""
    def make() -> Data:
        d = make_data()
        return Data(d.x_train, d.x_train, d.x_val, d.x_val)

    make.__qualname__ = f"autoencode({getattr(make_data, '__qualname__', '')})"
    return make


def swiss_position(n_train: int = 500, n_val: int = 400) -> Callable[[], Data]:
    """Noisy Swiss-roll points; the target is the (standardised) position along the roll."""
    def make() -> Data:
        import sklearn.datasets as ds

        x, t = ds.make_swiss_roll(n_train + n_val, noise=0.5, random_state=51)
        return _split(x, t, n_train, n_val, seed=51, regression=True)

    make.__qualname__ = f"swiss_position({n_train},{n_val})"
    return make


# ---------------------------------------------------------------------------------------- models


def gn_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, 4),
    )


def dw_sep_cnn() -> nn.Module:
    """Depthwise-separable convolutions (depthwise 3x3 then pointwise 1x1), mean-pooled (the mean is proportional to the count)."""
    return nn.Sequential(
        nn.Conv2d(1, 12, 3, padding=1), nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.Conv2d(12, 24, 1), nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.Conv2d(24, 24, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 4),
    )


class EventGRU(nn.Module):
    """GRU over event streams; a linear read-out of the last state."""

    def __init__(self, d: int = 6, hidden: int = 24, out: int = 3) -> None:
        super().__init__()
        self.rnn = nn.GRU(d, hidden, batch_first=True)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class BiLSTMTagger(nn.Module):
    """Embedding -> bidirectional LSTM -> per-token MLP tag scores."""

    def __init__(self, vocab: int = 6, dim: int = 16, hidden: int = 16, tags: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Linear(2 * hidden, 32), nn.ReLU(), nn.Linear(32, tags))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(tokens))
        return self.head(out)


class PreNormLM(nn.Module):
    """Two pre-norm causal transformer layers with dropout 0.1, a final LayerNorm and a tied read-out
    scaled by 1/sqrt(dim)."""

    def __init__(self, vocab: int = 16, dim: int = 32, length: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.1, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.embed(tokens) + self.pos[:, : tokens.shape[1]], mask=self.mask, is_causal=True)
        return self.norm(h) @ self.embed.weight.T / math.sqrt(self.embed.embedding_dim)


class TiedAE(nn.Module):
    """Autoencoder whose decoder reuses the encoder's weights transposed (tanh code)."""

    def __init__(self, d: int = 24, hidden: int = 16, code: int = 4) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(hidden, d) / math.sqrt(d))
        self.w2 = nn.Parameter(torch.randn(code, hidden) / math.sqrt(hidden))
        self.b = nn.ParameterList(nn.Parameter(torch.zeros(k)) for k in (hidden, code, hidden, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x @ self.w1.T + self.b[0])
        z = torch.tanh(h @ self.w2.T + self.b[1])
        h = torch.tanh(z @ self.w2 + self.b[2])
        return h @ self.w1 + self.b[3]


class DenoisingAE(nn.Module):
    """MLP autoencoder that corrupts its input with Gaussian noise (std 0.5) while training."""

    def __init__(self, d: int = 30, hidden: int = 48, code: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.ELU(), nn.Linear(hidden, code), nn.ELU(),
                                 nn.Linear(code, hidden), nn.ELU(), nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + 0.5 * torch.randn_like(x) if self.training else x)


def event_gru() -> nn.Module:
    return EventGRU()


def bilstm_tagger() -> nn.Module:
    return BiLSTMTagger()


def prenorm_lm() -> nn.Module:
    return PreNormLM()


def tied_ae() -> nn.Module:
    return TiedAE()


def denoising_ae() -> nn.Module:
    return DenoisingAE()


# ---------------------------------------------------------------------------------------- losses


def gaussian_nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Heteroscedastic Gaussian negative log-likelihood; ``out`` is (mean, raw variance)."""
    var = nn.functional.softplus(out[:, 1:2]) + 1e-3
    return nn.functional.gaussian_nll_loss(out[:, :1], y, var)


def mdn_nll(out: torch.Tensor, y: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Negative log-likelihood of a ``k``-component 1-D Gaussian mixture (logits, means, raw scales)."""
    logits, mean, raw = out[:, :k], out[:, k: 2 * k], out[:, 2 * k:]
    std = nn.functional.softplus(raw) + 1e-3
    comp = -0.5 * ((y - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return -torch.logsumexp(torch.log_softmax(logits, 1) + comp, 1).mean()


QUANTILES = (0.1, 0.5, 0.9)


def pinball(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean pinball (quantile) loss at the 0.1, 0.5 and 0.9 quantiles (one output each)."""
    q = torch.tensor(QUANTILES).view(1, -1)
    diff = y - out
    return torch.maximum(q * diff, (q - 1) * diff).mean()


def smooth_ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y, label_smoothing=0.1)


def focal(out: torch.Tensor, y: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss on logits (gamma 2, positives weighted 0.75)."""
    y = y.float().view(out.shape)
    logp = -nn.functional.binary_cross_entropy_with_logits(out, y, reduction="none")
    p = torch.exp(logp)
    return (-(0.75 * y + 0.25 * (1 - y)) * (1 - p) ** gamma * logp).mean()


def log_cosh(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d = out - y
    return (d + nn.functional.softplus(-2 * d) - math.log(2.0)).mean()


# ----------------------------------------------------------------------------------------- tasks


def _binary(make_data: Callable[[], Data]) -> Callable[[], Data]:
    """Integer 0/1 labels as float column targets (for a single-logit loss)."""
    def make() -> Data:
        d = make_data()
        return Data(d.x_train, d.y_train.float().view(-1, 1), d.x_val, d.y_val.float().view(-1, 1))

    make.__qualname__ = f"binary({getattr(make_data, '__qualname__', '')})"
    return make


def _cancer_features() -> Callable[[], Data]:
    return autoencode(sk("breast_cancer", 300, 269))


FRESH2_TASKS: list[Task] = [
    Task("fresh2_stripes_gncnn_adamw01_multistep", "GroupNorm CNN, stripe orientation, AdamW wd 0.1, multistep",
         stripes(), gn_cnn, ce, _o("adamw", _s("multistep", milestones=["50%", "80%"], gamma=0.3), weight_decay=0.1),
         32, 4),
    Task("fresh2_blobcount_dwsep_rmspropmom_cos", "depthwise-separable CNN counting blobs, RMSprop momentum 0.5, "
         "warm-up cosine", blob_count(), dw_sep_cnn, ce, _o("rmsprop", COS, momentum=0.5), 32, 5),
    Task("fresh2_iris_wide_elu_nesterov_restarts", "wide-shallow ELU MLP on iris, SGD Nesterov, cosine restarts",
         bundled("iris", 90, 60), act_mlp(4, 256, 3, act=nn.ELU), ce,
         _o("nesterov", _s("cosine_restarts", cycle="50%")), 8, 12),
    Task("fresh2_wine_noisy_narrowdeep_adadelta", "narrow-deep tanh MLP, 60 wine samples + feature noise, Adadelta",
         feature_noise(bundled("wine", 60, 118), 0.7), act_mlp(13, 16, 16, 16, 16, 16, 3, act=nn.Tanh), ce,
         _o("adadelta"), 10, 15),
    Task("fresh2_events_gru_sgdm_poly", "GRU over event streams (count bursts), SGD momentum, polynomial decay",
         events(), event_gru, ce, _o("sgd", _s("polynomial", power=1.5), momentum=0.9), 32, 5),
    Task("fresh2_tagger_bilstm_adam_linear", "bidirectional LSTM per-token tagger, Adam, linear with warm-up",
         neighbour_tags(), bilstm_tagger, ce, _o("adam", _s("linear", warmup="10%")), 32, 6),
    Task("fresh2_progressions_prenorm_lm_radamw_cos", "pre-norm causal transformer LM with dropout, noisy "
         "progressions, RAdamW, warm-up cosine", progressions(), prenorm_lm, ce,
         _o("radamw", COS, weight_decay=0.05), 32, 4),
    Task("fresh2_hetero_nll_fullbatch_adamax_exp", "heteroscedastic Gaussian-NLL MLP, full batch, Adamax, "
         "exponential", hetero(), act_mlp(1, 64, 64, 2, act=nn.SiLU), gaussian_nll,
         _o("adamax", _s("exponential", gamma=0.99)), 512, 150),
    Task("fresh2_inverse_mdn_nadamw_wsd", "mixture-density network (3 Gaussians), inverse sine, NAdamW, WSD",
         inverse_sine(), act_mlp(1, 64, 64, 9, act=nn.Tanh), mdn_nll,
         _o("nadamw", _s("wsd", warmup="5%", decay="20%"), weight_decay=0.01), 32, 6),
    Task("fresh2_skewed_pinball_rmsprop_onecycle", "quantile (pinball) regression, skewed noise, RMSprop, OneCycle",
         skewed(), act_mlp(8, 64, 64, 3, act=nn.ReLU), pinball, _o("rmsprop", _s("onecycle")), 32, 6),
    Task("fresh2_quantiles_mish_smoothce_adagrad_step", "Mish MLP, Gaussian quantiles (3 classes), label "
         "smoothing, Adagrad, step decay", quantile_classes(600, 400), act_mlp(4, 64, 64, 3, act=nn.Mish), smooth_ce,
         _o("adagrad", _s("step", step_size="40%", gamma=0.3)), 32, 5),
    Task("fresh2_imbalanced_focal_leaky_nadam_multistep", "LeakyReLU MLP, 90/10 imbalanced classes, focal loss, "
         "NAdam, multistep", _binary(sk("classification", 800, 800, n_features=12, n_informative=6,
                                          weights=[0.9, 0.1], flip_y=0.02, random_state=53)),
         act_mlp(12, 64, 64, 1, act=nn.LeakyReLU), focal,
         _o("nadam", _s("multistep", milestones=["60%"], gamma=0.2)), 32, 5),
    Task("fresh2_manifold_tiedae_adam_restarts", "weight-tied autoencoder on a 3-D manifold in 24-D, Adam, cosine "
         "restarts", manifold(), tied_ae, mse,
         _o("adam", _s("cosine_restarts", cycle="34%")), 32, 6),
    Task("fresh2_cancer_dae_asgd_linear", "denoising autoencoder on breast-cancer features, ASGD, linear decay",
         _cancer_features(), denoising_ae, mse, _o("asgd", _s("linear")), 16, 6),
    Task("fresh2_blobs_batch2_leaky_sgd_step", "LeakyReLU MLP, overlapping blobs, batch 2, plain SGD, step decay",
         sk("blobs", 120, 400, centers=4, n_features=5, cluster_std=3.0, random_state=54),
         act_mlp(5, 32, 32, 4, act=nn.LeakyReLU), ce, _o("sgd", _s("step", step_size="50%", gamma=0.2)), 2, 2),
    Task("fresh2_swiss_narrowdeep_mish_logcosh_nesterov_inv_sqrt", "narrow-deep Mish MLP, Swiss-roll position, "
         "log-cosh loss, SGD Nesterov + wd, inverse sqrt", swiss_position(),
         act_mlp(3, 32, 32, 32, 32, 1, act=nn.Mish), log_cosh,
         _o("nesterov", _s("inverse_sqrt", warmup="10%"), weight_decay=1e-4), 32, 12),
]
