"""Label issues: confident learning by hand, the confident-wrong rule, CSV, cross-fitting and the in-run finder."""

from __future__ import annotations

import csv
import os

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import ConfigError
from lightning_optkit._internal.rng import collect_rng_state as rng_states
from lightning_optkit.diagnostics import LabelIssueFinder, find_label_issues, label_issues_from_probs
from lightning_optkit.diagnostics._cross_fit import stratified_folds
from lightning_optkit.diagnostics._label_issues import confident_joint

# 3 classes, 4 samples each; sample 2 (labelled 0) looks like class 1, sample 9 (labelled 2) like class 0.
PROBS = np.array([
    [0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.1, 0.85, 0.05], [0.6, 0.3, 0.1],
    [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3], [0.05, 0.9, 0.05],
    [0.1, 0.1, 0.8], [0.75, 0.05, 0.2], [0.1, 0.2, 0.7], [0.2, 0.1, 0.7],
])
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])


def test_confident_joint_and_calibration_by_hand():
    joint, t = confident_joint(PROBS, LABELS, calibrate=False)
    # t_0 = mean(.8, .7, .1, .6) = .55; t_1 = mean(.8, .7, .6, .9) = .75; t_2 = mean(.8, .2, .7, .7) = .6
    assert t.tolist() == pytest.approx([0.55, 0.75, 0.6])
    # label 0: rows 0,1,3 pass t_0 -> C[0,0] = 3; row 2 passes t_1 -> C[0,1] = 1
    # label 1: row 4 (.8 >= .75) and row 7 -> C[1,1] = 2; rows 5 and 6 reach no threshold
    # label 2: rows 8, 10, 11 -> C[2,2] = 3; row 9 (.75 >= .55) -> C[2,0] = 1
    assert joint.tolist() == [[3, 1, 0], [0, 2, 0], [1, 0, 3]]
    calibrated, _ = confident_joint(PROBS, LABELS)
    assert np.allclose(calibrated, [[3, 1, 0], [0, 4, 0], [1, 0, 3]])  # row 1 rescaled 2 -> 4
    assert calibrated.sum() == len(LABELS)


def test_prune_by_noise_rate_flags_the_largest_margins():
    issues = label_issues_from_probs(PROBS, LABELS)
    assert sorted(issues.indices.tolist()) == [2, 9]
    assert issues.indices.tolist() == [2, 9]  # self-confidence 0.1 before 0.2
    assert issues.predicted_label.tolist() == [1, 0] and issues.given_label.tolist() == [0, 2]
    assert issues.self_confidence.tolist() == pytest.approx([0.1, 0.2])
    assert issues.info["estimated_noise_rate"] == pytest.approx(2 / 12)


def test_a_sample_the_model_agrees_with_is_never_flagged():
    probs = np.array([
        [0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.5, 0.45, 0.05], [0.6, 0.2, 0.2],  # t_0 = 0.7
        [0.3, 0.4, 0.3], [0.3, 0.45, 0.25], [0.33, 0.35, 0.32],                  # t_1 = 0.4
        [0.1, 0.1, 0.8], [0.05, 0.15, 0.8], [0.1, 0.2, 0.7],
    ])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    issues = label_issues_from_probs(probs, labels)
    # sample 2 reaches only t_1, so the joint counts it in C[0, 1] (4/3 after calibration, 1 to prune),
    # and it has the largest margin p_1 - p_0 of class 0; but its argmax is its label 0: not flagged
    assert issues.info["calibrated_joint"][0][1] == pytest.approx(4 / 3)
    assert len(issues) == 0


def test_confident_wrong_rule_and_margin_ranking():
    wrong = label_issues_from_probs(PROBS, LABELS, method="confident_wrong", threshold=0.7)
    assert wrong.indices.tolist() == [2, 9]
    assert label_issues_from_probs(PROBS, LABELS, method="confident_wrong", threshold=0.8).indices.tolist() == [2]
    margin = label_issues_from_probs(PROBS, LABELS, rank_by="normalized_margin")
    # row 2: (0.1 - 0.85 + 1) / 2 = 0.125; row 9: (0.2 - 0.75 + 1) / 2 = 0.225
    assert margin.score.tolist() == pytest.approx([0.125, 0.225])


def test_to_csv_is_atomic_and_complete(tmp_path):
    path = tmp_path / "sub" / "issues.csv"
    label_issues_from_probs(PROBS, LABELS).to_csv(path)
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert [int(r["index"]) for r in rows] == [2, 9] and rows[0]["predicted_label"] == "1"
    assert set(rows[0]) == {"rank", "index", "given_label", "predicted_label", "self_confidence", "score"}
    assert os.listdir(path.parent) == ["issues.csv"]  # no temporary file left


