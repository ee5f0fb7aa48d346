"""GradNormMonitor: gradient norms at close to no cost, logged through the trainer's loggers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from .._internal.checks import check_int
from .._internal.optimizers import unwrap_optimizer
from .._internal.trainer import due, log_metrics, log_step
from ..config import ConfigError
from ._grad_stats import GradStats, Grouping, aggregate, check_norm_type, grad_stats

__all__ = ["GradNormMonitor"]

_OWNER = "GradNormMonitor"
_SHARDED = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy")


class GradNormMonitor(Callback):
    """Log gradient norms: the total every logging step, per-group detail on a slower cadence.

    All norms come from the shared per-step cache (one ``torch._foreach_norm`` per device and dtype,
    after AMP unscaling, on the accumulated and, under DDP, all-reduced gradient, before clipping),
    so adding this callback next to :class:`AutoClip`, :class:`NonFiniteGuard` or
    :class:`TrainingDoctor` computes nothing twice.

    What syncs when: on a step that logs nothing the callback does no work at all. On a logging step
    the values to log are gathered into one tensor and read with a single ``.tolist()`` (the only
    host-device synchronization), then passed to every logger of the trainer with Lightning's step
    (``trainer.fit_loop.epoch_loop._batches_that_stepped``), so the curves line up with ``self.log``.

    Logged names (``prefix`` defaults to ``grad_norm``):

    * ``grad_norm/total``: the norm of all gradients as one vector (what ``clip_grad_norm_`` sees).
    * ``grad_norm/<group>``: one per group, e.g. ``grad_norm/encoder.layers.0`` (``groups``).
    * ``grad_norm/param/<name>``: one per parameter, with ``per_param=True``.
    * ``param_norm/<group>`` and ``update_ratio/<group>`` (``‖Δw‖ / ‖w‖`` of the step's update), with
      ``param_norms=True``. The ratio needs the weights before the update: they are copied on detail
      steps only.
    * histograms of each group's gradient values in TensorBoard (``grad_norm_hist/<group>``) every
      ``histogram_every_n_steps`` steps.

    With several optimizers, each optimizer's names get an ``opt<i>/`` segment after the prefix.

    Args:
        norm_type: 1, 2 or ``"inf"``.
        log_every_n_steps: cadence of the total, in optimizer steps; ``None`` follows
            ``Trainer(log_every_n_steps=...)``.
        groups: how to group parameters for the detail: ``"auto"`` (one group per block of a
            ``ModuleList``/``Sequential``, else per top-level module), a module-path depth, a mapping
            ``{group: regex or [regexes]}``, or ``None`` for no groups.
        detail_every_n_steps: cadence of groups, per-parameter norms, parameter norms and ratios;
            ``None`` means ten times the total's cadence.
        per_param: also log every parameter's gradient norm (on the detail cadence).
        param_norms: also log parameter norms and update-to-parameter ratios per group.
        histogram_every_n_steps: TensorBoard histograms of gradients per group; ``None`` for none.
        prefix: the first segment of every logged name; set it to run two monitors side by side.

    Example:
        >>> import lightning as L
        >>> monitor = GradNormMonitor(groups=2, detail_every_n_steps=100, per_param=True)
        >>> trainer = L.Trainer(callbacks=[monitor], logger=False, enable_progress_bar=False)
        >>> monitor.state_key
        "GradNormMonitor{'prefix': 'grad_norm', 'norm_type': 2.0}"
    """

    def __init__(
        self,
        norm_type: float | int | str = 2,
        log_every_n_steps: int | None = None,
        groups: str | int | Mapping[str, str | Sequence[str]] | None = "auto",
        detail_every_n_steps: int | None = None,
        per_param: bool = False,
        param_norms: bool = False,
        histogram_every_n_steps: int | None = None,
        prefix: str = "grad_norm",
    ) -> None:
        super().__init__()
        self.norm_type = check_norm_type(norm_type, _OWNER)
        self.log_every_n_steps = check_int(_OWNER, "log_every_n_steps", log_every_n_steps, allow_none=True)
        self.grouping = None if groups is None else Grouping(groups, f"{_OWNER}.groups")
        self.detail_every_n_steps = check_int(_OWNER, "detail_every_n_steps", detail_every_n_steps, allow_none=True)
        self.per_param = bool(per_param)
        self.param_norms = bool(param_norms)
        if self.param_norms and self.grouping is None:
            raise ConfigError(f"{_OWNER}.groups", None, "a grouping when param_norms=True (norms and ratios are per group)",
                              hint="keep groups='auto' or pass a depth / a regex mapping")
        self.histogram_every_n_steps = check_int(_OWNER, "histogram_every_n_steps", histogram_every_n_steps,
                                                 allow_none=True)
        if not isinstance(prefix, str) or not prefix or any(c.isspace() for c in prefix) or "/" in prefix:
            raise ConfigError(f"{_OWNER}.prefix", prefix, "a non-empty name without spaces or '/'")
        self.prefix = prefix
        self._every: int = 0
        self._detail_every: int = 0
        self._pending: list[tuple[list[str], Tensor]] = []
        self._ratio_jobs: dict[int, tuple[GradStats, list[Tensor], str]] = {}
        self._hooks: list[Any] = []
        self.last: dict[str, float] = {}
        self.steps_logged = 0

    # -- identity and state ----------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix, norm_type=self.norm_type)

    def state_dict(self) -> dict[str, Any]:
        return {"steps_logged": self.steps_logged, "last": dict(self.last)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps_logged = int(state_dict.get("steps_logged", 0))
        self.last = dict(state_dict.get("last", {}))

    # -- lifecycle -------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        every = self.log_every_n_steps if self.log_every_n_steps is not None else int(trainer.log_every_n_steps or 0)
        self._every = every
        self._detail_every = self.detail_every_n_steps if self.detail_every_n_steps is not None else 10 * every
        if not trainer.loggers:
            rank_zero_warn(f"{_OWNER}: the Trainer has no logger, so nothing will be logged; the values are still "
                           "kept in `GradNormMonitor.last`. HINT: pass Trainer(logger=...) (TensorBoard or CSV).")
        name = type(trainer.strategy).__name__
        if name in _SHARDED:
            rank_zero_warn(f"{_OWNER}: {name} shards gradients, so the norms are those of this rank's shard, not "
                           "of the full model. HINT: use DDP for exact norms, or read them as per-shard values.")

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.param_norms:
            for opt in trainer.optimizers:
                torch_opt = unwrap_optimizer(opt)
                self._hooks.append(torch_opt.register_step_post_hook(self._after_step))

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._remove_hooks()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._remove_hooks()
        self._pending.clear()
        self._ratio_jobs.clear()

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    # -- per step ----------------------------------------------------------------------------------
    def _opt_part(self, trainer: Any, optimizer: Any) -> str:
        if len(trainer.optimizers) <= 1:
            return ""
        idx = next((i for i, o in enumerate(trainer.optimizers) if unwrap_optimizer(o) is optimizer), 0)
        return f"opt{idx}/"

    def _derived(self, kind: str) -> str:
        return kind if self.prefix == "grad_norm" else f"{self.prefix}_{kind}"

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        step = int(trainer.global_step)
        total_due = due(step, self._every)
        detail_due = due(step, self._detail_every)
        hist_due = due(step, self.histogram_every_n_steps)
        if not (total_due or detail_due or hist_due):
            return  # nothing to log: no work, no sync
        opt = unwrap_optimizer(optimizer)
        stats = grad_stats(trainer, opt)
        if not len(stats):
            return
        nt = self.norm_type
        base = f"{self.prefix}/{self._opt_part(trainer, opt)}"
        if total_due or detail_due:
            self._pending.append(([f"{base}total"], stats.total(nt).reshape(1)))
        if detail_due:
            if self.grouping is not None:
                groups, norms = stats.group_norms(self.grouping, nt)
                self._pending.append(([base + g for g in groups], norms))
            if self.per_param:
                self._pending.append(([f"{base}param/{n}" for n in stats.names], stats.norms(nt)))
            if self.param_norms:
                before = torch._foreach_mul([p.detach() for p in stats.params], 1.0)  # a copy, on detail steps only
                self._ratio_jobs[id(opt)] = (stats, list(before), self._opt_part(trainer, opt))
        if hist_due and self.grouping is not None:
            self._histograms(trainer, stats, opt)

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        job = self._ratio_jobs.pop(id(optimizer), None)
        if job is None:
            return
        stats, before, _ = job
        assert self.grouping is not None
        after = [p.detach() for p in stats.params]
        delta = torch._foreach_sub(after, before)
        nt = self.norm_type
        names, index = stats.group_index(self.grouping)
        d_norm = aggregate(stats.per_tensor(list(delta), nt), index, len(names), nt)
        p_norm = aggregate(stats.per_tensor(after, nt), index, len(names), nt)
        ratio = d_norm / p_norm.clamp_min(1e-12)
        opt_part = job[2]
        self._pending.append(([f"{self._derived('param_norm')}/{opt_part}{g}" for g in names], p_norm))
        self._pending.append(([f"{self._derived('update_ratio')}/{opt_part}{g}" for g in names], ratio))

    def _histograms(self, trainer: Any, stats: GradStats, opt: Any) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers or not trainer.is_global_zero:
            return
        assert self.grouping is not None
        names, _ = stats.group_index(self.grouping)
        members: dict[str, list[Tensor]] = {g: [] for g in names}
        for name, grad in zip(stats.names, stats.grads):
            members[self.grouping.group_of(name)].append(grad.detach().flatten())
        step = log_step(trainer)
        base = f"{self.prefix}_hist/{self._opt_part(trainer, opt)}"
        for group, grads in members.items():
            values = torch.cat([g.float() for g in grads]).cpu()
            values = values[torch.isfinite(values)]
            if values.numel():
                for lg in loggers:
                    lg.experiment.add_histogram(base + group, values, global_step=step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._flush(trainer)

    def _flush(self, trainer: Any) -> None:
        if not self._pending:
            return
        names = [n for ns, _ in self._pending for n in ns]
        device = self._pending[0][1].device
        values = torch.cat([t.reshape(-1).to(device) for _, t in self._pending]).tolist()  # the one sync
        self._pending.clear()
        metrics = dict(zip(names, values))
        self.last = metrics
        self.steps_logged += 1
        log_metrics(trainer, metrics, log_step(trainer))

    def __repr__(self) -> str:
        nt = "inf" if self.norm_type == math.inf else f"{self.norm_type:g}"
        return (f"GradNormMonitor(norm_type={nt}, log_every_n_steps={self.log_every_n_steps}, "
                f"groups={None if self.grouping is None else self.grouping.spec!r}, "
                f"detail_every_n_steps={self.detail_every_n_steps}, per_param={self.per_param}, "
                f"param_norms={self.param_norms}, prefix={self.prefix!r})")
