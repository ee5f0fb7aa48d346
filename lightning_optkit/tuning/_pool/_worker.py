"""One trial in a fresh process: ``python -m lightning_optkit.tuning._pool._worker --study NAME --out DIR ...``.

Started by the :class:`~lightning_optkit.tuning._pool._launcher.Launcher`, one per trial: it opens the
shared storage (its URL comes in the ``OPTKIT_STORAGE_URL`` environment variable, never on the
command line), rebuilds the plan from the study's ``optkit.plan`` attribute, asks for a trial,
records who runs it (``optkit.worker``: token, host, pid, slot, ``CUDA_VISIBLE_DEVICES``), trains
it and tells the result. On an RDB storage with heartbeats, it first fails stale trials of dead
machines and beats while it trains. With ``--devices N > 1`` the trial runs with DDP on its N
devices -- its GPUs, or N processes on a CPU-only slot (rank 0 owns the trial, as in
:func:`~lightning_optkit.tuning.tune`; Lightning re-runs this command for the other ranks).

The trial is *claimed* (:func:`~lightning_optkit.tuning._budget.claim_trial`): with ``--trials N``
the worker asks for one only while the study holds fewer than N finished-or-running trials on every
machine, and with ``--deadline`` only before that time (``--study-timeout``).

Exit codes: 0 the trial was told (COMPLETE, PRUNED, or FAIL for an exception in ``--catch``);
3 the trial raised (told FAIL; the launcher stops the study); 4 the budget had no place left (no
trial was asked for); anything else: the process died.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._protocol import ENV_STORAGE_URL, ENV_TOKEN, EXIT_NO_TRIAL, EXIT_TRIAL_ERROR, WORKER_KEY, WORKER_MODULE

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {WORKER_MODULE}", description=__doc__.splitlines()[0])
    p.add_argument("--study", required=True)
    p.add_argument("--out", required=True, help="the study's output folder")
    p.add_argument("--objects", help="pickle with the sampler and pruner")
    p.add_argument("--slot", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--devices", type=int, help="devices of this trial: its GPUs (CUDA_VISIBLE_DEVICES), or CPU processes")
    p.add_argument("--heartbeat", type=int)
    p.add_argument("--grace", type=int)
    p.add_argument("--max-retries", type=int)
    p.add_argument("--trials", type=int, help="the study's budget: finished-or-running trials on every machine")
    p.add_argument("--deadline", type=float, help="start no trial after this time (seconds since the epoch)")
    p.add_argument("--catch", action="append", default=[])
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--reeval-trial", type=int, help="re-evaluation: train this finished trial's config again")
    p.add_argument("--reeval-seed", type=int, help="re-evaluation: with this seed")
    p.add_argument("--result", help="re-evaluation: write the run's result record (JSON) here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one trial; returns the exit code (see the module docstring)."""
    args = _parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import optuna

    from .._budget import Budget, claim_trial, process_record
    from .._dist import DistributedContext, Stop
    from .._runner import TrialPlan, TrialRunner, quiet_lightning
    from .._storage import redact_url, resolve_storage

    url = os.environ.get(ENV_STORAGE_URL)
    if not url:
        print(f"optkit worker: {ENV_STORAGE_URL} is not set", file=sys.stderr)
        return 2
    sampler = pruner = None
    if args.objects and Path(args.objects).exists():
        with open(args.objects, "rb") as f:
            objects = pickle.load(f)
        sampler, pruner = objects.get("sampler"), objects.get("pruner")
    if sampler is not None and hasattr(sampler, "reseed_rng"):
        sampler.reseed_rng()  # every process starts from the same pickled state: draw fresh random numbers
    store, display = resolve_storage(url, args.out, heartbeat_interval=args.heartbeat, grace_period=args.grace,
                                     max_retry=args.max_retries)
    with quiet_lightning(args.verbose):
        study = optuna.load_study(study_name=args.study, storage=store, sampler=sampler, pruner=pruner)
    desc = study.user_attrs.get("optkit.plan")
    if desc is None:
        print(f"optkit worker: study {args.study!r} in {redact_url(display)} has no optkit.plan", file=sys.stderr)
        return 2
    trainer_kwargs: dict = {}
    if args.devices:  # the slot decides; with accelerator="cpu" a slot's devices are CPU processes
        trainer_kwargs["devices"] = args.devices
        if args.devices > 1 and not desc.get("trainer", {}).get("strategy"):
            trainer_kwargs["strategy"] = "ddp"
    plan = TrialPlan.from_description(desc, args.out, trainer_kwargs=trainer_kwargs,
                                      tensorboard=not args.no_tensorboard, threads=args.threads)
    with quiet_lightning(args.verbose):
        dist = DistributedContext.from_trainer_kwargs(plan.trainer_kwargs)
        rank = dist.expected_rank()
        dist.start()
    runner = TrialRunner(plan, dist)
    if rank != 0:  # a DDP rank of a multi-device trial: train what rank 0 sends
        with quiet_lightning(args.verbose):
            runner.follow()
        return 0

    if args.reeval_trial is not None:
        try:
            return _reevaluate(study, runner, args)
        finally:
            dist.broadcast(Stop(study_name=args.study))

    from .._optuna_private import fail_stale_trials, heartbeat_enabled, set_trial_user_attr, storage_of

    if heartbeat_enabled(storage_of(study)):
        fail_stale_trials(study)

    def record(trial: optuna.trial.Trial) -> None:  # who runs the trial: its liveness record (see _budget.py)
        set_trial_user_attr(study, trial, WORKER_KEY, process_record(
            token=os.environ.get(ENV_TOKEN), slot=args.slot, devices=os.environ.get("CUDA_VISIBLE_DEVICES")))

    try:
        with quiet_lightning(args.verbose):
            trial = claim_trial(study, Budget(args.trials, args.deadline), record=record)
        if trial is None:
            return EXIT_NO_TRIAL
        with quiet_lightning(args.verbose):
            return _run(study, trial, runner, args.catch)
    finally:
        dist.broadcast(Stop(study_name=args.study))


