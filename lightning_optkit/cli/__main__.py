"""``python -m lightning_optkit.cli``: the ``optkit`` command."""

from . import main

if __name__ == "__main__":
    raise SystemExit(main())
