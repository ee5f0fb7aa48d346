"""SharpnessMonitor: the top Hessian eigenvalue during training, against the optimizer's stability edge."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection
from torch.utils.data import DataLoader

from .._internal.checks import check_int, check_number
from .._internal.rng import collect_rng_state, loader_generators, restore_rng_state
from .._internal.text import fmt
from .._internal.trainer import log_metrics, log_step
from ..config import ConfigError
from ._edge import Edge, edge_preconditioner, stability_edge, stepped_params
from ._hessian import Forward, hessian_eigenvalues, select_params

__all__ = ["SharpnessMonitor"]

_OWNER = "SharpnessMonitor"


class SharpnessMonitor(Callback):
    """Track the top Hessian eigenvalue at bounded cost and flag training above the stability edge.

    At each check the largest eigenvalue of the Hessian of the loss over a **fixed** set of training
    batches (the first ``num_batches`` of the training loader, taken once at the start of fit, in eval
    mode; saved in the checkpoint, so a resumed run probes the same loss) is estimated by Lanczos
    with at most ``iters`` Hessian-vector products, so one check costs at most
    ``iters * num_batches`` double backward passes. It is compared with the stability edge of
    the first optimizer at its current learning rate (see :mod:`._edge`):

    * SGD: ``lambda_max(H)`` against ``2 / lr``; heavy-ball momentum ``(2 + 2 beta) / lr``;
      Nesterov ``(2 + 2 beta) / (lr (1 + 2 beta))``; minus coupled weight decay.
    * Adam / AdamW: the raw ``lambda_max(H)`` is not comparable; once the optimizer has state, the
      *preconditioned* sharpness ``lambda_max(P^-1 H)`` (``P = sqrt(v_hat) + eps``) is computed as
      well and compared with ``(2 + 2 beta1) / ((1 - beta1) lr)``.
    * Other optimizers: ``lambda_max(H)`` is logged, nothing is flagged.
    * Parameter groups with different learning rates (or momenta): each parameter's direction is
      scaled by its group's step size relative to the largest, ``D = lr_g / lr_max``, and
      ``lambda_max(D^1/2 H D^1/2)`` (Adam: ``D`` folded into ``P^-1``) is compared with the edge of
      the largest step; it is logged as ``lambda_max_preconditioned`` (one more eigen-solve per check).

    Above the edge (``lambda > edge * (1 + tolerance)``) gradient descent on the local quadratic
    model diverges along the top direction: training either blows up or bounces back to the edge
    (the "edge of stability"). The monitor then warns (``rank_zero_warn``, once per crossing) and
    records it: ``flagged``, ``first_flag_step`` and each check in ``history``.

    Logged (to every logger of the trainer, at Lightning's step): ``<prefix>/lambda_max``,
    ``<prefix>/edge``, ``<prefix>/ratio`` (lambda / edge), and ``<prefix>/lambda_max_preconditioned``
    for Adam. The model, its modes and all RNG states are restored exactly after each check, so the
    training run is unchanged by the monitor. Every rank computes; rank 0's value is broadcast so
    all ranks record the same flag.

    Args:
        every_n_epochs: check at the end of every N-th training epoch (``None``: never).
        every_n_steps: also check after every N-th optimizer step (``None``: never).
        check_at_start: check once before the first optimizer step (catches a learning rate that is
            too large from the outset, before the loss explodes).
        num_batches: how many training batches form the fixed set.
        iters: the most Hessian-vector products per check (Lanczos steps).
        tol: relative tolerance of the eigenvalue (Lanczos residual).
        loss_fn: ``loss_fn(outputs, targets)``; default: the module's ``loss_fn`` (OptimMixin's).
        forward: ``forward(module, batch) -> (outputs, targets)``; default ``(module(batch[0]), batch[1])``.
        params: restrict to parameters (name globs or parameters); default every trainable one.
        tolerance: relative margin above the edge before flagging.
        prefix: the first segment of the logged names.

    Example:
        >>> import lightning as L
        >>> monitor = SharpnessMonitor(every_n_epochs=5, num_batches=2, iters=20)
        >>> trainer = L.Trainer(callbacks=[monitor], logger=False, enable_progress_bar=False)
        >>> monitor.flagged, monitor.history
        (False, [])
    """

    def __init__(
        self, every_n_epochs: int | None = 1, every_n_steps: int | None = None, check_at_start: bool = True,
        num_batches: int = 2, iters: int = 20, tol: float = 1e-2, loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        forward: Forward | None = None, params: Iterable[Any] | None = None, tolerance: float = 0.0,
        prefix: str = "sharpness",
    ) -> None:
        super().__init__()
        self.every_n_epochs = check_int(_OWNER, "every_n_epochs", every_n_epochs, allow_none=True)
        self.every_n_steps = check_int(_OWNER, "every_n_steps", every_n_steps, allow_none=True)
        self.check_at_start = bool(check_at_start)
        self.num_batches = int(check_int(_OWNER, "num_batches", num_batches) or 1)
        self.iters = int(check_int(_OWNER, "iters", iters, minimum=2) or 2)
        self.tol = float(check_number(_OWNER, "tol", tol, 0.0, 1.0) or 1e-2)
        self.tolerance = float(check_number(_OWNER, "tolerance", tolerance, 0.0, lo_open=False) or 0.0)
        if not isinstance(prefix, str) or not prefix or "/" in prefix or any(c.isspace() for c in prefix):
            raise ConfigError(f"{_OWNER}.prefix", prefix, "a non-empty name without spaces or '/'")
        self.prefix = prefix
        self.loss_fn, self.forward = loss_fn, forward
        self.params = list(params) if params is not None else None
        self.history: list[dict[str, Any]] = []
        self.flagged = False
        self.first_flag_step: int | None = None
        self._above = False
        self._batches: list[Any] = []
        self._last_step_checked = -1  # saved: with gradient accumulation a resumed step must not be re-checked
        self._restored_batches = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    def state_dict(self) -> dict[str, Any]:
        """History, flags, the last step checked and the fixed batches (so a resumed run probes the same loss)."""
        return {"history": [dict(h) for h in self.history], "flagged": self.flagged,
                "first_flag_step": self.first_flag_step, "above": self._above,
                "last_step_checked": self._last_step_checked,
                "batches": apply_to_collection(self._batches, torch.Tensor, lambda t: t.detach().cpu())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.flagged = bool(state_dict.get("flagged", False))
        self.first_flag_step = state_dict.get("first_flag_step")
        self._above = bool(state_dict.get("above", False))
        self._last_step_checked = int(state_dict.get("last_step_checked", -1))
        batches = state_dict.get("batches")
        self._batches = list(batches) if batches else []
        self._restored_batches = bool(self._batches)  # keep them at the next on_train_start

    # -- lifecycle -------------------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.loss_fn is None:
            try:
                self.loss_fn = pl_module.loss_fn
            except (AttributeError, ConfigError) as err:
                raise ConfigError(f"{_OWNER}.loss_fn", None, "a loss_fn(outputs, targets), or a module with `loss_fn`",
                                  hint="pass SharpnessMonitor(loss_fn=torch.nn.CrossEntropyLoss())") from err
        if not self._restored_batches:  # a resumed run probes the batches the original run drew
            self._batches = self._take_batches(trainer.train_dataloader)
        self._restored_batches = False

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.check_at_start and trainer.global_step == 0 and self._last_step_checked < 0 and batch_idx == 0:
            self._check(trainer, pl_module)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step_checked:
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0 \
                and int(trainer.global_step) != self._last_step_checked:
            self._check(trainer, pl_module)

    # -- work ------------------------------------------------------------------------------------
    def _take_batches(self, loader: Any) -> list[Any]:
        """The first ``num_batches`` batches, drawn without moving any RNG the training run depends on."""
        if not isinstance(loader, DataLoader):
            raise ConfigError(f"{_OWNER}.data", type(loader).__name__, "a single training DataLoader",
                              hint="with several training loaders, subclass and override _take_batches")
        gens = loader_generators([loader])
        saved_gens = [g.get_state() for g in gens]
        saved = collect_rng_state()
        try:
            out = []
            for batch in loader:
                out.append(batch)
                if len(out) >= self.num_batches:
                    break
        finally:
            restore_rng_state(saved)
            for g, s in zip(gens, saved_gens):
                g.set_state(s)
        return out

    def _eigen(self, pl_module: Any, preconditioner: torch.Tensor | None = None,
               params: list[torch.nn.Parameter] | None = None) -> tuple[float, int, float]:
        res = hessian_eigenvalues(pl_module, self._batches, self.loss_fn, k=1, iters=self.iters, tol=self.tol,  # type: ignore[arg-type]
                                  params=self.params if params is None else params, forward=self.forward,
                                  max_batches=None,
                                  preconditioner=preconditioner)
        return res.eigenvalues[0], res.hvps, res.seconds

    def _check(self, trainer: Any, pl_module: Any) -> None:
        step = int(trainer.global_step)
        self._last_step_checked = step
        optimizer = trainer.optimizers[0]
        edge = stability_edge(optimizer)
        lam, hvps, seconds = self._eigen(pl_module)
        lam_pre = None
        if edge.preconditioned:
            stepped = stepped_params(optimizer, select_params(pl_module, self.params)[1])
            pre = edge_preconditioner(optimizer, stepped) if stepped else None
            if pre is not None:
                lam_pre, more, secs = self._eigen(pl_module, pre, stepped)
                hvps, seconds = hvps + more, seconds + secs
        values = trainer.strategy.broadcast(torch.tensor([lam, math.nan if lam_pre is None else lam_pre]), src=0)
        lam, lam_pre = float(values[0]), (None if math.isnan(float(values[1])) else float(values[1]))
        self._record(trainer, step, edge, lam, lam_pre, hvps, seconds)

    def _record(self, trainer: Any, step: int, edge: Edge, lam: float, lam_pre: float | None, hvps: int,
                seconds: float) -> None:
        compared = lam_pre if edge.preconditioned else lam
        ratio = compared / edge.value if (edge.value and compared is not None) else None
        above = ratio is not None and ratio > 1.0 + self.tolerance
        self.history.append({"step": step, "epoch": int(trainer.current_epoch), "lambda_max": lam,
                             "lambda_max_preconditioned": lam_pre, "edge": edge.value, "edge_kind": edge.kind,
                             "ratio": ratio, "above_edge": above, "hvps": hvps, "seconds": seconds})
        metrics = {f"{self.prefix}/lambda_max": lam}
        if edge.value is not None:
            metrics[f"{self.prefix}/edge"] = edge.value
        if ratio is not None:
            metrics[f"{self.prefix}/ratio"] = ratio
        if lam_pre is not None:
            metrics[f"{self.prefix}/lambda_max_preconditioned"] = lam_pre
        log_metrics(trainer, metrics, log_step(trainer))
        if above and not self._above:
            rank_zero_warn(f"{_OWNER}: at step {step} the sharpness {fmt(compared)} is above the stability edge "  # type: ignore[arg-type]
                           f"{fmt(edge.value)} ({edge.note}; ratio {ratio:.3g}). Gradient descent on the local quadratic "  # type: ignore[arg-type]
                           "model diverges along the top eigen-direction: expect the loss to blow up or oscillate. "
                           "HINT: lower the learning rate below the edge (or add warm-up).")
            self.flagged = True
            if self.first_flag_step is None:
                self.first_flag_step = step
        self._above = above
