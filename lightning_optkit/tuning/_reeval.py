"""Re-evaluation of the top configs: the best value of a search is the top of a noisy draw.

After the search, the top ``k`` configs (distinct parameters, COMPLETE, by their search value) are
trained again with ``r`` new seeds each, and the best config is the one with the best *mean* over
all of its runs -- the search run (the study's seed) and its ``r`` re-runs. Every config gets the
same new seeds (common random numbers: the comparison between configs is not blurred by the seeds),
derived from the study's seed and never equal to it (:func:`reeval_seeds`).

Where the runs are kept: in the study user attribute ``optkit.reeval``, never as trials::

    {"k": 3, "seeds": [1000, 2000],
     "runs": {"12": {"1000": {"value": 0.981, "steps": 560, "seconds": 1.2, "state": "COMPLETE"}, ...}}}

A re-evaluation run as a trial -- even tagged with a user attribute -- would be learnt by the sampler
(TPE, CMA-ES, GP read every COMPLETE trial of the study and have no filter), would join the pruner's
brackets, count against ``n_trials`` (the study-wide budget of ``_budget.py``) and could become
Optuna's ``best_trial``. A study attribute is seen by none of them. A finished trial's own user
attributes cannot be changed any more, hence one study attribute keyed by trial number, then seed.

With several processes on one study, one re-evaluates at a time: the whole phase runs under the
study's ``reeval:<name>`` lock (:func:`~lightning_optkit.tuning._budget.storage_lock`, a lock file of
its own, so that trial claims are not held up); each run is recorded as soon as it ends, so a second
process -- or a rerun of the command -- finds the finished runs and redoes none of them. A run whose
process died is not recorded (the next run of the command does it); a run that raised or diverged is
recorded as failed (value ``None``/NaN) and its config ranks last.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import ConfigError
from ._budget import storage_lock
from ._dist import Assignment
from ._optuna_private import storage_of
from ._trials import best_trial, trial_config

__all__ = [
    "DEFAULT_REEVAL",
    "DEFAULT_REEVAL_SEEDS",
    "REEVAL_KEY",
    "Job",
    "ReevalReport",
    "Standing",
    "best_by_reeval",
    "check_reeval",
    "reeval_report",
    "reeval_seeds",
    "reevaluate",
    "top_trials",
]

REEVAL_KEY = "optkit.reeval"
DEFAULT_REEVAL = 3        # configs re-evaluated
DEFAULT_REEVAL_SEEDS = 2  # new seeds per config
SEED_STRIDE = 1000        # re-run i (0-based) trains with seed + 1000 * (i + 1), modulo 2**32


def check_reeval(reeval: Any, reeval_seeds: Any) -> None:
    """``reeval`` and ``reeval_seeds`` are integers >= 0 (``0`` turns re-evaluation off)."""
    for key, value in (("reeval", reeval), ("reeval_seeds", reeval_seeds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(key, value, "an integer >= 0 (0 turns re-evaluation off)",
                              hint="reeval=K re-trains the top K configs, reeval_seeds=R times each")


def reeval_seeds(seed: int, r: int) -> list[int]:
    """The ``r`` seeds of the re-runs: derived from the study's ``seed``, never equal to it.

    Example:
        >>> reeval_seeds(0, 2), reeval_seeds(7, 1)
        ([1000, 2000], [1007])
    """
    return [(seed + SEED_STRIDE * (i + 1)) % 2**32 for i in range(r)]


def top_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The ``k`` best COMPLETE trials with a finite value and distinct parameters (single objective only)."""
    if k <= 0 or len(study.directions) != 1:
        return []
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    complete.sort(key=lambda t: (sign * float(t.value), t.number))  # type: ignore[arg-type]
    out: list[FrozenTrial] = []
    seen: set[str] = set()
    for t in complete:
        key = repr(sorted(t.params.items()))
        if key not in seen:
            seen.add(key)
            out.append(t)
        if len(out) == k:
            break
    return out


@dataclass(frozen=True)
class Job:
    """One re-evaluation run: the config of ``trial`` trained with ``seed``."""

    trial: FrozenTrial
    seed: int


