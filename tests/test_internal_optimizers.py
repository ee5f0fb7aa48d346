"""LR scaling of the toolbox: a scheduler built on the optimizer a strategy later wrapped is still found
(the wrapper shares the groups), and a scheduler tied to no optimizer can be scaled on its own."""

from __future__ import annotations

import torch

from lightning_optkit._internal.optimizers import drives, scale_lrs, scale_scheduler_lrs


class _Wrapper:
    """What DeepSpeed's and other optimizer wrappers look like: another object over the same groups."""

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        self.inner = inner

    @property
    def param_groups(self) -> list:
        return self.inner.param_groups


def _setup():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def test_a_wrapped_optimizer_still_drives_its_scheduler():
    opt, sched = _setup()
    wrapped = _Wrapper(opt)
    assert drives(sched, opt) and drives(sched, wrapped)
    assert not drives(sched, _setup()[0])
    scale_lrs(wrapped, [sched], 0.5)
    assert opt.param_groups[0]["lr"] == 0.5 and sched.base_lrs == [0.5]
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.5  # the next step keeps the reduction


def test_a_scheduler_tied_to_no_optimizer_is_scaled_once():
    opt, sched = _setup()
    scale_scheduler_lrs([sched, sched], 0.1)
    assert sched.base_lrs == [0.1] and opt.param_groups[0]["lr"] == 1.0  # the groups are not touched
