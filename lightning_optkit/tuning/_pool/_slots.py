"""Device slots: which GPUs (``CUDA_VISIBLE_DEVICES``) or how many CPU threads each trial process gets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ...config import ConfigError
from ._protocol import ENV_SLOT

__all__ = ["DeviceSlot", "plan_slots"]


@dataclass(frozen=True)
class DeviceSlot:
    """What one trial may use: GPU ids (``CUDA_VISIBLE_DEVICES``) or, without GPUs, CPU threads.

    A trial runs on :attr:`size` devices: its GPUs, or on a CPU-only slot ``processes`` DDP
    processes of ``threads`` threads each. More than one means DDP inside the trial.

    Example:
        >>> DeviceSlot(0, ("2", "3")).env()["CUDA_VISIBLE_DEVICES"]
        '2,3'
        >>> DeviceSlot(1, (), threads=4).env()["OMP_NUM_THREADS"]
        '4'
        >>> DeviceSlot(0, (), threads=2, processes=2).size
        2
    """

    index: int
    devices: tuple[str, ...]
    threads: int | None = None
    processes: int = 1

    @property
    def size(self) -> int:
        """The trial's devices: its GPUs, or its CPU processes."""
        return len(self.devices) or self.processes

    def env(self) -> dict[str, str]:
        """The environment variables that pin a process to this slot."""
        env: dict[str, str] = {ENV_SLOT: str(self.index)}
        if self.devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.devices)
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU slot sees no GPU
        if self.threads is not None:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[var] = str(self.threads)
        return env


def _parse_devices(devices: Any) -> list[str] | None:
    """``None``/``"cpu"`` -> no GPU; ``"auto"`` -> ``torch.cuda.device_count()`` GPUs; a list or ``"0,1"`` -> those ids."""
    if devices is None:
        return None
    if isinstance(devices, str):
        text = devices.strip().lower()
        if text == "cpu":
            return []
        if text == "auto":
            import torch

            return [str(i) for i in range(torch.cuda.device_count())]
        parts = [p.strip() for p in devices.split(",") if p.strip()]
    elif isinstance(devices, int) and not isinstance(devices, bool):
        raise ConfigError("devices", devices, "'auto', 'cpu' or a list of device ids such as [0, 1] or '0,1'",
                          hint="a number would be ambiguous (a count or an id?); write devices='0,1,2,3'")
    elif isinstance(devices, (list, tuple)):
        parts = [str(p).strip() for p in devices]
    else:
        raise ConfigError("devices", devices, "'auto', 'cpu' or a list of device ids such as [0, 1] or '0,1'")
    if not parts or any(not p for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError("devices", devices, "distinct device ids, e.g. [0, 1, 2, 3]")
    return parts


def plan_slots(workers: int | None, devices: Any = "auto", devices_per_trial: int = 1,
               cpu_count: int | None = None, threads: int | None = None) -> list[DeviceSlot]:
    """Split the devices into slots of ``devices_per_trial``; without GPUs, split the CPU threads among ``workers``.

    Without GPUs, ``devices_per_trial > 1`` runs each trial as that many DDP processes on the CPU
    (gloo), the threads split among all of them.

    ``workers=None`` means one worker per slot (GPUs), or one on a CPU-only machine.

    Raises:
        ConfigError: more workers than slots, a device list that does not divide into slots.

    Example:
        >>> [s.devices for s in plan_slots(None, devices=[0, 1, 2, 3], devices_per_trial=2)]
        [('0', '1'), ('2', '3')]
        >>> [s.threads for s in plan_slots(2, devices="cpu", cpu_count=8)]
        [4, 4]
        >>> [(s.processes, s.threads) for s in plan_slots(1, devices="cpu", devices_per_trial=2, cpu_count=8)]
        [(2, 4)]
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError("workers", workers, "a positive number of trial processes running at once")
    if isinstance(devices_per_trial, bool) or not isinstance(devices_per_trial, int) or devices_per_trial < 1:
        raise ConfigError("devices_per_trial", devices_per_trial, "a positive integer")
    ids = _parse_devices(devices)
    if ids:
        if len(ids) % devices_per_trial:
            raise ConfigError("devices_per_trial", devices_per_trial,
                              f"a divisor of the {len(ids)} devices {','.join(ids)}",
                              hint="each trial gets its own devices_per_trial devices; leftovers would sit idle")
        n_slots = len(ids) // devices_per_trial
        if workers is not None and workers > n_slots:
            raise ConfigError("workers", workers, f"at most {n_slots} worker(s): {len(ids)} device(s) in slots of "
                              f"{devices_per_trial}", hint="no two running trials share a device")
        n = workers or n_slots
        return [DeviceSlot(i, tuple(ids[i * devices_per_trial:(i + 1) * devices_per_trial])) for i in range(n)]
    n = workers or 1
    cpus = cpu_count or os.cpu_count() or 1
    share = threads if threads is not None else max(1, cpus // (n * devices_per_trial))
    return [DeviceSlot(i, (), threads=share, processes=devices_per_trial) for i in range(n)]
