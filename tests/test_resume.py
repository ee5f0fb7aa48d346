"""Exact resume with every callback active: at an epoch boundary, mid-epoch, and after a crash.

A reference run trains 4 epochs of 16 optimizer steps with Checkpoint (every 7 steps and every
epoch), EarlyStopping, GradNormMonitor and NonFiniteGuard, on a model with dropout (so random
states matter). Runs resumed with ``ckpt_path=`` from its checkpoints must end bitwise equal to it:
weights, optimizer state, scheduler state, LR at every step, and every callback's state.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset, TensorDataset
from training_helpers import EpochSeededSampler, TinyClassifier

from lightning_optkit.callbacks import Checkpoint, EarlyStopping, GradNormMonitor, NonFiniteGuard


def Net(optim: dict[str, Any]) -> TinyClassifier:
    return TinyClassifier(optim, dropout=0.1)


class LRRecorder(Callback):
    """The LR of every group at each optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.lrs.append([g["lr"] for g in optimizer.param_groups])


class CrashAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


def _xy(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


def _loaders(kind: str = "seeded") -> tuple[DataLoader, DataLoader]:
    x, y = _xy()
    ds = TensorDataset(x, y)
    if kind == "seeded":
        train = DataLoader(ds, batch_size=4, sampler=EpochSeededSampler(len(ds)))
    elif kind == "shuffle":
        train = DataLoader(ds, batch_size=4, shuffle=True)
    else:
        train = DataLoader(ds, batch_size=4)
    return train, DataLoader(ds, batch_size=16)


def _trainer(callbacks: list[Callback], **kw: Any) -> L.Trainer:
    args: dict[str, Any] = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, deterministic=True, num_sanity_val_steps=0, max_epochs=4)
    args.update(kw)
    return L.Trainer(callbacks=callbacks, **args)


CONFIGS = {
    "warmup_cosine": {"optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
                      "param_groups": [{"params": "backbone.*", "lr_scale": 0.1}],
                      "scheduler": {"name": "warmup_cosine", "warmup": 4, "min_lr_ratio": 0.02}},
    "onecycle": {"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
                 "scheduler": {"name": "onecycle", "pct_start": 0.25}},
    "plateau": {"optimizer": {"name": "adam", "lr": 0.02},
                "scheduler": {"name": "plateau", "monitor": "val_loss", "warmup": 6, "patience": 0, "factor": 0.5,
                              "threshold": 0.05}},
}


def _callbacks(dirpath: Path, *, async_save: bool) -> dict[str, Callback]:
    return {
        "ckpt": Checkpoint(dirpath=dirpath, every_n_train_steps=7, every_n_epochs=1, save_top_k=-1,
                           async_save=async_save),
        "es": EarlyStopping("val_loss", patience=4, min_delta="2%", smoothing="ema", ema_alpha=0.5, start_epoch=1,
                            restore_best_weights=True),
        "gn": GradNormMonitor(),
        "guard": NonFiniteGuard(),
        "lr": LRRecorder(),
    }


