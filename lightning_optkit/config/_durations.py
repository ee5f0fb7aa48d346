"""Durations: how long a warm-up, a cycle or a decay lasts, in one place.

A duration is written as

* an ``int`` -- optimizer steps (``500``);
* ``"500 steps"`` / ``"2 epochs"`` -- explicit units (``step``/``steps``/``epoch``/``epochs``);
* ``"5%"`` -- a percentage of the whole training;
* a ``float`` in ``(0, 1)`` -- a fraction of the whole training (``0.05``).

Everything else is an error. Durations are parsed when the config is loaded (so a typo fails before
training) and resolved to a number of optimizer steps once, when the optimizers are built and the
trainer knows the length of training (:class:`TrainingLength`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from .._internal.errors import ConfigError

__all__ = ["Duration", "TrainingLength", "parse_duration"]

Unit = Literal["steps", "epochs", "fraction"]
_EXPECTED = (
    "an int number of optimizer steps, '<N> steps', '<N> epochs', '<P>%' or a float in (0, 1) "
    "(fraction of training)"
)
_UNIT_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(steps?|epochs?|%)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class TrainingLength:
    """What the trainer says about the length of training, in optimizer steps.

    ``steps_per_epoch`` lists the optimizer steps of each epoch in order (it can vary with a
    ``GradientAccumulationScheduler``); ``total_steps`` is the whole run (``max_steps`` included).

    Example:
        >>> TrainingLength(total_steps=100, steps_per_epoch=(10,) * 10).epochs_to_steps(2)
        20
    """

    total_steps: int
    steps_per_epoch: tuple[int, ...] = ()

    def epochs_to_steps(self, epochs: float) -> int:
        if not self.steps_per_epoch:
            raise ConfigError(
                "<duration>", f"{epochs} epochs", "a length in steps",
                hint="the number of steps per epoch is unknown here; give the duration in steps or as a %",
            )
        whole = int(math.floor(epochs))
        per = list(self.steps_per_epoch)
        if whole > len(per):
            per += [per[-1]] * (whole - len(per) + 1)
        steps = sum(per[:whole])
        frac = epochs - whole
        if frac:
            nxt = per[whole] if whole < len(per) else per[-1]
            steps += int(round(frac * nxt))
        return int(steps)


@dataclass(frozen=True)
class Duration:
    """A parsed duration; :meth:`steps` resolves it against a :class:`TrainingLength`.

    Example:
        >>> length = TrainingLength(total_steps=1000, steps_per_epoch=(100,) * 10)
        >>> [parse_duration(v).steps(length) for v in (50, "2 epochs", "5%", 0.1, "30 steps")]
        [50, 200, 50, 100, 30]
    """

    value: float
    unit: Unit

    def steps(self, length: TrainingLength, path: str = "<duration>") -> int:
        if self.unit == "steps":
            return int(self.value)
        if self.unit == "fraction":
            return int(round(self.value * length.total_steps))
        try:
            return length.epochs_to_steps(self.value)
        except ConfigError as err:
            raise ConfigError(path, f"{self.value:g} epochs", "a length in steps or %", hint=err.hint) from None

    def epochs(self, length: TrainingLength | None, total_epochs: int, path: str) -> int:
        """Resolve for an ``interval: epoch`` schedule (counts epochs, not steps)."""
        if self.value == 0:
            return 0
        if self.unit == "epochs":
            return int(round(self.value))
        if self.unit == "fraction":
            return int(round(self.value * total_epochs))
        raise ConfigError(
            path, int(self.value), "'<N> epochs' or a percentage when the schedule has interval: epoch",
            hint=f"write '{int(self.value)} epochs' or set scheduler.interval: step",
        )

    def __str__(self) -> str:
        if self.unit == "fraction":
            return f"{self.value * 100:g}%"
        return f"{self.value:g} {self.unit}"


def parse_duration(value: Any, path: str = "<duration>") -> Duration:
    """Parse a duration, raising :class:`ConfigError` (with ``path``) for anything else.

    Example:
        >>> parse_duration("5%")
        Duration(value=0.05, unit='fraction')
        >>> parse_duration("2 epochs")
        Duration(value=2.0, unit='epochs')
    """
    if isinstance(value, Duration):
        return value
    if isinstance(value, bool) or value is None:
        raise ConfigError(path, value, _EXPECTED)
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(path, value, "a non-negative number of steps")
        return Duration(float(value), "steps")
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and value >= 1:
            raise ConfigError(
                path, value, _EXPECTED, hint=f"write {int(value)} for steps or '{value:g} epochs' for epochs"
            )
        if value == 0.0:
            return Duration(0.0, "steps")
        if not (0.0 < value < 1.0):
            raise ConfigError(path, value, _EXPECTED)
        return Duration(value, "fraction")
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return Duration(float(int(text)), "steps")
        m = _UNIT_RE.match(text)
        if m:
            number, unit = float(m.group(1)), m.group(2).lower()
            if unit == "%":
                if not 0.0 <= number < 100.0:
                    raise ConfigError(path, value, "a percentage in [0%, 100%)")
                return Duration(number / 100.0, "fraction") if number else Duration(0.0, "steps")
            if unit.startswith("step"):
                if not number.is_integer():
                    raise ConfigError(path, value, "a whole number of steps")
                return Duration(number, "steps")
            return Duration(number, "epochs")
        raise ConfigError(path, value, _EXPECTED)
    raise ConfigError(path, value, _EXPECTED)