def _reevaluate(study: Any, runner: Any, args: argparse.Namespace) -> int:
    """Train a finished trial's config with another seed (no trial is asked for); write the result record."""
    import json

    from ..._internal.io import atomic_write_bytes
    from .._reeval import Job, train_job
    from .._runner import quiet_lightning

    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == args.reeval_trial), None)
    if trial is None or args.reeval_seed is None or not args.result:
        print(f"optkit worker: no trial {args.reeval_trial} to re-evaluate (or no --reeval-seed/--result)",
              file=sys.stderr)
        return 2
    with quiet_lightning(args.verbose):
        result = train_job(runner, Job(trial, args.reeval_seed))
    atomic_write_bytes(Path(args.result), json.dumps(result).encode())
    return 0


def _run(study: Any, trial: Any, runner: Any, catch: Sequence[str]) -> int:
    """Train the claimed trial (beating while it trains) and tell its result; returns the exit code.

    Ctrl-C or ``SystemExit`` leaves the trial RUNNING: the launcher sees the process die, fails it and retries it.
    """
    import optuna

    from .._optuna_private import heartbeat_thread
    from .._runner import run_and_tell

    def objective(t: Any) -> Any:
        with heartbeat_thread(study, t):
            return runner(t)

    try:
        _frozen, exc = run_and_tell(study, trial, objective, quiet_tell=True, fail_interrupted=False)
    except optuna.exceptions.UpdateFinishedTrialError:
        # another process failed this trial meanwhile (its heartbeat looked stale): a retry is queued
        print(f"optkit worker: trial {trial.number} was failed by another process; its result is dropped",
              file=sys.stderr, flush=True)
        return 0
    if exc is None:
        return 0
    caught = any(f"{cls.__module__}.{cls.__qualname__}" in catch for cls in type(exc).__mro__)
    traceback.print_exception(type(exc), exc, exc.__traceback__)
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    return 0 if caught else EXIT_TRIAL_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
