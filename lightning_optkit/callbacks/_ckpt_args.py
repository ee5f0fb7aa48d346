"""Checkpoint's arguments: every check of ``Checkpoint(...)``, each raising a ``ConfigError`` that says what to pass."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any, NamedTuple

from ..config import ConfigError, did_you_mean

__all__ = ["EXT", "PLACEHOLDER", "Triggers", "check_arguments", "check_filename", "positive_or_none"]

PLACEHOLDER = re.compile(r"\{([^{}:]+)(:[^{}]*)?\}")
EXT = ".ckpt"
DEFAULT_FLAGS = {"save_last": True, "async_save": False, "fsync": True, "save_on_exception": True,
                 "restore_rng": True}


class Triggers(NamedTuple):
    """The checked file name template (without extension) and save triggers."""

    filename: str
    every_n_epochs: int | None
    every_n_train_steps: int | None
    train_time_interval: float | None


def check_arguments(*, filename: Any, monitor: Any, mode: Any, save_top_k: Any, every_n_epochs: Any,
                    every_n_train_steps: Any, train_time_interval: Any, save_on_train_epoch_end: Any,
                    flags: dict[str, Any], last_name: str) -> Triggers:
    """Check every argument of ``Checkpoint`` (in the order of its signature) and resolve the triggers.

    Without any trigger, saves happen every epoch.

    Example:
        >>> check_arguments(filename="{epoch}.ckpt", monitor=None, mode="min", save_top_k=1, every_n_epochs=None,
        ...                 every_n_train_steps=None, train_time_interval=None, save_on_train_epoch_end=None,
        ...                 flags={}, last_name="last")
        Triggers(filename='{epoch}', every_n_epochs=1, every_n_train_steps=None, train_time_interval=None)
    """
    if mode not in ("min", "max"):
        raise ConfigError("Checkpoint.mode", mode, "'min' or 'max'", suggestions=did_you_mean(mode, ["min", "max"]),
                          hint="mode='min' for a loss, mode='max' for an accuracy")
    if isinstance(save_top_k, bool) or not isinstance(save_top_k, int) or save_top_k < -1:
        raise ConfigError("Checkpoint.save_top_k", save_top_k, "an integer >= -1 (-1 keeps all, 0 keeps none)",
                          hint="save_top_k=3 keeps the three best by `monitor`")
    if monitor is not None and (not isinstance(monitor, str) or not monitor):
        raise ConfigError("Checkpoint.monitor", monitor, "None or the name of a logged metric",
                          hint="Checkpoint(monitor='val_loss') with self.log('val_loss', ...) in validation_step")
    filename = check_filename(filename, last_name)
    epochs = positive_or_none("every_n_epochs", every_n_epochs)
    steps = positive_or_none("every_n_train_steps", every_n_train_steps)
    interval = _time_interval(train_time_interval)
    if epochs is None and not steps and interval is None:
        epochs = 1
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"Checkpoint.{name}", value, "True or False",
                              hint=f"pass a bool, e.g. Checkpoint({name}={not DEFAULT_FLAGS[name]})")
    if save_on_train_epoch_end is not None and not isinstance(save_on_train_epoch_end, bool):
        raise ConfigError("Checkpoint.save_on_train_epoch_end", save_on_train_epoch_end, "None, True or False",
                          hint="leave it None to save after validation when validation runs, else at epoch end")
    return Triggers(filename, epochs, steps, interval)


def check_filename(filename: Any, last_name: str) -> str:
    """A file name template: ``/`` may appear in a metric name between braces, never outside them.

    Returns the template without a ``.ckpt`` extension; the reserved names are refused.

    Example:
        >>> check_filename("{epoch}-{val/acc:.3f}.ckpt", "last")
        '{epoch}-{val/acc:.3f}'
    """
    if not isinstance(filename, str) or not filename:
        raise ConfigError("Checkpoint.filename", filename, "a file name template without folders",
                          hint="put folders in dirpath; e.g. filename='{epoch}-{val_loss:.3f}'")
    outside = PLACEHOLDER.sub("", filename)
    if "/" in outside or "\\" in outside:
        fixed = PLACEHOLDER.sub(lambda m: m.group(0).replace("/", "\x00"), filename)
        fixed = fixed.replace("/", "_").replace("\\", "_").replace("\x00", "/")
        raise ConfigError("Checkpoint.filename", filename, "a file name template without folders (a '/' may "
                          "appear only inside a metric's braces, as in {val/acc})",
                          hint=f"put folders in dirpath; e.g. filename={fixed!r}")
    if filename.endswith(EXT):
        filename = filename[: -len(EXT)]
    if filename == last_name or filename.startswith("emergency-"):
        raise ConfigError("Checkpoint.filename", filename, "a template other than the reserved names "
                          "'last' and 'emergency-*'", hint="e.g. filename='epoch={epoch}-step={step}'")
    return filename


def positive_or_none(name: str, value: Any, *, allow_zero: bool = True) -> int | None:
    """``value`` if it is None or an integer >= 0 (>= 1 without ``allow_zero``), else a ``ConfigError``."""
    if value is None:
        return None
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"Checkpoint.{name}", value, f"None or an integer >= {low}",
                          hint=f"Checkpoint({name}=1) saves every {name.split('_')[-1].rstrip('s')}")
    return value


def _time_interval(value: Any) -> float | None:
    """Seconds from a ``timedelta`` or a positive number; None stays None."""
    if isinstance(value, timedelta):
        interval: float | None = value.total_seconds()
    elif value is None:
        interval = None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        interval = float(value)
    else:
        interval = -1.0
    if interval is not None and not (interval > 0 and math.isfinite(interval)):
        raise ConfigError("Checkpoint.train_time_interval", value,
                          "None, a positive number of seconds or a datetime.timedelta",
                          hint="train_time_interval=timedelta(minutes=30)")
    return interval
