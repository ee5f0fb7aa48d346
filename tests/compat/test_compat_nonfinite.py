"""BatchNorm and a NaN batch under every NonFiniteGuard policy: the skipped step leaves no trace in the buffers."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from compat_helpers import FAST, NaNBatch, PlainNet, PortedNet, assert_same_weights, loader
from lightning.pytorch.callbacks import Callback

from lightning_optkit.callbacks import NonFiniteGuard

NAN_AT = 9  # batch 3 of epoch 1 (6 batches per epoch)


class BufferProbe(Callback):
    """The module buffers before and after training batch ``at`` (counted over the run)."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.seen == self.at:
            self.before = {k: v.clone() for k, v in pl_module.named_buffers()}

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.seen == self.at:
            self.after = {k: v.clone() for k, v in pl_module.named_buffers()}
        self.seen += 1


class SkipsBatch(PlainNet):
    """Plain Lightning: ``training_step`` returns ``None`` for one batch, so that batch never ran."""

    def __init__(self, at: int, **adam: Any) -> None:
        super().__init__(**adam)
        self.at, self.seen = at, 0

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.seen += 1
        if self.seen - 1 == self.at:
            return None
        return super().training_step(batch, batch_idx)


def _fit(model: L.LightningModule, callbacks: list, tmp_path, epochs: int = 3) -> L.Trainer:
    torch.manual_seed(1)
    trainer = L.Trainer(max_epochs=epochs, callbacks=callbacks, default_root_dir=str(tmp_path), **FAST)
    trainer.fit(model, loader(), loader(seed=1))
    return trainer


@pytest.mark.parametrize("fused", [False, True], ids=["host-read", "found_inf"])
def test_skip_equals_a_run_that_never_saw_the_batch(tmp_path, fused: bool) -> None:
    """skip == plain Lightning where training_step returns None for that batch: weights and buffers, bit for bit."""
    torch.manual_seed(0)
    reference = SkipsBatch(NAN_AT, fused=fused)
    _fit(reference, [], tmp_path / "ref")
    torch.manual_seed(0)
    ported = PortedNet({"optimizer": {"name": "adam", "lr": 0.01, "fused": fused}, "no_weight_decay": "none"})
    probe = BufferProbe(NAN_AT)
    guard = NonFiniteGuard("skip", detect_spikes=False, event_log=None)
    _fit(ported, [NaNBatch(NAN_AT), probe, guard], tmp_path / "ported")
    assert guard._skip_mode == ("found_inf" if fused else "host")
    assert guard.skipped_steps == 1
    assert probe.before and probe.before.keys() == probe.after.keys()
    for k in probe.before:  # running_mean, running_var, num_batches_tracked: as before the NaN batch
        assert torch.equal(probe.before[k], probe.after[k]), k
    assert_same_weights(reference, ported)


@pytest.mark.parametrize("policy", ["skip", "reduce_lr", "rollback", "stop", "raise"])
def test_every_policy_leaves_finite_running_statistics(tmp_path, policy: str) -> None:
    torch.manual_seed(0)
    model = PortedNet({"optimizer": {"name": "adam", "lr": 0.01}, "no_weight_decay": "none"})
    probe = BufferProbe(NAN_AT)
    guard = NonFiniteGuard(policy, detect_spikes=False, event_log=None,
                           snapshot_every_n_steps=4 if policy == "rollback" else None)
    if policy == "raise":
        with pytest.raises(NonFiniteGuard.Error):
            _fit(model, [NaNBatch(NAN_AT), probe, guard], tmp_path)
    else:
        _fit(model, [NaNBatch(NAN_AT), probe, guard], tmp_path)
    assert guard.n_events == 1
    for k, v in model.named_buffers():
        assert torch.isfinite(v.float()).all(), (policy, k)
    if policy != "rollback":  # rollback puts back the snapshot of step 8 instead
        for k in probe.before:
            assert torch.equal(probe.before[k], probe.after[k]), (policy, k)
    if policy in ("skip", "reduce_lr", "rollback"):
        trainer = L.Trainer(**FAST)
        [out] = trainer.validate(model, loader(seed=1), verbose=False)
        assert torch.isfinite(torch.tensor(out["val/loss"]))
