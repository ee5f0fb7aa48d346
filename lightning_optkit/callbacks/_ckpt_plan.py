"""Checkpoint's top-k planning: which file a save event writes and which it removes, as pure functions.

Rank 0 plans each save event and broadcasts the plan, so every rank keeps the same bookkeeping.
The functions here take the current top-k (file name -> score) and the new candidate and return
the new top-k; they touch no Trainer and no file.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from ..config import did_you_mean
from ._ckpt_args import EXT, PLACEHOLDER

__all__ = ["best_of", "format_name", "missing_monitor", "plan_top_k", "ranking_score"]


def format_name(template: str, epoch: int, step: int, metrics: dict[str, Any]) -> tuple[str, list[str]]:
    """The file name of a save from the ``filename`` template, and the placeholders no metric filled ("na").

    A ``/`` in a value (a metric name such as ``val/acc`` is only in the braces) becomes ``_``.

    Example:
        >>> format_name("{epoch}-{val/acc:.2f}-{loss}", 3, 120, {"val/acc": 0.875})
        ('3-0.88-na.ckpt', ['loss'])
    """
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name, spec = m.group(1), (m.group(2) or "")[1:]
        if name == "epoch":
            value: Any = epoch
        elif name == "step":
            value = step
        elif name in metrics:
            value = float(torch.as_tensor(metrics[name]).float().mean())
        else:
            missing.append(name)
            return "na"
        return format(value, spec).replace("/", "_").replace("\\", "_")

    return PLACEHOLDER.sub(sub, template) + EXT, missing


def missing_monitor(monitor: str | None, value: float | None, trigger: str, metrics: dict[str, Any]
                    ) -> list[Any] | None:
    """The arguments of the ``ConfigError`` to raise when ``monitor`` was not logged (on every rank), else None.

    Only validation and epoch saves need the metric, and only once something has been logged.
    """
    if monitor is None or value is not None or trigger not in ("validation", "epoch") or not metrics:
        return None
    avail = sorted(metrics)
    where = "on every rank " if monitor in metrics else ""
    return ["Checkpoint.monitor", monitor, f"a metric the module logs {where}at this point; available: "
            f"{', '.join(avail)}", did_you_mean(monitor, avail),
            f"call self.log({monitor!r}, ...) in validation_step, or fix the name"]


def ranking_score(monitor: str | None, value: float | None, step: int, *, higher_better: bool) -> float | None:
    """The score a save ranks by: the step without a monitor (newest wins), a NaN metric as the worst.

    Example:
        >>> ranking_score(None, None, 40, higher_better=True), ranking_score("loss", float("nan"), 40, higher_better=False)
        (40.0, inf)
    """
    if monitor is None:
        return float(step)  # without a metric, keep the newest
    if value is not None and math.isnan(value):
        return -math.inf if higher_better else math.inf
    return value


def plan_top_k(best_k: dict[str, float], name: str, score: float, *, save_top_k: int, higher_better: bool
               ) -> tuple[str | None, list[str], dict[str, float]]:
    """Whether ``name`` joins the top-k: the file to write (or None), the files to remove, the new top-k.

    A name already in the top-k is ranked anew with its new score; when it does not make it, it
    keeps its place and old score (its file is not rewritten).

    Example:
        >>> plan_top_k({"a": 0.5, "b": 0.3}, "c", 0.4, save_top_k=2, higher_better=False)
        ('c', ['a'], {'b': 0.3, 'c': 0.4})
        >>> plan_top_k({"a": 0.5, "b": 0.3}, "c", 0.9, save_top_k=2, higher_better=False)
        (None, [], {'a': 0.5, 'b': 0.3})
    """
    new = dict(best_k)
    new.pop(name, None)
    file: str | None = None
    remove: list[str] = []
    if save_top_k == -1 or len(new) < save_top_k:
        file = name
    else:
        worst = (min if higher_better else max)(new, key=new.__getitem__)
        if (score > new[worst]) if higher_better else (score < new[worst]):
            file = name
            remove.append(worst)
            del new[worst]
    if file is not None:
        new[file] = score
    elif name in best_k:
        new[name] = best_k[name]
    return file, remove, new


def best_of(best_k: dict[str, float], *, higher_better: bool) -> str | None:
    """The best file name of the top-k, or None when it is empty.

    Example:
        >>> best_of({"a": 0.5, "b": 0.3}, higher_better=False), best_of({}, higher_better=True)
        ('b', None)
    """
    if not best_k:
        return None
    return (max if higher_better else min)(best_k, key=best_k.__getitem__)
