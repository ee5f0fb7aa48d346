"""An image grid of suspect samples (given vs predicted label), as a PNG or into TensorBoard."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._internal.io import atomic_write_figure
from ..config import ConfigError

__all__ = ["issue_image_grid", "log_issue_images"]


def _image(sample: Any, image_shape: Sequence[int] | None) -> np.ndarray:
    """One sample as an (H, W) or (H, W, 3) array scaled to [0, 1]."""
    x = sample[0] if isinstance(sample, (tuple, list)) else sample
    arr = (x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64))
    if image_shape is not None:
        arr = arr.reshape(tuple(image_shape))
    elif arr.ndim == 1 and math.isqrt(arr.size) ** 2 == arr.size:
        side = math.isqrt(arr.size)
        arr = arr.reshape(side, side)
    if arr.ndim == 3 and arr.shape[0] in (1, 3):  # (C, H, W) -> (H, W, C)
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ConfigError("image_shape", image_shape, f"a shape that turns a sample of {arr.size} values into an image",
                          hint="pass image_shape=(H, W) or (C, H, W)")
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def issue_image_grid(issues: Any, images: Any, path: str | os.PathLike[str] | None = None, max_images: int = 32,
                     cols: int = 8, image_shape: Sequence[int] | None = None, class_names: Sequence[str] | None = None) -> Any:
    """A matplotlib Figure with the most suspect samples, titled ``given -> predicted``; PNG at ``path``.

    Args:
        issues: a :class:`LabelIssues`.
        images: anything indexable by the data index: a tensor or array of samples, or a Dataset
            whose items are ``(x, y, ...)``.
        max_images: how many of the top-ranked issues to show.
        image_shape: reshape each sample (flat 64 values -> ``(8, 8)``); square flat samples are
            reshaped automatically.
        class_names: names to print instead of class ids.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = min(len(issues), max_images)
    cols = max(1, min(cols, count or 1))
    rows = max(1, math.ceil(count / cols))
    fig = Figure(figsize=(1.4 * cols, 1.6 * rows), dpi=100)
    FigureCanvasAgg(fig)
    name = (lambda c: str(class_names[c])) if class_names is not None else str
    for k in range(count):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(_image(images[int(issues.indices[k])], image_shape), cmap="gray")
        ax.set_title(f"#{int(issues.indices[k])}\n{name(int(issues.given_label[k]))} -> "
                     f"{name(int(issues.predicted_label[k]))}", fontsize=7)
        ax.axis("off")
    if count == 0:
        fig.text(0.5, 0.5, "no suspect labels", ha="center")
    fig.suptitle("suspect labels: given -> predicted", fontsize=9)
    if path is not None:
        atomic_write_figure(path, fig)
    return fig


def log_issue_images(issues: Any, images: Any, logger: Any, tag: str = "label_issues", step: int = 0,
                     **grid_kwargs: Any) -> None:
    """Add the grid to TensorBoard: ``logger`` is a Lightning ``TensorBoardLogger`` or a ``SummaryWriter``."""
    writer = getattr(logger, "experiment", logger)
    if not hasattr(writer, "add_figure"):
        raise ConfigError("logger", type(logger).__name__, "a TensorBoardLogger or a torch SummaryWriter")
    writer.add_figure(tag, issue_image_grid(issues, images, **grid_kwargs), global_step=step)
    writer.flush()
