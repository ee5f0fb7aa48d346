"""Running a :class:`~lightning_optkit.tuning._request.TuneRequest`: as a DDP follower, in process, or with workers.

:func:`run_request` picks the mode. A DDP rank other than 0 follows rank 0's trials
(:func:`run_follower`); rank 0 opens the storage and the study before any other process starts
(:func:`open_session`), then either runs every trial in this process (:func:`run_in_process`) or
keeps a pool of one-trial processes busy (:func:`run_with_workers`, ``_pool/``). Both end the same
way: re-evaluation of the top configs, then the outputs and the summary, also after an error.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from ._budget import Budget, claim_trial, process_record
from ._dist import Stop
from ._optuna_private import optimize_loop, stop_requested
from ._pool._launcher import Launcher
from ._pool._protocol import WORKER_KEY
from ._reeval import in_process, reevaluate
from ._reports import ProgressReporter, write_outputs
from ._request import TuneRequest
from ._runner import TrialPlan, TrialRunner, quiet_lightning, run_and_tell
from ._storage import make_storage_folder, resolve_storage
from ._study import open_study, pick_study_name, study_deadline, study_seed

__all__ = ["Session", "open_session", "run_follower", "run_in_process", "run_request", "run_with_workers"]


@dataclass
class Session:
    """An open study and what the run needs about it (rank 0)."""

    request: TuneRequest
    study: optuna.Study
    plan: TrialPlan       # its seed is the study's, its out_dir the study's folder
    display: str          # the storage as printed (password redacted)
    finished: int         # trials finished before this run
    deadline: float | None  # the study's ``study_timeout``, in seconds since the epoch
    started: float        # time.perf_counter() when tune() was called

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def remaining(self) -> int | None:
        """Trials still missing from ``n_trials`` when the run started (``None``: no trial budget)."""
        n_trials = self.request.n_trials
        return None if n_trials is None else max(n_trials - self.finished, 0)

    def stop_at(self) -> float | None:
        """When this process stops starting trials and re-evaluation runs (seconds since the epoch): ``timeout``
        seconds from now, or the study's deadline if sooner."""
        timeout = self.request.timeout
        ends = [t for t in (None if timeout is None else time.time() + timeout, self.deadline) if t is not None]
        return min(ends) if ends else None

    def reporter(self) -> ProgressReporter:
        request = self.request
        return ProgressReporter(request.monitors, request.directions, total=self.remaining, timeout=request.timeout,
                                enabled=request.progress if request.progress is not None else True)

    def finish(self, *, failed: bool, ran: int | None) -> None:
        """Write the outputs and print the summary (see :func:`~lightning_optkit.tuning._reports.write_outputs`)."""
        request = self.request
        write_outputs(self.study, self.plan, self.display, time.perf_counter() - self.started, plots=request.plots,
                      summary=request.summary, failed=failed, ran=ran, n_trials=request.n_trials,
                      reeval=(request.reeval, request.reeval_seeds))

    def say_when_full(self) -> bool:
        """Print (and return True) when the study already holds its ``n_trials`` finished trials."""
        if self.remaining != 0:
            return False
        print(f"optkit tune: study {self.name!r} already has {self.finished} finished trials "
              f"(n_trials={self.request.n_trials})", flush=True)
        return True


def run_request(request: TuneRequest, started: float | None = None) -> optuna.Study:
    """Run the request in the mode it asks for; returns the study (also on a follower rank)."""
    started = time.perf_counter() if started is None else started
    if request.dist.expected_rank() != 0:
        return run_follower(request)
    session = open_session(request, started)
    if request.pool is not None:
        return run_with_workers(session)
    return run_in_process(session)


def run_follower(request: TuneRequest) -> optuna.Study:
    """A DDP rank other than 0: train every trial rank 0 sends, then load the study rank 0 ran."""
    dist = request.dist
    with quiet_lightning(request.verbose):
        dist.start()
    with _torch_threads(request.threads), quiet_lightning(request.verbose):
        stop = TrialRunner(request.plan(), dist).follow()
    if stop.study_name is None:
        raise RuntimeError(f"optkit tune: rank 0 stopped before the study started ({stop.error})")
    store, _ = resolve_storage(request.storage, request.out_dir)
    return optuna.load_study(study_name=stop.study_name, storage=store)


def open_session(request: TuneRequest, started: float) -> Session:
    """Open the storage and create or resume the study (rank 0, before any other process starts)."""
    plan = request.plan()
    pool = request.pool
    storage = pool.url if pool is not None else request.storage
    try:
        make_storage_folder(storage, request.out_dir)
        store, display = resolve_storage(storage, request.out_dir, **(pool.storage_kwargs if pool else {}))
        name = request.study_name or pick_study_name(store, request.source.name, request.resume)
        attrs = {"optkit.monitor": list(request.monitors), "optkit.plan": plan.describe()}
        with quiet_lightning(request.verbose):
            study, resumed = open_study(store, display, name, request.directions, request.sampler, request.pruner,
                                        resume=request.resume, attrs=attrs, first_trials=request.first_trials())
        plan.seed = study_seed(study, plan.seed, given=request.seed_given)
    except BaseException as exc:
        dist = request.dist
        if dist.enabled and "LOCAL_RANK" in os.environ:  # torchrun started the other ranks already: release them
            dist.start()
            dist.broadcast(Stop(error=f"{type(exc).__name__}: {exc}"))
        raise
    plan.out_dir = request.out_dir / name
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    if resumed and study.user_attrs.get("optkit.plan", {}).get("search") not in (None, request.space.to_dict()):
        warnings.warn(f"the search space differs from the one study {name!r} started with; the sampler treats "
                      "changed parameters as new ones", UserWarning, stacklevel=4)
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    return Session(request, study, plan, display, finished, study_deadline(study, request.study_timeout), started)


