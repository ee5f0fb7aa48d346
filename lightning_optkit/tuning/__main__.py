"""``python -m lightning_optkit.tuning ...``: the same as ``optkit tune ...``."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