def _equal(a: Any, b: Any) -> bool:
    """Bitwise equality through nested containers (tensors: same dtype, shape and values)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dtype != b.dtype or a.shape != b.shape:
            return False
        return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))  # NaN == NaN too
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _diff_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [k for k in a.keys() | b.keys() if k not in a or k not in b or not _equal(a[k], b[k])]


class Outcome:
    """What a run ends with: everything that must match bitwise."""

    def __init__(self, trainer: L.Trainer, model: Net, cbs: dict[str, Callback]) -> None:
        self.global_step = trainer.global_step
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.optimizer = trainer.optimizers[0].state_dict()
        self.scheduler = [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs]
        self.lrs = list(cbs["lr"].lrs)  # type: ignore[attr-defined]
        self.states = {name: cb.state_dict() for name, cb in cbs.items() if name in ("es", "gn", "guard")}
        self.es: EarlyStopping = cbs["es"]  # type: ignore[assignment]

    def assert_same_as(self, ref: Outcome, steps_before: int) -> None:
        assert self.global_step == ref.global_step
        assert len(self.lrs) == len(ref.lrs) - steps_before
        assert self.lrs == ref.lrs[steps_before:]  # exact float equality, step by step
        assert _diff_keys(self.weights, ref.weights) == []
        assert _equal(self.optimizer, ref.optimizer)
        assert _equal(self.scheduler, ref.scheduler)
        for name, state in ref.states.items():
            assert _diff_keys(self.states[name], state) == [], name


def _fit(config: dict[str, Any], dirpath: Path, *, ckpt_path: str | None = None, async_save: bool = False,
         extra: list[Callback] = (), loader: str = "seeded", seed: int = 1) -> tuple[Outcome | None, dict[str, Callback]]:
    L.seed_everything(seed, verbose=False)
    cbs = _callbacks(dirpath, async_save=async_save)
    model = Net(config)
    trainer = _trainer([*cbs.values(), *extra])
    train, val = _loaders(loader)
    trainer.fit(model, train, val, ckpt_path=ckpt_path, weights_only=True)
    return Outcome(trainer, model, cbs), cbs


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Outcome, Path]]:
    cache: dict[str, tuple[Outcome, Path]] = {}

    def get(kind: str) -> tuple[Outcome, Path]:
        if kind not in cache:
            folder = tmp_path_factory.mktemp(f"ref-{kind}")
            outcome, _ = _fit(CONFIGS[kind], folder, async_save=kind == "plateau")
            assert outcome is not None
            cache[kind] = (outcome, folder)
        return cache[kind]

    return get


# epoch boundary: end of epoch 1 (step 32); mid-epoch: step 35 = epoch 2 after its third batch
POINTS = {"epoch": ("epoch=1-step=32.ckpt", 32), "mid_epoch": ("epoch=2-step=35.ckpt", 35)}


@pytest.mark.parametrize("point", sorted(POINTS))
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_resume_is_bitwise_exact(kind: str, point: str, reference: Callable[[str], tuple[Outcome, Path]],
                                 tmp_path: Path) -> None:
    ref, ref_dir = reference(kind)
    folder = tmp_path / "ckpt"
    shutil.copytree(ref_dir, folder)
    name, steps_before = POINTS[point]
    assert Checkpoint.verify(folder / name)
    resumed, _ = _fit(CONFIGS[kind], folder, ckpt_path=str(folder / name), seed=123)  # another seed: no effect
    assert resumed is not None
    resumed.assert_same_as(ref, steps_before)
    assert ref.global_step == 64
    es = ref.es
    assert es.checks == resumed.es.checks == 4 and es.best_state is not None
    if kind == "plateau":
        assert min(lr[0] for lr in ref.lrs) < 0.02  # the plateau really reduced the LR


def test_resume_after_a_crash_from_latest_valid(reference: Callable[[str], tuple[Outcome, Path]],
                                                tmp_path: Path) -> None:
    ref, _ = reference("warmup_cosine")
    folder = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(CONFIGS["warmup_cosine"], folder, extra=[CrashAt(40)])
    latest = Checkpoint.latest_valid(folder)
    assert latest is not None and Path(latest).name == "epoch=2-step=35.ckpt"
    emergency = folder / "emergency-rank0-epoch=2-step=40.ckpt"
    assert emergency.exists() and Checkpoint.verify(emergency)
    assert Checkpoint.latest_valid(folder, include_emergency=True) == str(emergency)
    assert torch.load(latest, weights_only=True)["global_step"] == 35

    resumed, _ = _fit(CONFIGS["warmup_cosine"], folder, ckpt_path=latest, seed=7)
    assert resumed is not None
    resumed.assert_same_as(ref, 35)
    # the emergency file, written in on_train_batch_end after step 40, is an exact resume point too
    again, _ = _fit(CONFIGS["warmup_cosine"], tmp_path / "again", ckpt_path=str(emergency), seed=7)
    assert again is not None
    again.assert_same_as(ref, 40)


# -- where exactness ends: measured, not assumed ------------------------------------------------------
def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


class PrivateNoise(Dataset):
    """Adds noise from a generator the dataset owns: its state lives in no checkpoint."""

    def __init__(self) -> None:
        self.x, self.y = _xy()
        self.gen = torch.Generator().manual_seed(5)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i] + 0.1 * torch.randn(6, generator=self.gen), self.y[i]


def _plain_fit(tmp: Path, ckpt_cb: Callback, train: DataLoader, *, ckpt_path: str | None = None,
               seed: int = 1) -> dict[str, torch.Tensor]:
    L.seed_everything(seed, verbose=False)
    model = Net(CONFIGS["warmup_cosine"])
    trainer = _trainer([ckpt_cb], max_epochs=3, limit_val_batches=0)
    trainer.fit(model, train, ckpt_path=ckpt_path, weights_only=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_mid_epoch_limits_are_measured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What is exact mid-epoch and what is not, with the measured final-weight difference.

    * Lightning alone (``ModelCheckpoint``) restarts a plain DataLoader at the start of the epoch:
      the resumed epoch trains on its first batches twice and never on its last ones.
    * ``restore_rng=False`` with ``shuffle=True``: the resumed epoch draws a new permutation.
    * A dataset that owns a random generator: its state is in no checkpoint (make the randomness a
      function of (seed, epoch, index), or give the loader a ``state_dict``).
    The same setups with our Checkpoint and its defaults are exact (difference 0.0).
    """
    measured: dict[str, float] = {}
    seeded = lambda: _loaders("seeded")[0]  # noqa: E731
    shuffled = lambda: _loaders("shuffle")[0]  # noqa: E731
    cases: dict[str, tuple[Callable[[Path], Callback], Callable[[], DataLoader], str]] = {
        "lightning_modelcheckpoint": (
            lambda d: ModelCheckpoint(dirpath=d, every_n_train_steps=7, save_top_k=-1, filename="{step}"),
            seeded, "step=21.ckpt"),
        "optkit_seeded": (lambda d: Checkpoint(dirpath=d, every_n_train_steps=7, save_top_k=-1, filename="{step}"),
                          seeded, "21.ckpt"),
        "optkit_shuffle": (lambda d: Checkpoint(dirpath=d, every_n_train_steps=7, save_top_k=-1, filename="{step}"),
                           shuffled, "21.ckpt"),
        "optkit_shuffle_no_rng": (
            lambda d: Checkpoint(dirpath=d, every_n_train_steps=7, save_top_k=-1, filename="{step}",
                                 restore_rng=False), shuffled, "21.ckpt"),
        "optkit_private_generator": (
            lambda d: Checkpoint(dirpath=d, every_n_train_steps=7, save_top_k=-1, filename="{step}"),
            lambda: DataLoader(PrivateNoise(), batch_size=4, sampler=EpochSeededSampler(64)), "21.ckpt"),
    }
    for name, (make_cb, make_loader, file) in cases.items():
        folder = tmp_path / name
        full = _plain_fit(folder, make_cb(folder), make_loader())
        resumed = _plain_fit(folder, make_cb(tmp_path / f"{name}-2"), make_loader(), ckpt_path=str(folder / file),
                             seed=3)
        measured[name] = _max_diff(full, resumed)
    with capsys.disabled():
        print("\nmid-epoch resume (step 21 of 48), max |w_resumed - w_uninterrupted|:")
        for name, value in measured.items():
            print(f"  {name:28s} {value:.3g}")
    assert measured["optkit_seeded"] == 0.0
    assert measured["optkit_shuffle"] == 0.0
    assert measured["lightning_modelcheckpoint"] > 1e-4
    assert measured["optkit_shuffle_no_rng"] > 1e-4
    assert measured["optkit_private_generator"] > 1e-4


