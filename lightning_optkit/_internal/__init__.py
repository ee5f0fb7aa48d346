"""The internal toolbox every layer of lightning_optkit may use; it imports no component (the bottom layer).

The package is private (leading underscore), so its modules carry plain names:

* ``errors``: :class:`ConfigError` (re-exported publicly by :mod:`lightning_optkit.config`), did-you-mean.
* ``checks``: number, integer and choice checkers that raise ``ConfigError`` naming the key.
* ``io``: durable file writes (temporary file, fsync, rename, fsync the folder), JSON included.
* ``rng``: capture and restore of the random number generators (torch).
* ``ranks``: reductions over DDP ranks (sums and means on the device, monitored metrics) (torch).
* ``imports``: dotted-path imports, ``class_path`` objects, signature defaults.
* ``cli_args``: argparse types and ``UsageError`` shared by the ``optkit`` subcommands.
* ``lazy``: PEP 562 lazy public names for package faces.
* ``optimizers``: unwrap Lightning's optimizer, parameters in group order, LR scaling (torch).
* ``tensors``: tensor checks shared by callbacks and pruning (torch).
* ``text``: short number formatting for messages and tables.
* ``trainer``: what callbacks read off a Lightning trainer (logging step, cadence, log folder, loggers).
* ``training``: the training length in optimizer steps, accumulation schedules included.

This ``__init__`` imports nothing, so ``import lightning_optkit.config`` stays free of torch.
"""
