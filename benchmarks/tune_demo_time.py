"""Wall time of the main job, ``optkit tune --example digits``, and trials per minute.

Runs the command exactly as a user would (a fresh process, the embedded SQLite storage, the default
30 trials of 10 epochs with Hyperband pruning) in a temporary folder, reads the study back and
prints a table: wall time, CPU time of the process, trials (complete / pruned), trials per minute,
epochs trained, the best validation accuracy. The same study with ``--pruner none`` runs in the
same invocation, interleaved with it (``--repeats`` rounds, the fastest of each kept), so the
ratios -- what Hyperband saves -- are measured under the same load. These machines are shared and
noisy: quote the ratios (the epochs ratio is exact, the study is seeded), and a wall time only with
the load average printed beside it. The target is at least 20 trials within 300 s on 2 CPU cores.

Run: ``python benchmarks/tune_demo_time.py`` (``--no-compare`` skips the unpruned study;
``--repeats R``, ``--trials N`` and ``--epochs E`` change the runs).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_TRIALS = 20
TARGET_SECONDS = 300.0


def _command() -> list[str]:
    """``optkit tune`` when the console script has the subcommand, else ``python -m lightning_optkit.tuning``."""
    exe = shutil.which("optkit")
    if exe is not None:
        probe = subprocess.run([exe, "tune", "--help"], capture_output=True, text=True)
        if probe.returncode == 0 and "--example" in probe.stdout:
            return [exe, "tune"]
    return [sys.executable, "-m", "lightning_optkit.tuning"]


def _run(label: str, extra: list[str], args: argparse.Namespace) -> dict:
    import optuna

    out = Path(tempfile.mkdtemp(prefix="optkit_tune_bench_"))
    cmd = [*_command(), "--example", "digits", "--out", str(out), *extra]
    if args.trials:
        cmd += ["--trials", str(args.trials)]
    if args.epochs:
        cmd += ["--max-epochs", str(args.epochs)]
    load_before = os.getloadavg()[0]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit(f"{label}: exit status {proc.returncode}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{out / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    training = sum(t.user_attrs.get("optkit.run", {}).get("seconds", 0.0) for t in study.trials)
    epochs = sum(t.user_attrs.get("optkit.run", {}).get("epochs", 0) + 1 for t in study.trials)
    row = {
        "run": label, "wall": wall, "cpu": cpu, "trials": len(states), "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"), "best": study.best_value, "training": training, "epochs": epochs,
        "load": (load_before + os.getloadavg()[0]) / 2, "best_yaml": (out / "digits" / "best_config.yaml").is_file(),
    }
    shutil.rmtree(out, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-compare", action="store_true", help="skip the study without pruning")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the fastest of each is kept")
    parser.add_argument("--trials", type=int, default=None, help="trials (default: the command's, 30)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the example's, 10)")
    args = parser.parse_args()

    print(f"command: {' '.join(_command())} --example digits   (cpu cores: {os.cpu_count()})", flush=True)
    runs = [("hyperband (default)", [])] + ([] if args.no_compare else [("no pruning", ["--pruner", "none"])])
    best: dict[str, dict] = {}
    for _ in range(max(args.repeats, 1)):
        for label, extra in runs:
            row = _run(label, extra, args)
            if label not in best or row["wall"] < best[label]["wall"]:
                best[label] = {**row, "cpu": min(row["cpu"], best.get(label, row)["cpu"])}
            else:
                best[label]["cpu"] = min(best[label]["cpu"], row["cpu"])
    rows = [best[label] for label, _ in runs]

    header = f"{'run':<20} {'wall s':>7} {'cpu s':>6} {'trials':>6} {'complete':>8} {'pruned':>6} " \
             f"{'trials/min':>10} {'epochs':>6} {'best val_acc':>12} {'load':>5}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['run']:<20} {r['wall']:>7.1f} {r['cpu']:>6.1f} {r['trials']:>6} {r['complete']:>8} {r['pruned']:>6} "
              f"{r['trials'] / r['wall'] * 60:>10.1f} {r['epochs']:>6} {r['best']:>12.4f} {r['load']:>5.1f}")
    main_row = rows[0]
    print(f"\ntraining inside trials: {main_row['training']:.1f} s of the {main_row['wall']:.1f} s; the rest is start-up "
          "(imports), storage, Trainer set-up and plots")
    if len(rows) > 1:
        other = rows[1]
        print(f"hyperband / no pruning, same run: {main_row['epochs'] / other['epochs']:.2f}x the epochs, "
              f"{main_row['cpu'] / other['cpu']:.2f}x the CPU time, {main_row['wall'] / other['wall']:.2f}x the wall "
              f"time; best val_acc {main_row['best']:.4f} vs {other['best']:.4f}")
    ok = main_row["trials"] >= TARGET_TRIALS and main_row["wall"] <= TARGET_SECONDS and main_row["best_yaml"]
    print(f"target (>= {TARGET_TRIALS} trials in <= {TARGET_SECONDS:.0f} s, best config written): "
          f"{'met' if ok else 'NOT met'} ({main_row['trials']} trials in {main_row['wall']:.1f} s)")


if __name__ == "__main__":
    main()
