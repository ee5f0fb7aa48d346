"""Small helpers shared by the training-health callbacks: argument checks, cadences, logging, files."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..config import ConfigError

__all__ = [
    "check_choice",
    "check_int",
    "check_number",
    "device_sum",
    "due",
    "log_metrics",
    "log_step",
    "resolve_log_dir",
    "world_size",
    "write_json_atomic",
]


def check_int(owner: str, name: str, value: Any, minimum: int = 1, allow_none: bool = False) -> int | None:
    """``value`` if it is an int >= ``minimum`` (or None when allowed), else a ConfigError naming it."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise ConfigError(f"{owner}.{name}", value, what)
    return int(value)


def check_number(
    owner: str, name: str, value: Any, lo: float | None = None, hi: float | None = None,
    lo_open: bool = True, hi_open: bool = False, allow_none: bool = False, hint: str = "",
) -> float | None:
    """``value`` as a float inside the interval, else a ConfigError that prints the interval."""
    if value is None and allow_none:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ConfigError(f"{owner}.{name}", value, f"a finite number in {left}{lo_s}, {hi_s}{right}"
                          + (" or None" if allow_none else ""), hint=hint)
    return float(value)


def check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` lower-cased if it is one of ``choices``, else a ConfigError with a did-you-mean."""
    from ..config import did_you_mean

    if isinstance(value, str) and value.lower() in choices:
        return value.lower()
    raise ConfigError(f"{owner}.{name}", value, "one of " + ", ".join(repr(c) for c in choices),
                      suggestions=did_you_mean(value, choices))


def log_step(trainer: Any) -> int:
    """The x-axis value Lightning's own ``self.log`` uses for this training step."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    value = getattr(loop, "_batches_that_stepped", None)
    return int(trainer.global_step if value is None else value)


def due(step: int, every: int | None) -> bool:
    """Whether the 0-based optimizer step ``step`` is on an ``every``-step cadence (the trainer's rule)."""
    return bool(every) and (step + 1) % int(every) == 0  # type: ignore[operator]


def log_metrics(trainer: Any, metrics: Mapping[str, float], step: int) -> None:
    """Send ``metrics`` to every logger of the trainer (loggers are rank-zero-only themselves)."""
    if not metrics:
        return
    for logger in getattr(trainer, "loggers", []):
        logger.log_metrics(dict(metrics), step=step)


def resolve_log_dir(trainer: Any) -> str:
    """The trainer's log directory; call it on every rank (it broadcasts)."""
    path = getattr(trainer, "log_dir", None) or getattr(trainer, "default_root_dir", None) or os.getcwd()
    return str(path)


def world_size(trainer: Any) -> int:
    return int(getattr(trainer, "world_size", 1) or 1)


def device_sum(trainer: Any, tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over the ranks, left on the device: an all-reduce and nothing else.

    ``trainer.strategy.reduce`` runs a ``barrier()`` before its all-reduce, which blocks the host until
    every rank arrives (with NCCL, a host-device sync): fine at a check step, not on every step. Where
    ``torch.distributed`` runs the job (DDP), this calls ``all_reduce`` directly, which only enqueues
    the collective; every rank calls it at the same point of every optimizer step, so it cannot hang.
    """
    if world_size(trainer) <= 1:
        return tensor
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out
    return trainer.strategy.reduce(tensor.clone(), reduce_op="sum")


def write_json_atomic(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON: temp file in the same folder, flush + fsync, ``os.replace``, fsync the folder."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(_strict(obj), fh, indent=2, default=_json_default, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _strict(value: Any) -> Any:
    """Non-finite floats as the strings "NaN", "Infinity", "-Infinity": the file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def fmt(value: float) -> str:
    """A short human form of a float for messages and tables."""
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:.3e}"
