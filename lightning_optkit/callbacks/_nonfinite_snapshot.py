"""NonFiniteGuard's memory: in-memory snapshots of model and optimizer state, and the module-buffer guard.

* A **snapshot** (``policy="rollback"`` or ``snapshot_every_n_steps``) holds a copy of every tensor
  of the module's ``state_dict`` and of each optimizer's state, on the device. It is allocated once
  and refreshed in place (one ``_foreach_copy_``) while the layout stays the same.
* The **buffer guard** holds the module buffers as they were before the current optimizer step's
  forward passes, so a skipped step can put BatchNorm statistics (any buffer) back.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from .._internal.optimizers import optimizer_params, unwrap_optimizer

__all__ = ["BufferGuard", "restore_snapshot", "size_text", "take_snapshot"]

_OWNER = "NonFiniteGuard"
_MAX_BUFFER_BYTES = 256 * 2**20


def take_snapshot(trainer: Any, snap: dict[str, Any] | None, previous_bytes: int, device: Any
                  ) -> tuple[dict[str, Any], int]:
    """Copy the model's tensors and the optimizers' state into ``snap`` (allocated anew if the layout changed).

    Returns the snapshot and its size in bytes; a rank-zero message reports the size when it changes.
    """
    module = trainer.lightning_module
    model = {k: v for k, v in module.state_dict(keep_vars=True).items() if isinstance(v, Tensor)}
    opt_states: list[dict[int, dict[str, Any]]] = []
    for opt in trainer.optimizers:
        torch_opt = unwrap_optimizer(opt)
        opt_states.append({id(p): dict(s) for p, s in torch_opt.state.items()})
    layout = [{k: {n: type(v) for n, v in s.items()} for k, s in o.items()} for o in opt_states]
    if snap is None or snap["model"].keys() != model.keys() or layout != snap["layout"]:
        snap = {
            "model": {k: v.detach().clone() for k, v in model.items()},
            "opt": [{k: {n: (v.detach().clone() if isinstance(v, Tensor) else v) for n, v in s.items()}
                     for k, s in o.items()} for o in opt_states],
            "layout": layout,
        }
        nbytes = sum(t.numel() * t.element_size() for t in _snapshot_tensors(snap))
        if nbytes != previous_bytes:
            rank_zero_info(f"{_OWNER}: the in-memory snapshot of the model and optimizer state takes "
                           f"{size_text(nbytes)} on {device}")
        return snap, nbytes
    src = [v.detach() for v in model.values()]
    dst = list(snap["model"].values())
    for o_src, o_dst in zip(opt_states, snap["opt"]):
        for k, s in o_src.items():
            for n, v in s.items():
                if isinstance(v, Tensor):
                    src.append(v.detach())
                    dst.append(o_dst[k][n])
                else:
                    o_dst[k][n] = v
    torch._foreach_copy_(dst, src)
    return snap, previous_bytes


def restore_snapshot(trainer: Any, snap: dict[str, Any]) -> None:
    """Copy ``snap`` back into the module and the optimizers (state created after it is dropped)."""
    module = trainer.lightning_module
    live = {k: v for k, v in module.state_dict(keep_vars=True).items() if isinstance(v, Tensor)}
    dst, src = [], []
    for k, v in snap["model"].items():
        if k in live:
            dst.append(live[k].detach())
            src.append(v)
    for opt, saved in zip(trainer.optimizers, snap["opt"]):
        torch_opt = unwrap_optimizer(opt)
        by_id = {id(p): p for p in optimizer_params(torch_opt)}
        for p in list(torch_opt.state.keys()):
            if id(p) not in saved:
                del torch_opt.state[p]  # state created after the snapshot
        for pid, s in saved.items():
            p = by_id.get(pid)
            if p is None:
                continue
            state = torch_opt.state[p]
            for n, v in s.items():
                if isinstance(v, Tensor) and isinstance(state.get(n), Tensor) and state[n].shape == v.shape:
                    dst.append(state[n].detach())
                    src.append(v)
                else:
                    state[n] = v.clone() if isinstance(v, Tensor) else v
    with torch.no_grad():
        torch._foreach_copy_(dst, src)


def size_text(nbytes: int) -> str:
    """A byte count for people.

    Example:
        >>> size_text(512), size_text(3 * 2**20)
        ('512 B', '3.0 MiB')
    """
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def _snapshot_tensors(snap: dict[str, Any]) -> list[Tensor]:
    out = list(snap["model"].values())
    for o in snap["opt"]:
        for s in o.values():
            out.extend(v for v in s.values() if isinstance(v, Tensor))
    return out


class BufferGuard:
    """The module buffers (BatchNorm running statistics, ``num_batches_tracked``, any registered buffer)
    as they were before the forward passes of the current optimizer step, to put back if it is skipped.

    One flat copy per dtype and device, preallocated: saving is one ``_foreach_copy_`` per step; a
    restore that must not read the flag (fused optimizers, AMP) is a ``torch.where`` on the device.
    Buffers larger than 256 MiB in all are not guarded (a rank-zero message says so).

    Example:
        >>> net = torch.nn.BatchNorm1d(3)
        >>> guard = BufferGuard(net)
        >>> guard.save()
        >>> _ = net(torch.randn(4, 3))
        >>> guard.restore()
        >>> int(net.num_batches_tracked)
        0
    """

    def __init__(self, module: torch.nn.Module) -> None:
        buffers = [b for b in module.buffers() if isinstance(b, Tensor) and b.numel() > 0]
        nbytes = sum(b.numel() * b.element_size() for b in buffers)
        if nbytes > _MAX_BUFFER_BYTES:
            rank_zero_info(f"{_OWNER}: the module buffers take {size_text(nbytes)}; a skipped step does not "
                           "restore them")
            buffers = []
        groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for b in buffers:
            if b.is_contiguous():
                groups.setdefault((b.dtype, b.device), []).append(b)
        self.other = [b for b in buffers if not b.is_contiguous()]  # no flat view: one copy each
        self.other_saved = [torch.empty_like(b) for b in self.other]
        self.groups = [(bufs, torch.empty(sum(b.numel() for b in bufs), dtype=key[0], device=key[1]))
                       for key, bufs in groups.items()]
        # views made once: the buffers are updated in place, so their flat views stay valid
        self.flat_live = [[b.view(-1) for b in bufs] for bufs, _flat in self.groups]
        self.saved_views = [[v.view_as(b) for v, b in zip(torch.split(flat, [b.numel() for b in bufs]), bufs)]
                            for bufs, flat in self.groups]
        self.sizes = [[b.numel() for b in bufs] for bufs, _flat in self.groups]
        self.saved = False

    def save(self) -> None:
        """Copy the buffers aside, once per optimizer step (before its first micro-batch)."""
        if self.saved:
            return
        with torch.no_grad():
            for (bufs, _flat), saved in zip(self.groups, self.saved_views):
                torch._foreach_copy_(saved, bufs)
            if self.other:
                torch._foreach_copy_(self.other_saved, self.other)
        self.saved = True

    def stepped(self) -> None:
        """The optimizer step is over: the next batch starts a new one."""
        self.saved = False

    def restore(self) -> None:
        """Put the saved buffers back."""
        if not self.saved:
            return
        with torch.no_grad():
            for (bufs, _flat), saved in zip(self.groups, self.saved_views):
                torch._foreach_copy_(bufs, saved)
            if self.other:
                torch._foreach_copy_(self.other, self.other_saved)

    def restore_where(self, bad: Tensor) -> None:
        """Restore where ``bad`` (a device flag) is set, without reading it on the host."""
        if not self.saved:
            return
        with torch.no_grad():
            for (_bufs, flat), flat_live, sizes in zip(self.groups, self.flat_live, self.sizes):
                live = torch.cat(flat_live)
                torch.where(bad.to(flat.device), flat, live, out=live)
                torch._foreach_copy_(flat_live, list(torch.split(live, sizes)))
            for b, saved in zip(self.other, self.other_saved):
                b.copy_(torch.where(bad.to(b.device), saved, b))