def run_in_process(session: Session) -> optuna.Study:
    """Run every trial in this process (with its DDP ranks, if any), then re-evaluate and write the outputs."""
    request, study = session.request, session.study
    dist = request.dist
    with quiet_lightning(request.verbose):
        dist.start()
    reporter = session.reporter()
    runner = TrialRunner(session.plan, dist)
    error: BaseException | None = None
    stop_at = session.stop_at()
    try:
        with _torch_threads(request.threads):
            if session.say_when_full():
                pass  # nothing to run: re-evaluation may still be missing runs
            elif Budget(None, session.deadline).expired():
                print(f"optkit tune: study {session.name!r} is past its study_timeout: no trial started", flush=True)
            else:
                with quiet_lightning(request.verbose):
                    run_claimed(study, runner, Budget(request.n_trials, stop_at), request.catch, reporter)
            reporter.close()
            with quiet_lightning(request.verbose):
                reevaluate(study, request.monitors[0], session.plan.seed, request.reeval_k, request.reeval_seeds,
                           in_process(runner), progress=request.progress is not False, deadline=stop_at)
    except BaseException as exc:
        error = exc
        raise
    finally:
        reporter.close()
        dist.broadcast(Stop(error=None if error is None else f"{type(error).__name__}: {error}", study_name=session.name))
        session.finish(failed=error is not None, ran=reporter.done - reporter.failed)
    return study


def run_claimed(study: optuna.Study, runner: TrialRunner, budget: Budget, catch: tuple[type[Exception], ...],
                reporter: ProgressReporter) -> None:
    """Run trials in this process, each claimed under the study's lock (as the pool's workers do), until the
    budget is full on every process that shares the study or its deadline (this process's ``timeout`` or the
    study's ``study_timeout``) passed."""
    # as in Study.optimize: a sampler may stop the study (GridSampler, its grid exhausted) when told a trial
    with optimize_loop(study):
        while not stop_requested(study):
            trial = claim_trial(study, budget,
                                record=lambda t: t.set_user_attr(WORKER_KEY, process_record(slot="in-process")))
            if trial is None:
                return
            frozen, exc = run_and_tell(study, trial, runner)
            if exc is not None:
                if not isinstance(exc, catch):
                    raise exc
                optuna.logging.get_logger("optuna").warning(f"Trial {trial.number} failed with {exc!r}")
            reporter(study, frozen)


def run_with_workers(session: Session) -> optuna.Study:
    """Run the trials in a pool of fresh processes (``_pool/``), then re-evaluate there and write the outputs."""
    request, study, pool = session.request, session.study, session.request.pool
    assert pool is not None
    reporter = session.reporter()
    where = ", ".join(f"[{','.join(s.devices)}]" if s.devices else
                      (f"{s.processes} DDP processes x " if s.processes > 1 else "") + f"{s.threads} thread(s)"
                      for s in pool.slots)
    if request.progress is not False:
        print(f"optkit tune: study {session.name!r} in {session.display}: {len(pool.slots)} worker process(es), "
              f"one per trial: {where}", flush=True)
    launcher = Launcher(study, pool.url, session.plan.out_dir, pool.slots, n_trials=request.n_trials,
                        timeout=request.timeout, deadline=session.deadline, max_retries=request.max_retries,
                        sampler=request.sampler, pruner=request.pruner, heartbeat_interval=pool.heartbeat_interval,
                        grace_period=request.grace_period, gpu=pool.gpu, tensorboard=request.tensorboard,
                        catch=request.catch, verbose=request.verbose, on_trial_end=reporter)
    error: BaseException | None = None
    stop_at = session.stop_at()
    try:
        session.say_when_full()
        launcher.keep_server = True  # re-evaluation runs in the same fork server
        launcher.run()  # with the budget spent: only fails the trials left RUNNING by dead processes
        reporter.close()
        reevaluate(study, request.monitors[0], session.plan.seed, request.reeval_k, request.reeval_seeds,
                   launcher.reevaluate, progress=request.progress is not False, deadline=stop_at)
    except BaseException as exc:
        error = exc
        raise
    finally:
        launcher.close()
        reporter.close()
        session.finish(failed=error is not None, ran=launcher.ran)
    return study


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside, the previous number restored after (``None``: unchanged)."""
    if threads is None:
        yield
        return
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