@pytest.mark.parametrize("setup", ["accumulate", "val_check_interval"])
def test_every_saved_step_is_an_exact_resume_point(setup: str, tmp_path: Path) -> None:
    """``shuffle=True`` and dropout, with gradient accumulation or validation twice per epoch: resuming
    from any checkpoint of the run (mid-epoch, right after a mid-epoch validation, at an epoch end)
    ends bitwise where the uninterrupted run ends."""
    kw: dict[str, Any] = {"accumulate_grad_batches": 3} if setup == "accumulate" else {"val_check_interval": 0.5}
    config = CONFIGS["plateau" if setup == "val_check_interval" else "warmup_cosine"]

    def run(folder: Path, ckpt_path: str | None = None, seed: int = 1) -> dict[str, torch.Tensor]:
        L.seed_everything(seed, verbose=False)
        model = Net(config)
        ckpt = Checkpoint(dirpath=folder, every_n_train_steps=3, every_n_epochs=1, save_top_k=-1, filename="{step}")
        trainer = _trainer([ckpt], max_epochs=3, **kw)
        train, val = _loaders("shuffle")
        trainer.fit(model, train, val, ckpt_path=ckpt_path, weights_only=True)
        return {k: v.detach().clone() for k, v in model.state_dict().items()} | {
            f"opt.{k}": v for k, v in _flat(trainer.optimizers[0].state_dict()["state"]).items()}

    full = run(tmp_path / "full")
    files = sorted((tmp_path / "full").glob("[0-9]*.ckpt"), key=lambda p: int(p.stem))
    assert len(files) >= 5
    for i, file in enumerate(files):
        resumed = run(tmp_path / f"resumed{i}", str(file), seed=100 + i)
        assert _diff_keys(resumed, full) == [], file.name


def _flat(state: dict[int, dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {f"{pid}.{k}": v for pid, st in state.items() for k, v in st.items() if isinstance(v, torch.Tensor)}