def test_bad_inputs_name_the_argument():
    with pytest.raises(ConfigError, match=r"method.*Did you mean 'confident_learning'"):
        label_issues_from_probs(PROBS, LABELS, method="confident_lerning")
    with pytest.raises(ConfigError, match=r"probs.*softmax"):
        label_issues_from_probs(PROBS * 2, LABELS)
    with pytest.raises(ConfigError, match=r"labels"):
        label_issues_from_probs(PROBS, LABELS + 1)
    with pytest.raises(ConfigError, match=r"threshold"):
        label_issues_from_probs(PROBS, LABELS, method="confident_wrong", threshold=1.5)


def test_stratified_folds_are_balanced_and_seeded():
    labels = np.repeat([0, 1, 2], [10, 7, 5])
    folds = stratified_folds(labels, 3, seed=4)
    assert np.array_equal(folds, stratified_folds(labels, 3, seed=4))
    assert np.bincount(folds).max() - np.bincount(folds).min() <= 1
    for cls in range(3):
        counts = np.bincount(folds[labels == cls], minlength=3)
        assert counts.max() - counts.min() <= 1


def _blobs(n_per: int = 40, noise_idx: tuple[int, ...] = (3, 50, 88, 101)) -> tuple[torch.Tensor, torch.Tensor, list]:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    y = torch.arange(3).repeat_interleave(n_per)
    x = centers[y] + 0.8 * torch.randn(len(y), 2, generator=g)
    noisy = y.clone()
    for i in noise_idx:
        noisy[i] = (y[i] + 1) % 3
    return x, noisy, list(noise_idx)


class Blob(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        logits = self(batch[0])
        return {"loss": nn.functional.cross_entropy(logits, batch[1]), "logits": logits}

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.Adam(self.parameters(), lr=0.05)


def test_find_label_issues_cross_fits_with_real_trainers():
    x, noisy, flipped = _blobs()
    before = rng_states()
    issues = find_label_issues(Blob, (x, noisy), folds=4, batch_size=32, trainer_kwargs={"max_epochs": 8})
    after = rng_states()
    assert torch.equal(before["torch"], after["torch"]) and before["python"] == after["python"]  # RNGs untouched
    assert sorted(issues.indices.tolist()) == flipped
    assert issues.probs is not None and issues.probs.shape == (120, 3)
    assert len(issues.info["fold_seconds"]) == 4 and issues.info["seconds"] > 0
    again = find_label_issues(Blob, TensorDataset(x, noisy), folds=4, batch_size=32, trainer_kwargs={"max_epochs": 8})
    assert np.allclose(again.probs, issues.probs)  # same seed, same folds, same models


def test_find_label_issues_rejects_bad_arguments():
    x, noisy, _ = _blobs()
    with pytest.raises(ConfigError, match=r"find_label_issues.folds"):
        find_label_issues(Blob, (x, noisy), folds=1)
    with pytest.raises(ConfigError, match=r"find_label_issues.data"):
        find_label_issues(Blob, (x, noisy[:10]))
    with pytest.raises(ConfigError, match=r"find_label_issues.build"):
        find_label_issues(lambda: nn.Linear(2, 3), (x, noisy), folds=2, trainer_kwargs={"max_epochs": 1})


def _finder_run(finder: LabelIssueFinder, module: L.LightningModule, epochs: int = 6) -> tuple[list, list]:
    x, y, _ = _blobs(noise_idx=())
    xv, noisy_v, flipped = _blobs(n_per=20, noise_idx=(1, 22, 45, 58))
    xv = xv + 0.1  # a different sample of the same blobs
    train = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(LabelIssueFinder.indexed(TensorDataset(xv, noisy_v)), batch_size=16)
    torch.manual_seed(0)
    L.Trainer(max_epochs=epochs, callbacks=[finder], logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module, train, val)
    return flipped, finder.issues().indices.tolist()


class IndexedBlob(Blob):
    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y, _ = batch
        logits = self(x)
        return {"loss": nn.functional.cross_entropy(logits, y), "logits": logits}


def test_label_issue_finder_flags_the_flipped_validation_samples(tmp_path):
    finder = LabelIssueFinder(threshold=0.9, min_epochs=3, start_epoch=1, csv_path=tmp_path / "val_issues.csv")
    flipped, found = _finder_run(finder, IndexedBlob())
    assert sorted(found) == flipped
    assert finder.epochs_seen == 5  # epochs 1..5; the sanity check and epoch 0 do not count
    issues = finder.issues()
    assert all(t >= 3 for t in issues.info["times_wrong"])
    rows = list(csv.DictReader((tmp_path / "val_issues.csv").read_text().splitlines()))
    assert [int(r["index"]) for r in rows] == issues.indices.tolist()
    other = LabelIssueFinder(threshold=0.9, min_epochs=3)
    other.load_state_dict(finder.state_dict())
    assert other.issues().indices.tolist() == issues.indices.tolist()


class TwoLoaderBlob(IndexedBlob):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):  # type: ignore[no-untyped-def]
        return IndexedBlob.validation_step(self, batch, batch_idx)