@dataclass(frozen=True)
class Standing:
    """A re-evaluated config: its search run first, then its re-runs (NaN for a failed one).

    Example:
        >>> s = Standing(number=3, search_value=0.9, seeds=(0, 1000, 2000), values=(0.9, 0.8, 0.85))
        >>> round(s.mean, 4), round(s.sd, 4), s.n
        (0.85, 0.05, 3)
    """

    number: int
    search_value: float
    seeds: tuple[int, ...]
    values: tuple[float, ...]
    errors: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        """Runs of this config (the search run included)."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """The mean over all runs (NaN when one failed)."""
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float:
        """The sample standard deviation over all runs (0 for a single run)."""
        return statistics.stdev(self.values) if self.n > 1 else 0.0


@dataclass(frozen=True)
class ReevalReport:
    """What re-evaluation found: the standings (best mean first), what is missing, and what it cost."""

    monitor: str
    direction: str
    seed: int
    seeds: tuple[int, ...]
    standings: tuple[Standing, ...]
    missing: tuple[tuple[int, int], ...]
    steps: int
    seconds: float
    search_steps: int
    search_seconds: float
    timed_out: bool = False  # the last re-evaluation stopped at the timeout / study_timeout with runs left

    @property
    def complete(self) -> bool:
        """Every candidate has all its runs: the choice by the mean stands."""
        return not self.missing and bool(self.standings)

    @property
    def chosen(self) -> Standing | None:
        """The config with the best mean (``None`` while runs are missing)."""
        return self.standings[0] if self.complete else None

    def cost_text(self) -> str:
        """How much of the budget re-evaluation took, in optimizer steps (and seconds of training)."""
        runs = sum(s.n - 1 for s in self.standings)
        share = f" = {100 * self.steps / self.search_steps:.0f}% of the search's {self.search_steps}" \
            if self.search_steps else ""
        secs = f" = {100 * self.seconds / self.search_seconds:.0f}% of the search's {self.search_seconds:.1f} s" \
            if self.search_seconds else ""
        return (f"{runs} runs, {self.steps} optimizer steps{share}; {self.seconds:.1f} s of training{secs}")

    def lines(self) -> list[str]:
        """The summary's re-evaluation table."""
        seeds = ", ".join(str(s) for s in self.seeds)
        out = [f"re-evaluation: top {len(self.standings)} configs x {len(self.seeds)} new seeds ({seeds}), chosen "
               f"by the mean over all runs (search seed {self.seed} + new seeds); cost: {self.cost_text()}"]
        header = ["trial", f"{self.monitor} mean ± sd", "runs", "search value", "re-runs"]
        rows = [[str(s.number), _pm(s.mean, s.sd), str(s.n), _num(s.search_value),
                 ", ".join(_num(v) for v in s.values[1:])] for s in self.standings]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        out.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
        out.extend("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
        out.extend(f"  trial {s.number}: a re-run failed: {e}" for s in self.standings for e in s.errors)
        if self.missing and self.timed_out:
            out.append(f"re-evaluation cut by the timeout: {len(self.missing)} run(s) not done; the best config is "
                       "the search-time best until a rerun of the command (with more time) finishes them")
        elif self.missing:
            out.append(f"re-evaluation incomplete: {len(self.missing)} run(s) missing (their process died or was "
                       "stopped); the best config is the search-time best until a rerun of the command finishes them")
        return out

    def best_line(self) -> str | None:
        """``val_acc = 0.9812 ± 0.0031 (mean of 3 runs; search-time 0.9860)`` for the chosen config."""
        c = self.chosen
        if c is None:
            return None
        return (f"{self.monitor} = {_pm(c.mean, c.sd)} (mean of {c.n} runs: seeds "
                f"{', '.join(str(s) for s in c.seeds)}; search-time {_num(c.search_value)})")

    def block(self) -> dict[str, Any]:
        """The ``reeval:`` block of ``best_config.yaml`` for the chosen config."""
        c = self.chosen
        assert c is not None
        return {
            "monitor": self.monitor, "mean": _round(c.mean), "sd": _round(c.sd), "runs": c.n,
            "search_value": _round(c.search_value), "values": [_round(v) for v in c.values], "seeds": list(c.seeds),
            "candidates": [{"trial": s.number, "mean": _round(s.mean), "sd": _round(s.sd), "runs": s.n,
                            "search_value": _round(s.search_value)} for s in self.standings],
            "cost": {"runs": sum(s.n - 1 for s in self.standings), "optimizer_steps": self.steps,
                     "search_optimizer_steps": self.search_steps, "training_seconds": round(self.seconds, 2),
                     "search_training_seconds": round(self.search_seconds, 2)},
        }


def _num(v: float) -> str:
    return f"{v:.4f}" if math.isfinite(v) else "failed"


def _pm(mean: float, sd: float) -> str:
    return f"{mean:.4f} ± {sd:.4f}" if math.isfinite(mean) else "failed"


def _round(v: float) -> float | None:
    return round(float(v), 6) if math.isfinite(v) else None


def _record(study: optuna.Study) -> dict[str, Any]:
    rec = study.user_attrs.get(REEVAL_KEY)
    return rec if isinstance(rec, dict) else {}


def _store(study: optuna.Study, job: Job, result: dict[str, Any], k: int, seeds: Sequence[int]) -> None:
    """Add one run to ``optkit.reeval`` (read fresh, under the re-evaluation lock)."""
    rec = _record(study)
    rec.update(k=k, seeds=list(seeds))
    rec.setdefault("runs", {}).setdefault(str(job.trial.number), {})[str(job.seed)] = result
    study.set_user_attr(REEVAL_KEY, rec)


def _value(result: dict[str, Any]) -> float:
    v = result.get("value")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


def reeval_report(study: optuna.Study, monitor: str, seed: int, k: int, r: int,
                  seeds: Sequence[int] | None = None) -> ReevalReport | None:
    """The standings of the current top ``k`` configs from the recorded runs with the ``r`` seeds.

    ``seeds``: the re-runs' seeds (default: derived from ``seed``); :func:`best_by_reeval` passes the
    ones recorded in ``optkit.reeval``.

    ``None`` when re-evaluation is off (``k`` or ``r`` is 0), the study has several objectives or no
    COMPLETE trial. Configs with missing runs are listed in ``missing`` (the choice waits for them).
    """
    if k == 0 or r == 0:
        return None
    candidates = top_trials(study, k)
    if not candidates:
        return None
    seeds = list(seeds) if seeds is not None else reeval_seeds(seed, r)
    runs = _record(study).get("runs", {})
    standings, missing, steps, seconds = [], [], 0, 0.0
    for t in candidates:
        done = runs.get(str(t.number), {})
        results = [done.get(str(s)) for s in seeds]
        missing += [(t.number, s) for s, res in zip(seeds, results) if res is None]
        got = [(s, res) for s, res in zip(seeds, results) if res is not None]
        steps += sum(int(res.get("steps") or 0) for _, res in got)
        seconds += sum(float(res.get("seconds") or 0.0) for _, res in got)
        standings.append(Standing(t.number, float(t.value), (seed, *(s for s, _ in got)),  # type: ignore[arg-type]
                                  (float(t.value), *(_value(res) for _, res in got)),  # type: ignore[arg-type]
                                  tuple(str(res["error"]) for _, res in got if res.get("error"))))
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    standings.sort(key=lambda s: (not math.isfinite(s.mean), sign * s.mean if math.isfinite(s.mean) else 0.0))
    search_runs = [t.user_attrs.get("optkit.run") or {} for t in study.get_trials(deepcopy=False)]
    return ReevalReport(monitor, "maximize" if sign < 0 else "minimize", seed, tuple(seeds), tuple(standings),
                        tuple(missing), steps, seconds, sum(int(x.get("steps") or 0) for x in search_runs),
                        sum(float(x.get("seconds") or 0.0) for x in search_runs),
                        timed_out=bool(_record(study).get("timed_out")))


def best_by_reeval(study: optuna.Study) -> FrozenTrial | None:
    """The trial whose config ``best_config.yaml`` holds: chosen by re-evaluation's mean, else the search-time best.

    ``study.best_trial`` stays Optuna's (the best single search run); this reads the study's
    ``optkit.reeval`` record with the settings of the last re-evaluation (``None`` for a study
    without a COMPLETE trial).

    Example:
        (Lines marked ``+SKIP`` are not run as doctests: runs a whole study; tests/test_tuning_reeval.py runs it for real.)
        >>> study = tune(example="digits")              # doctest: +SKIP
        >>> best_by_reeval(study).number, study.best_trial.number  # doctest: +SKIP
        (12, 13)
    """
    rec, plan = _record(study), study.user_attrs.get("optkit.plan") or {}
    report = None
    if rec.get("seeds") and plan.get("monitors") and len(study.directions) == 1:
        report = reeval_report(study, plan["monitors"][0], int(plan.get("seed", 0)), int(rec.get("k", 0)),
                               len(rec["seeds"]), seeds=[int(s) for s in rec["seeds"]])
    if report is not None and report.chosen is not None:
        return next(t for t in study.get_trials(deepcopy=False) if t.number == report.chosen.number)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return best_trial(study)


Execute = Callable[[Sequence[Job]], Iterable[tuple[Job, "dict[str, Any] | None"]]]


def reevaluate(study: optuna.Study, monitor: str, seed: int, k: int, r: int, execute: Execute, *,
               progress: bool = True, deadline: float | None = None) -> ReevalReport | None:
    """Run the missing re-evaluation runs of the top ``k`` configs under the study's re-evaluation lock.

    ``execute(jobs)`` trains them (in this process, or the launcher's worker processes) and yields
    ``(job, result)`` as each ends (``result`` ``None``: its process died). Once ``deadline`` (seconds
    since the epoch: the ``timeout`` / ``study_timeout`` of :func:`tune`) has passed no more runs
    start (runs still going in worker processes are stopped), and the record says re-evaluation was
    cut (``timed_out``): the best config stays the search-time best. Returns the report.
    """
    if len(study.directions) != 1:
        return None
    with storage_lock(storage_of(study), f"reeval:{study.study_name}", own_file=True):
        seeds = reeval_seeds(seed, r) if k else []
        rec = _record(study)
        if rec and (rec.get("k") != k or rec.get("seeds") != seeds):  # what best_by_reeval() reads: these settings
            study.set_user_attr(REEVAL_KEY, {**rec, "k": k, "seeds": seeds})
        if k == 0 or r == 0:
            return None
        runs = rec.get("runs", {})
        jobs = [Job(t, s) for t in top_trials(study, k) for s in seeds
                if str(s) not in runs.get(str(t.number), {})]
        if jobs and progress:
            print(f"optkit tune: re-evaluating the top {k} configs with {r} new seeds each: {len(jobs)} runs",
                  file=sys.stderr, flush=True)
        left = _run_jobs(study, jobs, execute, monitor, k, seeds, progress=progress, deadline=deadline)
        if left or _record(study).get("timed_out"):
            study.set_user_attr(REEVAL_KEY, {**_record(study), "k": k, "seeds": seeds, "timed_out": bool(left)})
        if left and progress:
            print(f"optkit tune: re-evaluation cut by the timeout: {left} run(s) not done", file=sys.stderr,
                  flush=True)
    return reeval_report(study, monitor, seed, k, r)


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


def _run_jobs(study: optuna.Study, jobs: Sequence[Job], execute: Execute, monitor: str, k: int,
              seeds: Sequence[int], *, progress: bool, deadline: float | None) -> int:
    """Run ``jobs`` with ``execute``, recording each result; returns how many were left when ``deadline`` passed."""
    if jobs and _expired(deadline):
        return len(jobs)
    done = 0
    runs = execute(jobs)
    try:
        for job, result in runs:
            done += 1
            if result is not None:
                _store(study, job, result, k, seeds)
                if progress:
                    print(f"[optkit tune] re-evaluation: trial {job.trial.number} seed {job.seed}: {monitor}="
                          f"{_num(_value(result))}" + (f" ({result['error']})" if result.get("error") else ""),
                          file=sys.stderr, flush=True)
            if done < len(jobs) and _expired(deadline):
                return len(jobs) - done
    finally:
        close = getattr(runs, "close", None)
        if close is not None:
            close()  # a generator: stops the runs it started and has not yielded yet
    return 0


def assignment_for(job: Job, plan: Any) -> Assignment:
    """The assignment that trains ``job``'s config (the trial's complete optim block) with its seed."""
    overrides = plan.space.overrides_from_params(job.trial.params, plan.base)
    return Assignment(job.trial.number, overrides, trial_config(job.trial, plan), out_dir=str(plan.out_dir),
                      seed=job.seed)


def train_job(runner: Any, job: Job) -> dict[str, Any]:
    """Train one run with ``runner`` (a :class:`~lightning_optkit.tuning._runner.TrialRunner`); its result record.

    An exception fails the run (recorded with its message); Ctrl-C stops re-evaluation.
    """
    assignment = assignment_for(job, runner.plan)
    runner.dist.broadcast(assignment)
    runner.last_run = {}
    try:
        values = runner.train(assignment, None)
        value = values if isinstance(values, (int, float)) else values[0]
        return {"value": float(value), **runner.last_run}
    except Exception as exc:
        return {"value": None, "error": f"{type(exc).__name__}: {exc}"[:500], **runner.last_run}


def in_process(runner: Any) -> Execute:
    """Run the jobs one after the other in this process (the path without ``workers``)."""
    def execute(jobs: Sequence[Job]) -> Iterator[tuple[Job, dict[str, Any] | None]]:
        for job in jobs:
            yield job, train_job(runner, job)

    return execute
