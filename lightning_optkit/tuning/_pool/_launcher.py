"""The launcher: one fresh process per trial, each pinned to its device slot, sharing one study.

Optuna's own ``n_jobs`` runs trials in threads of one process: GPU memory and global state leak
from one trial into the next, and every trial sees every GPU. Here the study lives in a shared
storage (a journal file on one machine, PostgreSQL/MySQL across machines) and the launcher keeps a
pool of *slots* busy: each slot is a set of GPUs (``CUDA_VISIBLE_DEVICES``) or, on a CPU-only
machine, a share of the CPU threads (``OMP_NUM_THREADS``). For every free slot it starts
``python -m lightning_optkit.tuning._pool._worker``, which asks the study for one trial, trains it and
tells the result, then exits -- so all its memory is released.

The budget: every worker *claims* its trial (:func:`~lightning_optkit.tuning._budget.claim_trial`)
under a lock shared by every process of the study, so ``n_trials`` counts the study's finished and
running trials on every machine and is never exceeded; a launcher ends once the study holds
``n_trials`` finished trials (waiting, if need be, for the trials other machines still run), or at
its ``timeout``, or at the study's ``deadline`` (``--study-timeout``).

Crash safety: a trial process that dies (SIGKILL, out-of-memory killer, segfault) cannot tell its
trial; the launcher notices the exit, marks the trial FAIL (it is never left RUNNING) and enqueues a
new trial with the same parameters, up to ``max_retries`` times. A launcher that dies itself leaves
RUNNING trials behind: on an RDB storage the other machines fail them once their heartbeat is stale
(Optuna's ``RetryFailedTrialCallback`` retries them); on a journal file the next launcher on the
same machine fails the trials whose process is gone (each trial records its host, pid and the
process's start time), when it starts and every few seconds while it runs. A study never ends with a
RUNNING trial that nobody runs: a launcher that finds the budget spent while such trials hold places
waits until they are failed (at most the heartbeat's grace period) and runs their retries; when the
study already holds ``n_trials`` finished trials it fails them without a retry, and it names any
trial still running elsewhere and why it is left alone.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .._budget import FINISHED, describe_running, held_trials, process_alive, stale_trial_numbers
from .._optuna_private import (
    fail_stale_trials,
    heartbeat_enabled,
    reload_trial,
    set_trial_failed,
    set_trial_user_attr,
    storage_of,
)
from ._fork_server import ForkServer
from ._protocol import (
    ATTEMPT_KEY,
    ENV_FORK_SERVER,
    ENV_STORAGE_URL,
    ENV_TOKEN,
    EXIT_NO_TRIAL,
    EXIT_TRIAL_ERROR,
    FAIL_REASON_KEY,
    ORPHAN_AFTER_S,
    RETRY_OF_KEY,
    WORKER_KEY,
    WORKER_MODULE,
)
from ._slots import DeviceSlot

__all__ = ["Launcher", "TrialProcessError", "fail_and_retry"]


class TrialProcessError(RuntimeError):
    """A trial raised in its worker process (its message and log file are in the text); the study stopped."""


def _attempt(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get(ATTEMPT_KEY, 1))


def fail_and_retry(study: optuna.Study, trial: FrozenTrial, max_retries: int, reason: str) -> int | None:
    """Mark a RUNNING trial FAIL and enqueue its parameters again (while ``max_retries`` allows).

    Returns the attempt number of the retry, or ``None`` when none was enqueued. Safe to call for a
    trial that finished meanwhile (then it does nothing).
    """
    try:  # the reason first: a journal refuses (and replays the refusal of) any write to a finished trial
        set_trial_user_attr(study, trial, FAIL_REASON_KEY, reason)
        changed = set_trial_failed(study, trial)
    except optuna.exceptions.UpdateFinishedTrialError:  # it finished meanwhile
        return None
    if not changed:
        return None
    attempt = _attempt(trial)
    if attempt > max_retries:
        return None
    origin = trial.user_attrs.get(RETRY_OF_KEY, trial.number)
    study.enqueue_trial(dict(trial.params), user_attrs={ATTEMPT_KEY: attempt + 1, RETRY_OF_KEY: origin},
                        skip_if_exists=False)
    return attempt + 1


@dataclass
class _Child:
    token: str
    slot: DeviceSlot
    proc: Any  # subprocess.Popen, or a ForkedChild (the same pid/poll/wait)
    log: Path
    started: float
    seen: bool = False


@dataclass
class Launcher:
    """Keep every slot busy with one-trial worker processes until the study has ``n_trials`` or ``timeout``.

    The study must already exist in ``storage_url`` with its ``optkit.plan`` user attribute (what
    :func:`~lightning_optkit.tuning.tune` writes); :func:`tune` with ``workers=`` builds this for you.

    Example:
        (Lines marked ``+SKIP`` are not run as doctests: starts worker processes; tests/test_tuning_scale*.py run it for real.)
        >>> launcher = Launcher(study, "journal:optkit_tune/optuna.journal.log",
        ...                     out_dir=Path("optkit_tune/digits"), slots=plan_slots(2, "cpu"),
        ...                     n_trials=20)          # doctest: +SKIP
        >>> launcher.run()                            # doctest: +SKIP
    """

    study: optuna.Study
    storage_url: str
    out_dir: Path
    slots: Sequence[DeviceSlot]
    n_trials: int | None = None
    timeout: float | None = None
    deadline: float | None = None
    max_retries: int = 2
    sampler: Any = None
    pruner: Any = None
    heartbeat_interval: int | None = None
    grace_period: int | None = None
    gpu: bool = False
    tensorboard: bool = True
    catch: Sequence[type[BaseException]] = ()
    verbose: bool = False
    on_trial_end: Callable[[optuna.Study, FrozenTrial], None] | None = None
    poll: float = 0.25
    fork_server: bool = field(default_factory=lambda: os.environ.get(ENV_FORK_SERVER, "1") != "0")
    children: list[_Child] = field(default_factory=list)
    crashes: int = 0
    ran: int = 0  # trials this launcher's processes finished (COMPLETE or PRUNED)
    keep_server: bool = False  # run() leaves the fork server up (for re-evaluation); close() stops it

    def __post_init__(self) -> None:
        self.host = socket.gethostname()
        self._id = uuid.uuid4().hex[:12]
        self._dir = self.out_dir / "workers"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._objects = self._dir / f"launcher_{self._id}.pkl"
        with open(self._objects, "wb") as f:
            pickle.dump({"sampler": self.sampler, "pruner": self.pruner}, f)
        self._error: str | None = None
        self._deadline = None if self.timeout is None else time.monotonic() + self.timeout
        self._last_sweep = 0.0
        self._server: Any = None
        self._idle_until = 0.0  # after a worker found no place in the budget: wait before starting another
        self._settle_since: float | None = None

    # -- the pool ----------------------------------------------------------------------------------------
    def run(self) -> None:
        """Run until done; a trial that raised (outside ``catch``) stops new trials and raises at the end."""
        self.recover()
        try:
            while True:
                self._reap()
                self._sweep()
                stopping = self._error is not None or self._out_of_time()
                if not stopping and time.monotonic() >= self._idle_until:
                    self._fill()
                if not self.children and (stopping or self._done()):
                    break
                time.sleep(self.poll)
        except BaseException:
            self._stop_children()
            raise
        finally:
            if not self.keep_server:
                self.close()
        if self._error is not None:
            raise TrialProcessError(self._error)

    def close(self) -> None:
        """Stop the fork server and remove the pickled sampler/pruner (safe to call twice)."""
        with contextlib.suppress(OSError):
            self._objects.unlink()
        if self._server is not None:
            self._server.close()
            self._server = None

    def reevaluate(self, jobs: Sequence[Any]) -> Iterator[tuple[Any, dict[str, Any] | None]]:
        """Run re-evaluation jobs (:class:`~lightning_optkit.tuning._reeval.Job`) on the slots, one process each.

        Yields ``(job, result)`` as each process ends: its result record, or ``None`` when it died (the
        run is left for a rerun of the command). Ctrl-C stops the processes.
        """
        queue = list(jobs)
        running: dict[str, tuple[Any, Path]] = {}
        try:
            while queue or self.children:
                busy = {c.slot.index for c in self.children}
                for slot in self.slots:
                    if queue and slot.index not in busy:
                        job = queue.pop(0)
                        result = self._dir / f"reeval_{uuid.uuid4().hex[:12]}.json"
                        token = self._spawn(slot, ["--reeval-trial", str(job.trial.number), "--reeval-seed",
                                                   str(job.seed), "--result", str(result)])
                        running[token] = (job, result)
                        busy.add(slot.index)
                for child in [c for c in self.children if c.proc.poll() is not None]:
                    self.children.remove(child)
                    job, result = running.pop(child.token)
                    yield job, self._reeval_result(child, result)
                time.sleep(self.poll)
        except BaseException:
            self._stop_children()
            raise

    def _reeval_result(self, child: _Child, path: Path) -> dict[str, Any] | None:
        """A re-evaluation process's result file (``None``, with a message, when its process died)."""
        import json

        rc = child.proc.poll()
        if not path.exists():
            tail = child.log.read_text(errors="replace").strip().splitlines()[-1:] if child.log.exists() else []
            print(f"optkit tune: a re-evaluation process died (exit code {rc}): {' '.join(tail)} (log: {child.log})",
                  file=sys.stderr, flush=True)
            return None
        result = json.loads(path.read_text())
        for p in (path, child.log):
            with contextlib.suppress(OSError):
                p.unlink()
        return result

    def _out_of_time(self) -> bool:
        """This launcher's ``timeout``, or the study's ``deadline``, has passed: start no more trials."""
        if self._deadline is not None and time.monotonic() > self._deadline:
            return True
        return self.deadline is not None and time.time() >= self.deadline

    def _fill(self) -> None:
        """Start a worker on each free slot while the budget has places left."""
        busy = {c.slot.index for c in self.children}
        need = self._needed()
        for slot in self.slots:
            if need <= 0:
                break
            if slot.index not in busy:
                self._spawn(slot)
                busy.add(slot.index)
                need -= 1

    def _finished(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=FINISHED))

    def _needed(self) -> int:
        """Places left in the budget: the target less the finished and running trials (any machine) and ours not yet
        running. Only an estimate (other machines' workers may be starting too): each worker claims its place."""
        if self.n_trials is None:
            return len(self.slots)
        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                               TrialState.RUNNING))
        running_tokens = {(t.user_attrs.get(WORKER_KEY) or {}).get("token") for t in trials
                          if t.state == TrialState.RUNNING}
        not_yet = sum(1 for c in self.children if c.token not in running_tokens and not c.seen)
        return self.n_trials - len(trials) - not_yet

    def _done(self) -> bool:
        """With no process of its own left: has the study its ``n_trials`` finished trials, none left to settle?"""
        if self.n_trials is None:
            return False
        finished, _running = held_trials(self.study)
        if finished < self.n_trials:  # places are held by trials in flight elsewhere (or dead): wait for them
            return False
        return self._settle()

    def _spawn(self, slot: DeviceSlot, extra: Sequence[str] = ()) -> str:
        """Start a worker on ``slot`` (``extra``: more arguments, e.g. a re-evaluation run); returns its token."""
        token = f"{self._id}-{uuid.uuid4().hex[:8]}"
        env = dict(os.environ)
        env.update(slot.env())
        env[ENV_STORAGE_URL] = self.storage_url  # not on the command line: `ps` shows arguments to everyone
        env[ENV_TOKEN] = token
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([os.getcwd(), *paths]))
        cmd = [sys.executable, "-m", WORKER_MODULE, "--study", self.study.study_name,
               "--out", str(self.out_dir), "--objects", str(self._objects), "--slot", str(slot.index)]
        if slot.threads is not None:
            cmd += ["--threads", str(slot.threads)]
        if self.n_trials is not None:
            cmd += ["--trials", str(self.n_trials)]
        if self.deadline is not None:
            cmd += ["--deadline", repr(self.deadline)]
        if (self.gpu and slot.devices) or slot.size > 1:
            cmd += ["--devices", str(slot.size)]
        if self.heartbeat_interval:
            cmd += ["--heartbeat", str(self.heartbeat_interval), "--grace", str(self.grace_period or
                                                                                 2 * self.heartbeat_interval),
                    "--max-retries", str(self.max_retries)]
        if not self.tensorboard:
            cmd.append("--no-tensorboard")
        if self.verbose:
            cmd.append("--verbose")
        for exc in self.catch:
            cmd += ["--catch", f"{exc.__module__}.{exc.__qualname__}"]
        cmd += list(extra)
        log = self._dir / f"{token}.log"
        proc: Any = None
        if self.fork_server and slot.size == 1:  # DDP re-runs the command line: several devices need one
            if self._server is None:
                self._server = ForkServer()
            proc = self._server.start(cmd[3:], env, log)
            if proc is None:  # the fork server could not start: plain processes from now on
                self.fork_server = False
        if proc is None:
            with open(log, "wb") as f:
                proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        self.children.append(_Child(token, slot, proc, log, time.monotonic()))
        return token

    def _trial_of(self, token: str) -> FrozenTrial | None:
        for t in self.study.get_trials(deepcopy=False):
            if (t.user_attrs.get(WORKER_KEY) or {}).get("token") == token:
                return t
        return None

    def _reap(self) -> None:
        for child in list(self.children):
            rc = child.proc.poll()
            if rc is None:
                if not child.seen and self._trial_of(child.token) is not None:
                    child.seen = True
                continue
            self.children.remove(child)
            trial = self._trial_of(child.token)
            if rc == EXIT_NO_TRIAL and trial is None:  # the budget was spent meanwhile (another machine's claim)
                with contextlib.suppress(OSError):
                    child.log.unlink()
                self._idle_until = time.monotonic() + 1.0
                continue
            if trial is not None and trial.state == TrialState.RUNNING:
                how = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
                self.crashes += 1
                retry = fail_and_retry(self.study, trial, self.max_retries,
                                       f"its process (pid {child.proc.pid}) died: {how}")
                note = f"retried as attempt {retry}" if retry else "not retried (max_retries reached)"
                print(f"optkit tune: trial {trial.number}'s process died ({how}); FAIL, {note} "
                      f"(log: {child.log})", file=sys.stderr, flush=True)
                trial = reload_trial(self.study, trial)
            elif rc == EXIT_TRIAL_ERROR:
                tail = child.log.read_text(errors="replace").strip().splitlines()[-1:] if child.log.exists() else []
                number = trial.number if trial is not None else "?"
                self._error = self._error or (f"trial {number} failed: {tail[0] if tail else 'see ' + str(child.log)}"
                                              f" (full log: {child.log})")
            elif rc != 0 and trial is None:
                self.crashes += 1
                tail = child.log.read_text(errors="replace").strip().splitlines()[-3:] if child.log.exists() else []
                print(f"optkit tune: a worker exited with code {rc} before its trial started: "
                      + " | ".join(tail), file=sys.stderr, flush=True)
            if rc == 0:
                self.crashes = 0
                with contextlib.suppress(OSError):
                    child.log.unlink()
            if self.crashes > 2 * len(self.slots) * (self.max_retries + 1) + 2:
                self._error = self._error or (f"trial processes keep dying ({self.crashes} in a row); see the logs in "
                                              f"{self._dir}")
            if trial is not None and trial.state in FINISHED:
                self.ran += 1
            if trial is not None and self.on_trial_end is not None and trial.state.is_finished():
                self.on_trial_end(self.study, trial)

    def _sweep(self) -> None:
        """Every few seconds: trials whose process is gone -- stale heartbeats (RDB), dead processes of this machine
        (storages without heartbeats: journal, SQLite), orphans without a worker record -- are failed and retried."""
        now = time.monotonic()
        if now - self._last_sweep < 5.0:
            return
        self._last_sweep = now
        if heartbeat_enabled(storage_of(self.study)):
            if self.n_trials is None or self._finished() < self.n_trials:  # else _settle fails them, not retried
                fail_stale_trials(self.study)  # the storage's retry callback enqueues the retries
            return
        self.recover(quiet=True)
        cutoff = datetime.now() - timedelta(seconds=ORPHAN_AFTER_S)
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if WORKER_KEY not in t.user_attrs and t.datetime_start is not None and t.datetime_start < cutoff:
                fail_and_retry(self.study, t, self.max_retries, "its process died before it registered")

    def recover(self, quiet: bool = False) -> int:
        """Fail (and retry) the RUNNING trials of this machine whose process is gone; returns how many."""
        n = 0
        ours = {c.token for c in self.children}  # our own children's deaths are the reaper's (it knows the exit code)
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            info = t.user_attrs.get(WORKER_KEY) or {}
            if info.get("token") not in ours and process_alive(info) is False and fail_and_retry(
                    self.study, t, self.max_retries, f"its process (pid {info.get('pid')}) was gone"):
                n += 1
        if n and not quiet:
            print(f"optkit tune: {n} trial(s) left RUNNING by a dead process: FAIL, retried", file=sys.stderr,
                  flush=True)
        elif n:
            print(f"optkit tune: {n} trial(s) of a dead process on this machine: FAIL, retried", file=sys.stderr,
                  flush=True)
        return n

    def _settle(self) -> bool:
        """The study holds ``n_trials`` finished trials: fail the RUNNING trials nobody runs (no retry: the budget is
        spent). Waits up to the heartbeat's grace period for a dead machine's trials to go stale; then names the
        trials still running elsewhere, and why they are left alone. True when there is nothing left to wait for."""
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return True
        stale = stale_trial_numbers(self.study)
        waiting = []
        for t in running:
            alive = process_alive(t.user_attrs.get(WORKER_KEY) or {})
            if alive is False or (stale is not None and t.number in stale):
                fail_and_retry(self.study, t, -1, "its process is gone and the study's budget is spent: not retried")
                print(f"optkit tune: {describe_running(t, WORKER_KEY)} was RUNNING with its process gone: FAIL "
                      f"(the study holds {self.n_trials} finished trials: not retried)", file=sys.stderr, flush=True)
            else:
                waiting.append((t, alive))
        if not waiting:
            return True
        grace = (self.grace_period or 2 * self.heartbeat_interval) + 1 if self.heartbeat_interval else 0
        self._settle_since = self._settle_since or time.monotonic()
        if stale is not None and time.monotonic() - self._settle_since < grace:
            return False  # a dead machine's heartbeat goes stale within the grace period
        for t, alive in waiting:
            why = ("its process is alive on this machine" if alive else
                   "its heartbeat is fresh: its process is alive on that machine" if stale is not None else
                   "this storage has no heartbeat, so a process on another machine cannot be checked")
            print(f"optkit tune: {describe_running(t, WORKER_KEY)} is still RUNNING beyond the budget: {why}; it is "
                  "left to the process that runs it", file=sys.stderr, flush=True)
        return True

    def _stop_children(self) -> None:
        """On Ctrl-C or an error: stop every trial process and fail its trial (no retry: the user stopped it)."""
        for child in self.children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for child in self.children:
            try:
                child.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
            trial = self._trial_of(child.token)
            if trial is not None and trial.state == TrialState.RUNNING:
                fail_and_retry(self.study, trial, -1, "stopped by the launcher")
        self.children.clear()
