"""The process pool of ``tune(workers=...)``: one fresh process per trial, pinned to its device slot.

- :mod:`._protocol`: the trial attributes, environment variables and exit codes the pieces share;
- :mod:`._slots`: :class:`DeviceSlot` and :func:`plan_slots` (which GPUs or CPU threads a trial gets);
- :mod:`._launcher`: the :class:`Launcher` that keeps every slot busy, fails and retries dead trials;
- :mod:`._worker`: one trial in a fresh process (``python -m lightning_optkit.tuning._pool._worker``);
- :mod:`._fork_server`: a server that imported torch once and forks the worker processes.

Import the modules themselves; this package's face is :mod:`lightning_optkit.tuning`.
"""
