"""How long the ``optkit`` command takes to start: ``--version``, ``--help`` and ``tune --help``.

Each command runs in a fresh Python process (the way a user types it), ``--repeats`` times,
interleaved with ``python -c "import lightning"`` as the anchor: the cost of the training stack
that ``--version`` and ``--help`` no longer import. The table shows the median wall time of each
and its ratio to the anchor measured in the same run (these machines are shared and noisy: trust
the ratio more than an absolute time). ``optkit tune --help`` builds the tune parser, which lives
with the tuning code, so it pays for the stack; the other two must stay under one second.

Run: ``python benchmarks/cli_startup.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def _optkit(*args: str) -> list[str]:
    """The installed ``optkit`` console script, as a user runs it (``python -m lightning_optkit.cli`` without it)."""
    script = shutil.which("optkit")
    return [script, *args] if script else [sys.executable, "-m", "lightning_optkit.cli", *args]


CASES: list[tuple[str, list[str]]] = [
    ("optkit --version", _optkit("--version")),
    ("optkit --help", _optkit("--help")),
    ("optkit tune --help", _optkit("tune", "--help")),
    ('python -c "import lightning" (anchor)', [sys.executable, "-c", "import lightning"]),
    ('python -c "pass" (interpreter)', [sys.executable, "-c", "pass"]),
]
ANCHOR = 3
LIMIT_S = 1.0


def _time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=300)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return elapsed


def measure(repeats: int) -> list[float]:
    """Median wall seconds of every case, the cases interleaved round by round (one warm-up round first)."""
    for _label, argv in CASES:  # warm the file cache: the first start of a process reads the files from disk
        _time_once(argv)
    times: list[list[float]] = [[] for _ in CASES]
    for _ in range(repeats):
        for i, (_label, argv) in enumerate(CASES):
            times[i].append(_time_once(argv))
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per command (default 5)")
    args = parser.parse_args(argv)
    medians = measure(args.repeats)
    width = max(len(label) for label, _ in CASES)
    print(f"{'command':<{width}}  {'median s':>8}  {'/ anchor':>8}")
    for (label, _argv), median in zip(CASES, medians):
        print(f"{label:<{width}}  {median:8.3f}  {median / medians[ANCHOR]:8.2f}")
    slow = [label for (label, _a), m in zip(CASES[:2], medians[:2]) if m >= LIMIT_S]
    print(f"--version and --help under {LIMIT_S:g} s: {'no: ' + ', '.join(slow) if slow else 'yes'} "
          f"(median of {args.repeats} fresh processes each)")
    return 1 if slow else 0


if __name__ == "__main__":
    raise SystemExit(main())