def test_label_issue_finder_keeps_loaders_apart_and_counts_repeats_once(tmp_path):
    """Two validation loaders (indices both from 0) and a loader that repeats samples, as
    DistributedSampler's padding does: records per (loader, index), each sample once per epoch."""
    x, y, _ = _blobs(noise_idx=())
    train = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    xv, noisy_v, flipped = _blobs(n_per=20, noise_idx=(1, 22, 45, 58))
    xw, noisy_w, flipped_w = _blobs(n_per=20, noise_idx=(5, 30))
    repeats = list(range(60)) + [0, 1, 22]  # padding-like repeats of samples 0, 1 and 22
    val0 = DataLoader(LabelIssueFinder.indexed(TensorDataset(xv + 0.1, noisy_v)), batch_size=16, sampler=repeats)
    val1 = DataLoader(LabelIssueFinder.indexed(TensorDataset(xw - 0.1, noisy_w)), batch_size=16)
    finder = LabelIssueFinder(threshold=0.9, min_epochs=3, start_epoch=1, csv_path=tmp_path / "val_issues.csv")
    torch.manual_seed(0)
    L.Trainer(max_epochs=4, callbacks=[finder], logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(TwoLoaderBlob(), train, [val0, val1])
    assert finder.epochs_seen == 3 and finder.dataloaders == [0, 1]
    assert sorted(finder.issues(0).indices.tolist()) == flipped
    assert sorted(finder.issues(1).indices.tolist()) == flipped_w
    assert all(rec[0] == 3 for rec in finder._records.values())  # seen once per epoch, repeats included
    assert all(t <= 3 for dl in (0, 1) for t in finder.issues(dl).info["times_wrong"])
    rows = list(csv.DictReader((tmp_path / "val_issues_dl1.csv").read_text().splitlines()))
    assert sorted(int(r["index"]) for r in rows) == flipped_w
    other = LabelIssueFinder(threshold=0.9, min_epochs=3)
    other.load_state_dict(finder.state_dict())
    assert other.issues(1).indices.tolist() == finder.issues(1).indices.tolist()


def test_label_issue_finder_says_what_the_module_must_return():
    class NoLogits(IndexedBlob):
        def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

    with pytest.raises(ConfigError, match=r"'logits'"):
        _finder_run(LabelIssueFinder(), NoLogits(), epochs=1)
    with pytest.raises(ConfigError, match=r"min_epochs"):
        LabelIssueFinder(min_epochs=0)


def test_image_grid_png_and_tensorboard(tmp_path):
    from sklearn.datasets import load_digits
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    x, y = load_digits(return_X_y=True)
    probs = np.full((len(y), 10), 0.01)
    probs[np.arange(len(y)), y] = 0.91
    noisy = y.copy()
    noisy[[5, 17, 40]] = (y[[5, 17, 40]] + 3) % 10
    issues = label_issues_from_probs(probs, noisy)
    assert sorted(issues.indices.tolist()) == [5, 17, 40]
    fig = issues.plot_images(torch.tensor(x), tmp_path / "grid.png", cols=2)
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG" and len(fig.axes) == 3
    assert fig.axes[0].get_title().endswith(f"{noisy[issues.indices[0]]} -> {y[issues.indices[0]]}")
    writer = SummaryWriter(str(tmp_path / "tb"))
    issues.to_tensorboard(TensorDataset(torch.tensor(x), torch.tensor(noisy)), writer, tag="suspects", step=2)
    writer.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert acc.Tags()["images"] == ["suspects"] and acc.Images("suspects")[0].step == 2
    with pytest.raises(ConfigError, match="image_shape"):
        issues.plot_images(torch.zeros(len(y), 7))
