"""AutoClip: gradient clipping whose threshold adapts to the run (percentile) or to the weights (AGC)."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from .._internal.checks import check_choice, check_int, check_number
from .._internal.optimizers import unwrap_optimizer
from .._internal.trainer import due, log_metrics, log_step
from ..config import ConfigError
from ._grad_stats import GradStats, grad_stats

__all__ = ["AutoClip"]

_OWNER = "AutoClip"
MODES = ("percentile", "agc")


class AutoClip(Callback):
    """Clip gradients with a threshold that needs no tuning.

    ``mode="percentile"`` (Seetharaman et al. 2020, *AutoClip: Adaptive Gradient Clipping for Source
    Separation Networks*): the total gradient norm of every step is appended to a history, and the
    gradients are clipped to the ``percentile``-th percentile of that history (the current norm
    included). The history lives on the device (a ring of the last ``history_size`` norms), the
    percentile is a ``kthvalue`` there and the clip is one ``torch._foreach_mul_`` by
    ``min(1, threshold / norm)``: no host-device sync on any step. The norm is the shared cache's, so
    it is the pre-clip, unscaled, accumulated and (under DDP) all-reduced norm; every rank holds the
    same history and clips the same way without communicating.

    ``mode="agc"`` (Brock et al. 2021, *High-Performance Large-Scale Image Recognition Without
    Normalization*): unit-wise clipping: each output unit's gradient (a row of a weight matrix, a
    filter of a convolution; the whole tensor for biases and gains) is scaled down so that
    ``‖G_i‖ ≤ clip_factor · max(‖W_i‖, eps)``. The final classifier layer is excluded by default
    (``exclude="auto"``: the parameters of the last ``nn.Linear`` registered in the module), as the
    paper recommends. It costs a few small kernels per parameter per step, still without a sync.

    Using it together with ``Trainer(gradient_clip_val=...)`` is an error: both would clip.

    Logged every ``log_every_n_steps`` (default: the trainer's) as ``autoclip/threshold``,
    ``autoclip/clip_coef`` and ``autoclip/clipped_fraction`` (share of steps clipped since the last
    log) in percentile mode, ``autoclip/clipped_units`` (share of units clipped this step) in AGC mode.

    Args:
        mode: ``"percentile"`` or ``"agc"``.
        percentile: the percentile of the norm history to clip at, in (0, 100]; the paper's 10 suits
            most runs.
        history_size: how many recent norms the percentile is taken over.
        clip_factor: AGC's λ (0.01 for batch sizes up to a few thousand in the paper).
        eps: AGC's floor on the unit weight norm.
        exclude: AGC only: ``"auto"`` (the last ``nn.Linear``), or glob patterns over parameter
            names that are never clipped (``["head.*"]``), or ``()`` to clip everything.
        log_every_n_steps: ``None`` follows the trainer.

    Example:
        >>> import lightning as L
        >>> clip = AutoClip(percentile=10)
        >>> trainer = L.Trainer(callbacks=[clip], logger=False, enable_progress_bar=False)
        >>> AutoClip(mode="agc", clip_factor=0.01, exclude=["head.*"]).mode
        'agc'
    """

    def __init__(
        self,
        mode: str = "percentile",
        percentile: float = 10.0,
        history_size: int = 10_000,
        clip_factor: float = 0.01,
        eps: float = 1e-3,
        exclude: str | Sequence[str] = "auto",
        log_every_n_steps: int | None = None,
    ) -> None:
        super().__init__()
        self.mode = check_choice(_OWNER, "mode", mode, MODES)
        self.percentile = float(check_number(_OWNER, "percentile", percentile, lo=0.0, hi=100.0))  # type: ignore[arg-type]
        self.history_size = int(check_int(_OWNER, "history_size", history_size))  # type: ignore[arg-type]
        self.clip_factor = float(check_number(_OWNER, "clip_factor", clip_factor, lo=0.0))  # type: ignore[arg-type]
        self.eps = float(check_number(_OWNER, "eps", eps, lo=0.0))  # type: ignore[arg-type]
        if isinstance(exclude, str) and exclude != "auto":
            exclude = [exclude]
        if not (exclude == "auto" or (isinstance(exclude, Sequence) and all(isinstance(e, str) for e in exclude))):
            raise ConfigError(f"{_OWNER}.exclude", exclude, "'auto', a list of glob patterns, or ()")
        self.exclude: str | list[str] = exclude if exclude == "auto" else list(exclude)
        self.log_every_n_steps = check_int(_OWNER, "log_every_n_steps", log_every_n_steps, allow_none=True)

        self.steps = 0  # norms seen (entries written to the history)
        self._history: Tensor | None = None
        self._clipped: Tensor | None = None  # steps clipped since the last log (device counter)
        self._every = 0
        self._excluded: set[int] = set()
        self.excluded_names: list[str] = []
        self.last: dict[str, float] = {}

    # -- identity and state ----------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(mode=self.mode, percentile=self.percentile, clip_factor=self.clip_factor)

    def state_dict(self) -> dict[str, Any]:
        history = None
        if self._history is not None:
            history = self._history.detach().cpu().clone()
        return {"steps": self.steps, "history": history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = int(state_dict.get("steps", 0))
        history = state_dict.get("history")
        self._history = None if history is None else history.clone()

    # -- lifecycle -------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        clip_val = getattr(trainer, "gradient_clip_val", None)
        if clip_val:
            raise ConfigError(
                "Trainer.gradient_clip_val", clip_val, "None when AutoClip is among the callbacks (both would clip)",
                hint="drop gradient_clip_val from the Trainer to let AutoClip set the threshold, or remove "
                     "AutoClip to keep a fixed threshold")
        self._every = self.log_every_n_steps if self.log_every_n_steps is not None else int(trainer.log_every_n_steps or 0)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.mode != "agc":
            return
        named = list(pl_module.named_parameters())
        if self.exclude == "auto":
            last = None
            for name, mod in pl_module.named_modules():
                if isinstance(mod, nn.Linear):
                    last = name
            prefix = f"{last}." if last else None
            excluded = [n for n, _ in named if prefix is not None and n.startswith(prefix)]
        else:
            excluded = [n for n, _ in named if any(fnmatch.fnmatchcase(n, pat) for pat in self.exclude)]
        by_name = dict(named)
        self._excluded = {id(by_name[n]) for n in excluded}
        self.excluded_names = excluded
        if excluded:
            rank_zero_info(f"{_OWNER}(mode='agc'): not clipping {', '.join(excluded)}")

    def _state_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._history is None or len(self._history) != self.history_size:
            old = self._history
            self._history = torch.zeros(self.history_size, device=device)
            if old is not None and len(old):  # history_size changed across a resume: keep the newest
                n = min(len(old), self.history_size, self.steps)
                ordered = old.roll(-(self.steps % len(old))) if self.steps >= len(old) else old[: self.steps]
                self._history[:n] = ordered[-n:].to(device)
                self.steps = n
        elif self._history.device != device:
            self._history = self._history.to(device)
        if self._clipped is None or self._clipped.device != device:
            self._clipped = torch.zeros((), device=device)
        return self._history, self._clipped

    # -- per step --------------------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        opt = unwrap_optimizer(optimizer)
        stats = grad_stats(trainer, opt)
        if not len(stats):
            return
        step = int(trainer.global_step)
        log_now = due(step, self._every)
        metrics = self._percentile(stats, log_now) if self.mode == "percentile" else self._agc(stats, log_now)
        if log_now:
            names = list(metrics)
            values = torch.stack([metrics[n].float().reshape(()) for n in names]).tolist()  # the one sync
            self.last = dict(zip(names, values))
            log_metrics(trainer, self.last, log_step(trainer))

    def _percentile(self, stats: GradStats, log_now: bool) -> dict[str, Tensor]:
        history, clipped = self._state_on(stats.device)
        norm = stats.total(2.0)
        slot = self.steps % self.history_size
        prev = history[(slot - 1) % self.history_size] if self.steps else torch.zeros((), device=stats.device)
        history[slot] = torch.where(torch.isfinite(norm), norm, prev)  # a NaN step must not poison the history
        self.steps += 1
        n = min(self.steps, self.history_size)
        k = max(1, math.ceil(self.percentile / 100.0 * n))
        threshold = torch.kthvalue(history[:n], k).values
        over = norm > threshold
        coef = torch.where(over, threshold / norm.clamp_min(1e-12), torch.ones_like(norm))
        _mul_grouped(stats, coef)
        clipped += over.float()
        stats.extras["autoclip"] = {"threshold": threshold, "coef": coef}
        if not log_now:
            return {}
        out = {"autoclip/threshold": threshold, "autoclip/clip_coef": coef,
               "autoclip/clipped_fraction": clipped / float(max(1, min(self._every, self.steps)))}
        out = {k: v.clone() for k, v in out.items()}
        clipped.zero_()
        return out

    def _agc(self, stats: GradStats, log_now: bool) -> dict[str, Tensor]:
        clipped_units: list[Tensor] = []
        total_units = 0
        for p in stats.params:
            g = p.grad
            if g is None or id(p) in self._excluded:
                continue
            w = p.detach()
            if w.ndim > 1:
                dims = tuple(range(1, w.ndim))
                w_norm = torch.linalg.vector_norm(w, dim=dims, keepdim=True)
                g_norm = torch.linalg.vector_norm(g, dim=dims, keepdim=True)
            else:
                w_norm = torch.linalg.vector_norm(w)
                g_norm = torch.linalg.vector_norm(g)
            if stats.scale_inv is not None:  # fp16 AMP with a fused optimizer: grads are still scaled
                g_norm = g_norm * stats.scale_inv
            max_norm = w_norm.clamp_min(self.eps) * self.clip_factor
            # units under the limit get exactly 1.0; clamp_min avoids 0/0 for all-zero gradients
            coef = torch.where(g_norm > max_norm, max_norm / g_norm.clamp_min(1e-6), torch.ones_like(g_norm))
            g.mul_(coef.to(g.dtype))
            if log_now:
                clipped_units.append((g_norm > max_norm).sum())
                total_units += g_norm.numel()
        if not log_now or not clipped_units:
            return {}
        return {"autoclip/clipped_units": torch.stack(clipped_units).sum().float() / max(total_units, 1)}

    def __repr__(self) -> str:
        if self.mode == "agc":
            return f"AutoClip(mode='agc', clip_factor={self.clip_factor:g}, eps={self.eps:g}, exclude={self.exclude!r})"
        return f"AutoClip(mode='percentile', percentile={self.percentile:g}, history_size={self.history_size})"


def _mul_grouped(stats: GradStats, coef: Tensor) -> None:
    """``g *= coef`` for every gradient of the step, one foreach kernel per (device, dtype) bucket."""
    grads = stats.grads
    for bucket in stats.buckets:
        group = [grads[i] for i in bucket]
        torch._foreach_mul_(group, coef.to(device=group[0].device, dtype=group[0].dtype))
