"""The processes of one study under DDP: rank 0 owns the study, the other ranks follow it.

With ``strategy="ddp"`` Lightning's launcher re-runs the whole script for each extra device (and
torchrun starts every rank itself), so every rank calls ``tune()``. Only rank 0 opens the study,
samples, reports and decides; before each trial it sends the trial's complete config to the other
ranks, which build the same model and train beside it. The process group is started once, before
the first model is built, with the strategy's own launcher and ``setup_environment`` -- exactly what
``trainer.fit`` would do -- so the later Trainers join it instead of launching again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError

__all__ = ["Assignment", "DistributedContext", "Stop"]


@dataclass
class Assignment:
    """One trial as the ranks see it: its number, the sampled overrides and the complete optim block.

    ``seed`` is set for a re-evaluation run of a finished trial (its config trained again with another
    seed, see ``_reeval.py``); ``None``: the study's seed.
    """

    number: int
    overrides: dict[str, Any]
    optim: dict[str, Any]
    out_dir: str | None = None
    seed: int | None = None


@dataclass
class Stop:
    """The end of the study, sent by rank 0 (``error`` when it stopped on an exception)."""

    error: str | None = None
    study_name: str | None = None


@dataclass
class DistributedContext:
    """Whether trials run on several processes, and the messages between them.

    Build it with :meth:`from_trainer_kwargs`; a single-process context does nothing.

    Example:
        >>> ctx = DistributedContext.from_trainer_kwargs({"accelerator": "cpu", "devices": 1})
        >>> ctx.enabled, ctx.expected_rank(), ctx.broadcast("a trial")
        (False, 0, 'a trial')
    """

    world_size: int = 1
    strategy: Any = None
    num_processes: int = 1
    _started: bool = field(default=False, repr=False)

    @classmethod
    def from_trainer_kwargs(cls, trainer_kwargs: dict[str, Any]) -> DistributedContext:
        """Ask Lightning, with a Trainer built from the same arguments, how many processes a trial uses."""
        import lightning as L

        probe_kwargs = {k: v for k, v in trainer_kwargs.items() if k not in ("callbacks", "logger")}
        probe_kwargs.update(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)
        try:
            probe = L.Trainer(**probe_kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError("trainer_kwargs", {k: v for k, v in probe_kwargs.items() if k not in ("logger",)},
                              f"arguments L.Trainer accepts ({str(exc).splitlines()[0]})") from None
        except Exception as exc:  # MisconfigurationException and friends
            raise ConfigError("trainer_kwargs", {k: v for k, v in probe_kwargs.items() if k not in ("logger",)},
                              f"a valid Trainer configuration ({str(exc).splitlines()[0]})") from None
        world = int(probe.world_size)
        if world <= 1:
            return cls()
        from lightning.pytorch.strategies import DDPStrategy
        from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

        strategy = probe.strategy
        launcher = getattr(strategy, "launcher", None)
        if not isinstance(strategy, DDPStrategy) or not (launcher is None or isinstance(launcher, _SubprocessScriptLauncher)):
            raise ConfigError("trainer_kwargs.strategy", trainer_kwargs.get("strategy", "auto"),
                              "'ddp' (Lightning's subprocess launcher, or torchrun) for a multi-process trial",
                              hint="spawn/fork strategies (ddp_spawn, ddp_notebook) train in copies of the process "
                                   "that holds the study; use strategy='ddp' and run tune() from a script")
        return cls(world_size=world, strategy=strategy, num_processes=int(getattr(strategy, "num_processes", 1) or 1))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def expected_rank(self) -> int:
        """This process's global rank, from the environment (before the process group exists)."""
        if not self.enabled:
            return 0
        if "RANK" in os.environ:
            return int(os.environ["RANK"])
        if "LOCAL_RANK" not in os.environ:
            return 0  # the launching process: Lightning makes it local rank 0 of its node
        return int(os.environ.get("NODE_RANK", "0")) * self.num_processes + int(os.environ["LOCAL_RANK"])

    def start(self) -> int:
        """Launch the other processes (from rank 0 of a plain script) and join the process group; returns the rank."""
        if not self.enabled:
            return 0
        import torch.distributed as dist

        if not self._started and not dist.is_initialized():
            launcher = self.strategy.launcher
            if launcher is not None:
                launcher.launch(self.strategy.setup_environment)
            else:
                self.strategy.setup_environment()
        self._started = True
        return int(dist.get_rank())

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        return self.strategy.broadcast(obj, src=0)
