"""Snapshot and exact restore of everything a range test touches.

A range test trains the real model with the real optimizer at absurd learning rates, so it must
leave no trace. :class:`TrainingSnapshot` records, before the test, and puts back, after it (also
when it raised):

* every parameter and buffer of the module, bitwise, into the *same* tensor objects (optimizers,
  DDP buckets and EMA callbacks hold references to them), plus ``.grad``, ``requires_grad`` and the
  train/eval flag of every submodule, and the state of ``torchmetrics`` metrics;
* every optimizer's per-parameter state and param-group settings (same tensor objects where the
  shapes still match), the scheduler states, and the AMP grad scaler;
* the random number generators: ``random``, ``numpy``, torch CPU and every initialized CUDA device,
  and the ``torch.Generator`` of every training DataLoader and sampler (iterating a loader advances
  its generator).

Tensors are copied in memory by default (``where="memory"``). ``where="disk"`` writes them to one
temporary file in the given folder instead (for models whose copy does not fit in memory); the file
is removed after the restore, whatever happened.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._internal.rng import collect_rng_state, loader_generators, restore_rng_state

__all__ = ["TrainingSnapshot", "collect_rng_state", "loader_generators", "restore_rng_state"]

_METRIC_ATTRS = ("_update_count", "_computed", "_forward_cache", "_is_synced", "_cache", "_should_unsync")
_MISSING = object()


class _TensorStore:
    """Copies of tensors, in memory or in one temporary file written at :meth:`seal`."""

    def __init__(self, where: str, directory: str | os.PathLike | None) -> None:
        self.where = where
        self.directory = Path(directory) if directory is not None else None
        self._tensors: dict[str, torch.Tensor] = {}
        self._devices: dict[str, torch.device] = {}
        self.path: Path | None = None

    def put(self, key: str, tensor: torch.Tensor) -> None:
        t = tensor.detach()
        self._devices[key] = t.device
        # memory: a clone on the same device; disk: a reference, serialized (copied) by seal()
        self._tensors[key] = t.clone() if self.where == "memory" else t

    def seal(self) -> None:
        if self.where != "disk":
            return
        directory = self.directory if self.directory is not None else Path(tempfile.gettempdir())
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".optkit-lr-finder-", suffix=".pt", dir=directory)
        self.path = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save({k: t.cpu() for k, t in self._tensors.items()}, fh)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            self.discard()
            raise
        self._tensors = {}

    def load(self) -> dict[str, torch.Tensor]:
        if self.where != "disk":
            return self._tensors
        assert self.path is not None
        with self.path.open("rb") as fh:
            data = torch.load(fh, map_location="cpu", weights_only=True)
        return {k: v.to(self._devices[k]) for k, v in data.items()}

    def discard(self) -> None:
        self._tensors = {}
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.path = None


@dataclass(frozen=True)
class _Ref:
    """A tensor kept in the store under ``key`` (distinguishes it from plain values such as tuples)."""

    key: str


@dataclass
class _SlotRecord:
    """A parameter or buffer slot of one submodule: the object that sat there and its flags."""

    module: nn.Module
    name: str
    kind: str  # "_parameters" or "_buffers"
    obj: torch.Tensor
    requires_grad: bool = False
    had_grad: bool = False


@dataclass
class TrainingSnapshot:
    """What a range test may change, recorded by :meth:`take` and put back by :meth:`restore`.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        >>> before = net.weight.clone()
        >>> snap = TrainingSnapshot.take(net, [opt])
        >>> net(torch.ones(1, 2)).sum().backward(); opt.step()
        >>> snap.restore()
        >>> torch.equal(net.weight, before), len(opt.state), net.weight.grad is None
        (True, 0, True)
    """

    store: _TensorStore
    slots: list[_SlotRecord] = field(default_factory=list)
    modes: list[tuple[nn.Module, bool]] = field(default_factory=list)
    metrics: list[tuple[nn.Module, dict[str, Any]]] = field(default_factory=list)
    optimizers: list[tuple[torch.optim.Optimizer, dict[str, Any]]] = field(default_factory=list)
    schedulers: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)
    scaler: tuple[Any, dict[str, Any]] | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    generators: list[tuple[torch.Generator, torch.Tensor]] = field(default_factory=list)

    @classmethod
    def take(
        cls,
        module: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        schedulers: Sequence[Any] = (),
        *,
        scaler: Any = None,
        loaders: Iterable[Any] = (),
        where: str = "memory",
        directory: str | os.PathLike | None = None,
    ) -> TrainingSnapshot:
        """Record the state of ``module``, ``optimizers``, ``schedulers``, ``scaler``, RNGs and loader generators."""
        snap = cls(_TensorStore(where, directory))
        try:
            snap._take_module(module)
            for i, opt in enumerate(optimizers):
                snap.optimizers.append((opt, snap._take_optimizer(opt, f"opt{i}")))
            for sched in schedulers:
                snap.schedulers.append((sched, copy.deepcopy(sched.state_dict())))
            if scaler is not None and hasattr(scaler, "state_dict"):
                snap.scaler = (scaler, copy.deepcopy(scaler.state_dict()))
            snap.rng = collect_rng_state()
            snap.generators = [(g, g.get_state()) for g in loader_generators(loaders)]
            snap.store.seal()
        except BaseException:
            snap.store.discard()
            raise
        return snap

    # -- module ------------------------------------------------------------------------------------
    def _take_module(self, module: nn.Module) -> None:
        seen: set[int] = set()
        for mod_name, mod in module.named_modules(remove_duplicate=False):
            self.modes.append((mod, mod.training))
            for kind in ("_parameters", "_buffers"):
                for name, tensor in getattr(mod, kind).items():
                    if tensor is None:
                        continue
                    rec = _SlotRecord(mod, name, kind, tensor)
                    key = f"m{id(tensor)}"
                    if isinstance(tensor, nn.Parameter):
                        rec.requires_grad = tensor.requires_grad
                        rec.had_grad = tensor.grad is not None
                    self.slots.append(rec)
                    if id(tensor) in seen:
                        continue
                    seen.add(id(tensor))
                    self.store.put(key, tensor)
                    if isinstance(tensor, nn.Parameter) and tensor.grad is not None:
                        self.store.put(f"g{id(tensor)}", tensor.grad)
            if _is_metric(mod):
                state = {a: copy.deepcopy(getattr(mod, a)) for a in (*mod._defaults, *_METRIC_ATTRS) if hasattr(mod, a)}
                self.metrics.append((mod, state))
            del mod_name

    def _restore_module(self, saved: dict[str, torch.Tensor]) -> None:
        done: set[int] = set()
        with torch.no_grad():
            for rec in self.slots:
                slots = getattr(rec.module, rec.kind)
                if slots.get(rec.name) is not rec.obj:  # the test replaced the tensor: put the original back
                    slots[rec.name] = rec.obj
                if id(rec.obj) in done:
                    continue
                done.add(id(rec.obj))
                value = saved[f"m{id(rec.obj)}"]
                if rec.obj.shape != value.shape or rec.obj.dtype != value.dtype:
                    rec.obj.data = value.clone()
                else:
                    rec.obj.copy_(value)
                if isinstance(rec.obj, nn.Parameter):
                    rec.obj.requires_grad_(rec.requires_grad)
                    if rec.had_grad:
                        grad = saved[f"g{id(rec.obj)}"]
                        if rec.obj.grad is not None and rec.obj.grad.shape == grad.shape:
                            rec.obj.grad.copy_(grad)
                        else:
                            rec.obj.grad = grad.clone()
                    else:
                        rec.obj.grad = None
        for mod, training in self.modes:
            mod.training = training
        for mod, state in self.metrics:
            for attr, value in state.items():
                object.__setattr__(mod, attr, copy.deepcopy(value))

    # -- optimizers --------------------------------------------------------------------------------
    def _take_optimizer(self, opt: torch.optim.Optimizer, prefix: str) -> dict[str, Any]:
        per_param: list[tuple[Any, dict[str, Any]]] = []
        for pi, (param, state) in enumerate(opt.state.items()):
            entry: dict[str, Any] = {}
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tkey = f"{prefix}.s{pi}.{key}"
                    self.store.put(tkey, value)
                    entry[key] = _Ref(tkey)
                else:
                    entry[key] = copy.deepcopy(value)
            per_param.append((param, entry))
        groups: list[dict[str, Any]] = []
        for gi, group in enumerate(opt.param_groups):
            saved_group: dict[str, Any] = {}
            for key, value in group.items():
                if key == "params":
                    continue
                if isinstance(value, torch.Tensor):
                    tkey = f"{prefix}.g{gi}.{key}"
                    self.store.put(tkey, value)
                    saved_group[key] = _Ref(tkey)
                else:
                    saved_group[key] = copy.deepcopy(value)
            groups.append(saved_group)
        called = getattr(opt, "_opt_called", _MISSING)
        return {"state": per_param, "groups": groups, "opt_called": called}

    def _restore_optimizer(self, opt: torch.optim.Optimizer, saved: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        keep = {id(p) for p, _e in saved["state"]}
        for param in [p for p in opt.state if id(p) not in keep]:
            del opt.state[param]
        for param, entry in saved["state"]:
            live = opt.state.get(param)
            restored: dict[str, Any] = {}
            for key, value in entry.items():
                if isinstance(value, _Ref):
                    src = tensors[value.key]
                    cur = live.get(key) if live is not None else None
                    if isinstance(cur, torch.Tensor) and cur.shape == src.shape and cur.dtype == src.dtype \
                            and cur.device == src.device:
                        with torch.no_grad():
                            cur.copy_(src)
                        restored[key] = cur
                    else:
                        restored[key] = src.clone()
                else:
                    restored[key] = copy.deepcopy(value)
            if live is None:
                opt.state[param] = restored
            else:
                live.clear()
                live.update(restored)
        for group, saved_group in zip(opt.param_groups, saved["groups"]):
            for key in [k for k in group if k != "params" and k not in saved_group]:
                del group[key]
            for key, value in saved_group.items():
                if isinstance(value, _Ref):
                    src = tensors[value.key]
                    cur = group.get(key)
                    if isinstance(cur, torch.Tensor) and cur.shape == src.shape and cur.dtype == src.dtype:
                        with torch.no_grad():
                            cur.copy_(src)
                    else:
                        group[key] = src.clone()
                else:
                    group[key] = copy.deepcopy(value)
        if saved["opt_called"] is _MISSING:
            if "_opt_called" in opt.__dict__:
                del opt.__dict__["_opt_called"]
        else:
            opt._opt_called = saved["opt_called"]  # type: ignore[attr-defined]

    # -- all -----------------------------------------------------------------------------------------
    def restore(self) -> None:
        """Put everything back, bitwise, and remove the on-disk copy (if any)."""
        try:
            tensors = self.store.load()
            self._restore_module(tensors)
            for opt, saved in self.optimizers:
                self._restore_optimizer(opt, saved, tensors)
            for sched, state in self.schedulers:
                sched.load_state_dict(copy.deepcopy(state))
            if self.scaler is not None:
                scaler, state = self.scaler
                scaler.load_state_dict(copy.deepcopy(state))
            restore_rng_state(self.rng)
            for gen, state in self.generators:
                gen.set_state(state)
        finally:
            self.store.discard()

    def discard(self) -> None:
        """Drop the copies without restoring (removes the on-disk copy)."""
        self.store.discard()


def _is_metric(mod: nn.Module) -> bool:
    cls_names = {c.__module__.split(".")[0] + "." + c.__name__ for c in type(mod).__mro__}
    return "torchmetrics.Metric" in cls_names and hasattr(mod, "_defaults")


@contextlib.contextmanager
def preserved(snapshot: TrainingSnapshot) -> Iterator[TrainingSnapshot]:
    """Restore ``snapshot`` when the block ends, normally or by an exception."""
    try:
        yield snapshot
    finally:
        snapshot.restore()
