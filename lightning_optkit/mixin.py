"""OptimMixin and build_optimizers: ``configure_optimizers`` from the ``optim:`` block."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from ._internal.training import optimizer_steps
from .config import ConfigError, OptimConfig, TrainingLength, load_config
from .optim import GroupPlan, OptimInfo, build_param_groups, format_groups, resolve_optimizer
from .schedules import build_scheduler

__all__ = ["OptimMixin", "build_optimizers", "settle_pending_plateau_steps", "training_length"]


def training_length(trainer: Any) -> TrainingLength:
    """Optimizer steps of the whole run and of each epoch, as the trainer will run them.

    Counts optimizer steps, not batches: ``ceil(batches / accumulation)`` per epoch (Lightning steps
    on the last, partial accumulation of an epoch), with the accumulation of each epoch taken from a
    ``GradientAccumulationScheduler`` when there is one (Lightning's
    ``estimated_stepping_batches`` uses the first epoch's value for all), capped by ``max_steps``.
    Under DDP the batches are per rank, as the optimizer steps are. The count itself is
    :func:`lightning_optkit._internal.training.optimizer_steps`, shared with the doctor and the finder.

    Raises:
        ConfigError: when the length cannot be known (infinite loader without ``max_steps``,
            ``max_time`` only), naming the trainer argument to set.
    """
    total, per_epoch = optimizer_steps(trainer)
    return TrainingLength(total, per_epoch)


def _use_fused(info: OptimInfo, kwargs: dict[str, Any], plans: list[GroupPlan]) -> None:
    """On CUDA, use the fused kernels where torch has them unless the config chose otherwise."""
    if not info.supports_fused or any(k in kwargs for k in ("fused", "foreach", "differentiable")):
        return
    params = [p for g in plans for p in g.params]
    if params and all(p.is_cuda and p.is_floating_point() for p in params):
        kwargs["fused"] = True


def build_optimizers(
    module: nn.Module,
    config: OptimConfig | Mapping[str, Any] | str,
    trainer: Any = None,
    *,
    length: TrainingLength | None = None,
    log: bool = True,
) -> Any:
    """Build what ``configure_optimizers`` returns from an ``optim:`` config.

    Args:
        module: the model whose ``named_parameters()`` the rules select from.
        config: an :class:`OptimConfig`, dict or YAML path.
        trainer: resolves durations (defaults to ``module.trainer`` when attached).
        length: the training length, for use without a trainer.
        log: print the groups built (rank zero, when a trainer is attached); ``False`` for a build
            that is not the live one (the LR finder's rebuild).

    Returns:
        The optimizer alone when there is no schedule, else ``([optimizers], [scheduler configs])``.

    Example:
        >>> import lightning as L
        >>> class Net(L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layer = nn.Linear(4, 2)
        ...     def configure_optimizers(self):
        ...         return build_optimizers(self, {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}})
        >>> type(Net().configure_optimizers()).__name__
        'SGD'
    """
    cfg = config if isinstance(config, OptimConfig) else load_config(config)
    ensure_loss = getattr(module, "_optkit_ensure_loss", None)
    if callable(ensure_loss):
        ensure_loss(cfg)
    blocks = cfg.blocks()
    if length is None and any(b.scheduler is not None for _, b in blocks):
        trainer = trainer if trainer is not None else getattr(module, "_trainer", None)
        if trainer is None:
            raise ConfigError("scheduler", None, "a trainer to resolve the schedule's length",
                              hint="call build_optimizers from configure_optimizers, or pass "
                                   "length=TrainingLength(total_steps, steps_per_epoch)")
        length = training_length(trainer)
    optimizers: list[torch.optim.Optimizer] = []
    schedulers: list[dict[str, Any]] = []
    taken: set[str] = set()
    lines: list[str] = []
    for i, (prefix, block) in enumerate(blocks):
        info = resolve_optimizer(block.optimizer.name, f"{prefix}optimizer.name")
        plans = build_param_groups(module, block, info, prefix, taken)
        kwargs = {**info.defaults, **block.optimizer.kwargs}
        _use_fused(info, kwargs, plans)
        try:
            optimizer = info.cls([g.as_torch_group() for g in plans], lr=block.optimizer.lr, **kwargs)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"{prefix}optimizer", block.optimizer.model_dump(),
                              f"arguments {info.cls.__name__} accepts ({exc})") from None
        optimizers.append(optimizer)
        label = f"lr-{type(optimizer).__name__}" + (f"-{i}" if len(blocks) > 1 else "")
        if block.scheduler is not None:
            assert length is not None
            schedulers.extend(build_scheduler(block, optimizer, length, prefix, name=label))
        lines += format_groups(plans, f"{label.removeprefix('lr-')} ({len(plans)} group{'s' * (len(plans) != 1)}):")
    if cfg.optimizers is not None:
        left = [n for n, p in module.named_parameters() if p.requires_grad and n not in taken]
        if left:
            raise ConfigError("optimizers", [b.params for _, b in blocks],
                              "blocks whose params globs together cover every trainable parameter",
                              hint=f"not owned: {', '.join(left[:3])}{'...' if len(left) > 3 else ''}; "
                                   "add them to a block or freeze them")
    if log and (trainer is not None or getattr(module, "_trainer", None) is not None):
        rank_zero_info("lightning_optkit: " + "\n  ".join(lines))
    if not schedulers and len(optimizers) == 1:
        return optimizers[0]
    return optimizers, schedulers


def settle_pending_plateau_steps(trainer: Any, checkpoint: dict[str, Any]) -> None:
    """Write the end-of-epoch plateau step that Lightning would lose on resume into ``checkpoint``.

    Lightning steps ``ReduceLROnPlateau`` after ``on_train_epoch_end``, i.e. after the epoch-end
    checkpoint is written, and skips that step when it resumes from the checkpoint (the metric is
    not saved). A resumed run then misses one plateau decision and its LRs drift from the
    uninterrupted run. When a checkpoint is written at the end of an epoch whose plateau step is
    still pending, this applies the step to copies of the scheduler and optimizer state in the
    checkpoint (the live objects are left untouched; Lightning steps them as usual).
    """
    from lightning.pytorch.trainer.states import TrainerFn

    if "lr_schedulers" not in checkpoint or "optimizer_states" not in checkpoint:
        return
    if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
        return
    fit_loop = trainer.fit_loop
    progress = fit_loop.epoch_progress.current
    if progress.completed >= progress.ready or not fit_loop.epoch_loop._num_ready_batches_reached():
        return
    for i, config in enumerate(trainer.lr_scheduler_configs):
        if not config.reduce_on_plateau or config.interval != "epoch":
            continue
        if (trainer.current_epoch + 1) % config.frequency != 0 or config.monitor is None:
            continue
        metric = trainer.callback_metrics.get(config.monitor)
        if metric is None:
            continue
        sched = config.scheduler
        optimizer = sched.optimizer
        live_state = copy.deepcopy(sched.state_dict())
        live_lrs = [g["lr"] for g in optimizer.param_groups]
        try:
            sched.step(metric)
            checkpoint["lr_schedulers"][i] = copy.deepcopy(sched.state_dict())
            opt_index = next(k for k, o in enumerate(trainer.optimizers) if o is optimizer)
            for group, saved in zip(optimizer.param_groups, checkpoint["optimizer_states"][opt_index]["param_groups"]):
                saved["lr"] = group["lr"]
        finally:
            sched.load_state_dict(live_state)
            for group, lr in zip(optimizer.param_groups, live_lrs):
                group["lr"] = lr


class OptimMixin:
    """LightningModule mixin: ``configure_optimizers`` and ``loss_fn`` from a declarative ``optim:`` block.

    The config is read from ``self.optim_config`` (a dict, YAML path or :class:`OptimConfig`) or,
    failing that, from ``self.hparams["optim"]`` (so ``save_hyperparameters()`` and LightningCLI's
    ``model.init_args.optim`` just work). The resolved config is stored in every checkpoint under
    ``checkpoint["optkit"]``.

    Example:
        >>> import lightning as L
        >>> class Net(OptimMixin, L.LightningModule):
        ...     def __init__(self, optim: dict):
        ...         super().__init__()
        ...         self.save_hyperparameters()
        ...         self.layer = nn.Linear(4, 3)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return self.loss_fn(self.layer(x), y)
        >>> net = Net({"optimizer": {"name": "adamw", "lr": 1e-3}, "loss": {"name": "cross_entropy"}})
        >>> type(net.configure_optimizers()).__name__, type(net.loss_fn).__name__
        ('AdamW', 'CrossEntropyLoss')
    """

    optim_config: Any = None

    def get_optim_config(self) -> OptimConfig:
        """The validated config (re-read each call, so edits such as an LR finder's are seen)."""
        source = getattr(self, "optim_config", None)
        if source is None:
            hparams = getattr(self, "hparams", None)
            if hparams is not None and "optim" in hparams:
                source = hparams["optim"]
        if source is None:
            raise ConfigError("optim", None, "an optim config",
                              hint="set self.optim_config = {...}, or take an `optim` argument and call "
                                   "self.save_hyperparameters()")
        return load_config(source)

    def configure_optimizers(self) -> Any:
        return build_optimizers(self, self.get_optim_config(), getattr(self, "_trainer", None))  # type: ignore[arg-type]

    # -- loss -------------------------------------------------------------------------------------
    @property
    def loss_fn(self) -> nn.Module:
        """The ``loss:`` block as a module (registered as the submodule ``loss_fn``)."""
        mod = self._modules.get("loss_fn")  # type: ignore[attr-defined]
        if mod is None:
            mod = self._optkit_ensure_loss(self.get_optim_config())
            if mod is None:
                raise ConfigError("loss", None, "a loss block, e.g. {name: cross_entropy}",
                                  hint="add `loss:` to the optim config or assign self.loss_fn yourself")
        return mod

    def _optkit_ensure_loss(self, cfg: OptimConfig) -> nn.Module | None:
        mod = self._modules.get("loss_fn")  # type: ignore[attr-defined]
        if mod is not None or cfg.loss is None:
            return mod
        from .losses import WeightedSumLoss, build_loss

        mod = build_loss(cfg.loss)
        device = getattr(self, "device", None)
        if device is not None:
            mod = mod.to(device)
        self._modules["loss_fn"] = mod  # type: ignore[attr-defined]  # add_module's hasattr() recurses
        if isinstance(mod, WeightedSumLoss):
            mod.bind(self)  # type: ignore[arg-type]  # gradnorm's shared_params, weight logging
        return mod

    # -- checkpoints --------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        cfg = self.get_optim_config()
        checkpoint["optkit"] = {"optim_config": cfg.to_dict(), "config_hash": cfg.content_hash()}
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:
            settle_pending_plateau_steps(trainer, checkpoint)
        parent = getattr(super(), "on_save_checkpoint", None)
        if parent is not None:
            parent(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if any(k.startswith("loss_fn.") for k in checkpoint.get("state_dict", {})):
            self._optkit_ensure_loss(self.get_optim_config())
        parent = getattr(super(), "on_load_checkpoint", None)
        if parent is not None:
            parent(checkpoint)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        if any(k.startswith("loss_fn.") for k in state_dict):
            self._optkit_ensure_loss(self.get_optim_config())
        return super().load_state_dict(state_dict, strict=strict, assign=assign)  # type: ignore[misc]
